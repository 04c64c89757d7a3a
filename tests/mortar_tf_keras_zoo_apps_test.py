"""The Keras zoo, part 1a: keras.applications MobileNetV2 and ResNet50
(checks in tests/zoo_suite.py; EfficientNetB0 and ConvNeXtTiny are part 1b,
a file of their own so that the two test workers share the zoo's time, and
Keras 3 only in scripts/test.sh); run under Keras 3 and, via scripts/test.sh,
tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["mobilenet_v2", "resnet50"]))
