"""SavedModel reading (variables now; the graph reader and converter come later)."""
