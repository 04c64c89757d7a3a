"""The Keras zoo, part 1a: keras.applications MobileNetV2 (checks in
tests/zoo_suite.py; ResNet50 is part 1b, EfficientNetB0 and ConvNeXtTiny part
1c, files of their own so that the test workers share the zoo's time); run
under Keras 3 and, via scripts/test.sh, tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["mobilenet_v2"]))
