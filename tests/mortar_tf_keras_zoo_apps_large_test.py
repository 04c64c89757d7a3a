"""The Keras zoo, part 1b: keras.applications EfficientNetB0 and ConvNeXtTiny
(checks in tests/zoo_suite.py; part 1a holds MobileNetV2 and ResNet50); run
under Keras 3 and, via scripts/test.sh, tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["efficientnet_b0", "convnext_tiny"]))
