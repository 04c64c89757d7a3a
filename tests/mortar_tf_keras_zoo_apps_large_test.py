"""The Keras zoo, part 1c: keras.applications EfficientNetB0 and ConvNeXtTiny
(checks in tests/zoo_suite.py; part 1a holds MobileNetV2, 1b ResNet50); run
under Keras 3. scripts/test.sh leaves this file out of its tf_keras run
(about 3.5 min there; part 1a and the zoo's structures hold their layers),
`TF_USE_LEGACY_KERAS=1 pytest` on it runs it under tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["efficientnet_b0", "convnext_tiny"]))
