"""The one {pattern: P} matcher (mortar_tf.precision_map), and that the Keras
path and the SavedModel converter resolve the same map to the same weights."""

import collections
import re
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


def _first_match_by_hand(patterns, names_of):
  """{weight: the index of the first pattern matching one of its names}, by
  plain loops over fnmatch (independent of precision_map)."""
  import fnmatch  # pylint: disable=import-outside-toplevel
  out = {}
  for weight, names in names_of.items():
    for i, pattern in enumerate(patterns):
      if any(fnmatch.fnmatchcase(n, pattern) for n in names):
        out[weight] = i
        break
  return out


def test_an_entry_that_wins_no_weight_is_an_error_naming_what_shadows_it():
  import random  # pylint: disable=import-outside-toplevel
  rng = random.Random(4)
  layers = ["conv1d_1", "conv1d_10", "pooled_dense", "enc/mha/query", "enc/mha/key", "fc"]
  pool = ["*", "conv1d_1", "conv1d_1*", "pooled_dense", "enc", "mha", "enc/mha/query",
          "query", "*dense*", "fc", "f?", "enc/*/key", "*/kernel", "conv*"]
  names_of = {layer: precision_map.weight_names(f"{layer}/kernel") for layer in layers}
  checked = shadowed_seen = 0
  for _ in range(400):
    patterns = rng.sample(pool, rng.randint(1, 4))
    winners = _first_match_by_hand(patterns, names_of)
    matches = [any(_hits_by_hand(p, names) for names in names_of.values()) for p in patterns]
    if not all(matches):
      continue  # the older rule: an entry matching nothing
    mapping = {p: 0.1 * (i + 1) for i, p in enumerate(patterns)}
    losers = [i for i in range(len(patterns)) if i not in winners.values()]
    checked += 1
    if not losers:
      specs = precision_map.resolve(mapping, names_of)
      assert {w: s.precision for w, s in specs.items()} == {
          w: mapping[patterns[i]] for w, i in winners.items()}
      continue
    shadowed_seen += 1
    with pytest.raises(ValueError) as error:
      precision_map.resolve(mapping, names_of)
    first = patterns[losers[0]]
    message = str(error.value)
    assert message.startswith(f"precision map entry {first!r} never applies")
    shadows = {patterns[winners[w]] for w, names in names_of.items()
               if _hits_by_hand(first, names)}
    for pattern in shadows:
      assert repr(pattern) in message.split("first by the earlier")[1]
  assert checked > 100 and shadowed_seen > 30  # both verdicts were exercised


def _hits_by_hand(pattern, names):
  import fnmatch  # pylint: disable=import-outside-toplevel
  return any(fnmatch.fnmatchcase(n, pattern) for n in names)


@pytest.mark.parametrize("mapping,shadowed,by", [
    ({"*": 0.1, "pooled_dense": 0.01}, "pooled_dense", "'*'"),
    ({"conv1d_1*": 0.05, "conv1d_1": 0.3}, "conv1d_1", "'conv1d_1*'"),
])
def test_the_issues_examples(mapping, shadowed, by):
  names_of = {n: precision_map.weight_names(f"{n}/kernel")
              for n in ("conv1d_1", "conv1d_10", "pooled_dense")}
  with pytest.raises(ValueError, match=re.escape(f"entry '{shadowed}' never applies") + ".*"
                     + re.escape(f"earlier entry {by}")):
    precision_map.resolve(mapping, names_of)
