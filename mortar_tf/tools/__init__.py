"""The command-line programs (mortar-analyze, mortar-morph, mortar-estimate, mortar-sweep).

Each is also runnable as a module, e.g. ``python -m mortar_tf.tools.estimate``.
"""
