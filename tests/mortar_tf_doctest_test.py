"""Runs the docstring examples of the public modules, so they stay true."""

import doctest
import importlib

import numpy as np
import pytest

MODULES = ["mortar_tf", "mortar_tf.backends", "mortar_tf.native", "mortar_tf.bits", "mortar_tf.morphing", "mortar_tf.morph_tf", "mortar_tf.ops",
           "mortar_tf.report", "mortar_tf.table", "mortar_tf.analyze", "mortar_tf.precision_map",
           "mortar_tf.archive",
           "mortar_tf.keras.registry", "mortar_tf.keras.saving", "mortar_tf.keras.wrapper", "mortar_tf.keras.apply", "mortar_tf.keras.callbacks",
           "mortar_tf.estimator.engines", "mortar_tf.explore.metrics", "mortar_tf.files",
           "mortar_tf.explore.results_page", "mortar_tf.explore.knapsack",
           "mortar_tf.explore.sensitivity"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has no examples"
  assert result.failed == 0
