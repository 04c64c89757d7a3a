"""Command-line programs (installed as the mortar_tf_tools package)."""
