"""SavedModel reading and rewriting: variables, the compute graph, the converter."""
