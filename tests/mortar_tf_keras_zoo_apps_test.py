"""The Keras zoo, part 1: keras.applications MobileNetV2, ResNet50,
EfficientNetB0 and ConvNeXtTiny (checks in tests/zoo_suite.py); run under
Keras 3 and, via scripts/test.sh, tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["mobilenet_v2", "resnet50", "efficientnet_b0",
                                 "convnext_tiny"]))
