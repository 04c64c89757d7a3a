"""Test setup: the tests import the installed mortar_tf, never the source tree."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21's oneDNN kernels abort the process while training the FER
# mini-Xception (SeparableConv2D + BatchNormalization) on this CPU build; the
# plain Eigen kernels do not. Set before TensorFlow is first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
