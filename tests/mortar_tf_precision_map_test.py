"""The one {pattern: P} matcher (mortar_tf.precision_map), and that the Keras
path and the SavedModel converter resolve the same map to the same weights."""

import collections
import types

import pytest

from mortar_tf import precision_map
from mortar_tf.savedmodel import selection


def test_a_weight_answers_to_its_name_its_layer_paths_and_its_layer_names():
  names = precision_map.weight_names("enc/block/mha/query/kernel", ("key_7",))
  assert set(names) == {"enc/block/mha/query/kernel", "enc", "enc/block", "enc/block/mha",
                        "enc/block/mha/query", "block", "mha", "query", "key_7"}
  assert names[0] == "enc/block/mha/query/kernel"
  assert precision_map.weight_names("kernel") == ("kernel",)


def test_the_first_matching_entry_wins_in_the_maps_order():
  names = precision_map.weight_names("mha/value/kernel")
  assert precision_map.lookup({"mha/value": 0.05, "mha": 0.1}, names) == 0.05
  assert precision_map.lookup({"mha": 0.1, "mha/value": 0.05}, names) == 0.1
  assert precision_map.lookup({"*/value/*": 0.3}, names) == 0.3
  assert precision_map.lookup({"conv*": 0.3}, names) is None
  # case-sensitive, and a pattern matches a whole name, not a part of one
  assert precision_map.lookup({"MHA": 0.1, "valu": 0.2}, names) is None


def test_literal_matches_only_itself():
  tricky = "a[1]*b?"
  pattern = precision_map.literal(tricky)
  assert precision_map.lookup({pattern: 0.1}, (tricky,)) == 0.1
  assert precision_map.lookup({pattern: 0.1}, ("a1xb?",)) is None


@pytest.mark.parametrize("bad,match", [
    ([("conv", 0.1)], "must be a mapping"),
    ({}, "empty"),
    ({3: 0.1}, "keys are layer or weight name patterns"),
    ({"": 0.1}, "keys are layer or weight name patterns"),
    ({"conv": 0}, "entry 'conv'.*0 < P <= 1"),
    ({"conv": float("nan")}, "entry 'conv'"),
    ({"conv": "0.1"}, "entry 'conv'.*real number"),
])
def test_check_names_the_bad_entry(bad, match):
  with pytest.raises(ValueError, match=match):
    precision_map.check(bad)


def test_any_mapping_is_accepted():
  ordered = collections.OrderedDict([("a", 0.1), ("b", 0.2)])
  proxy = types.MappingProxyType({"a": 0.1})
  assert list(precision_map.check(ordered)) == ["a", "b"]
  assert precision_map.resolve(proxy, {"x": ("a/kernel", "a")})["x"].precision == 0.1


def test_resolve_refuses_entries_that_match_nothing_and_lists_the_weights():
  weights = {1: precision_map.weight_names("conv/kernel"), 2: precision_map.weight_names(
      "fc/kernel")}
  specs = precision_map.resolve({"conv": 0.2}, weights, "fewest_ones")
  assert set(specs) == {1} and specs[1].method == "fewest_ones"
  with pytest.raises(ValueError, match=r"\['cnv'\] match no kernel; the kernels are: "
                                       r"conv/kernel, fc/kernel"):
    precision_map.resolve({"conv": 0.2, "cnv": 0.1}, weights, what="kernel")
  with pytest.raises(ValueError, match="needs method 'paper' or 'fewest_ones'"):
    precision_map.resolve({"conv": 0.2}, weights, "bitx")


def test_the_converter_matches_through_the_same_rules():
  # a SavedModel variable "model/block/conv/kernel" read by op "model/block/conv/Conv2D"
  names = selection.map_names("model/block/conv/kernel", "layer-1/kernel/.ATTRIBUTES",
                              ("model/block/conv/Conv2D",), "layer-1/kernel")
  keras_like = precision_map.weight_names("model/block/conv/kernel")
  assert set(keras_like) <= set(names)
  for pattern in ("block", "conv", "model/block/conv", "*block/conv", "*/conv/kernel",
                  "layer-1/*", "*Conv2D"):
    assert precision_map.lookup({pattern: 0.1}, names) == 0.1
  assert precision_map.lookup({"block/conv": 0.1}, names) is None  # paths start at the root
