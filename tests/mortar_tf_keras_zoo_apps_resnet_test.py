"""The Keras zoo, part 1b: keras.applications ResNet50 (checks in
tests/zoo_suite.py); run under Keras 3. scripts/test.sh leaves this file out of
its tf_keras run (about 2 min of CPU there): its layers (Conv2D,
BatchNormalization, Dense, Add, pooling) are MobileNetV2's, which part 1a runs
under tf_keras; `TF_USE_LEGACY_KERAS=1 pytest` on it runs it under tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["resnet50"]))
