"""mortar-sweep as an absl program of the checkout: python tools/mortar_sweep.py --help.

Its flags and main are mortar_tf.tools.sweep's, which the installed
`mortar-sweep` command runs too: one definition of each flag, whichever way
it starts (Bazel: the py_binary //:mortar_sweep).
"""

import os
import sys

try:
  import mortar_tf  # noqa: F401  the installed (or editable) package
except ImportError:  # a bare checkout: the source tree (numpy paths; no compiled kernels)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mortar_tf.tools import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  sweep.run()
