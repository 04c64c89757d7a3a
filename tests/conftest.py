"""Test setup: the tests import the installed mortar_tf, never the source tree."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
