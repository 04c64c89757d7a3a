"""The Keras zoo, part 2: the pretrained FER mini-Xception, a transformer
encoder, recurrent text models, shared, nested, multi-input/output and
subclassed models and a keras-hub-like Functional subclass (checks in
tests/zoo_suite.py); run under Keras 3 and, via
scripts/test.sh, tf_keras."""

import zoo_suite

globals().update(zoo_suite.make(["fer", "transformer", "bilstm", "gru", "shared", "nested",
                                 "multi_io", "subclassed", "backbone"]))
