"""MorphSpec, the one scheme object: validated construction, equality, hashing,
configs, `mortar_tf.morph(x, spec)`, and precision maps whose values are specs.

References are independent: SPEC's scalar loops in tests/spec_reference.py for
the morphed values, and each spec's expected fields written out by hand.
Nothing here imports TensorFlow (the Keras, SavedModel and estimator paths are
in mortar_tf_keras_spec_test.py).
"""

import dataclasses
import json

import numpy as np
import pytest

import mortar_tf
import spec_reference as ref
from mortar_tf import bits
from mortar_tf import precision_map
from mortar_tf.morphing import DEFAULT_PRECISION
from mortar_tf.morphing import MorphSpec

SPECS = [MorphSpec("paper", 0.1), MorphSpec("fewest_ones", precision=0.002),
         MorphSpec("round", keep_bits=3), MorphSpec("bitx", columns=5, group_size=4, width=20)]


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def _values(seed=0, shape=(6, 8)):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) * 2.0 ** rng.integers(-6, 6, shape)).astype(np.float32)


def test_the_constructor_validates_and_fills_in_the_defaults():
  assert dataclasses.astuple(MorphSpec()) == ("paper", DEFAULT_PRECISION, None, None, None, None)
  assert dataclasses.astuple(MorphSpec("bitx", columns=8)) == (
      "bitx", None, None, 8, bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH)
  assert dataclasses.astuple(MorphSpec("round", keep_bits=7)) == (
      "round", None, 7, None, None, None)
  spec = MorphSpec("fewest_ones", np.float32(0.5))
  assert spec.precision == 0.5 and type(spec.precision) is float
  assert MorphSpec.create("paper", 0.2) == MorphSpec("paper", precision=0.2)


@pytest.mark.parametrize("make,match", [
    (lambda: MorphSpec("papr"), "unknown morphing method 'papr'"),
    (lambda: MorphSpec(3), "unknown morphing method 3"),
    (lambda: MorphSpec("paper", 0), "0 < P <= 1"),
    (lambda: MorphSpec("paper", True), "real number"),
    (lambda: MorphSpec("paper", keep_bits=3), "'paper' takes precision; it does not use keep_bits"),
    (lambda: MorphSpec("round"), "'round' needs keep_bits"),
    (lambda: MorphSpec("round", keep_bits=24), "keep_bits must be in 0..23"),
    (lambda: MorphSpec("bitx"), "'bitx' needs columns"),
    (lambda: MorphSpec("bitx", columns=25), "columns must be in 1..24"),
    (lambda: MorphSpec("bitx", columns=3, precision=0.1), "does not use precision"),
])
def test_the_constructor_refuses_bad_settings(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_specs_are_immutable_hashable_and_equal_by_settings():
  a, b = MorphSpec("bitx", columns=8, group_size=bits.DEFAULT_GROUP_SIZE), MorphSpec(
      "bitx", columns=8)
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
  assert {a: "conv"}[b] == "conv"
  assert MorphSpec("paper", 0.1) != MorphSpec("fewest_ones", 0.1)
  assert MorphSpec("paper", 0.1) != MorphSpec("paper", np.float32(0.1))  # not the same P
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.columns = 4
  # replace() goes through the constructor, so it validates too
  assert dataclasses.replace(a, group_size=4).group_size == 4
  with pytest.raises(ValueError, match="columns must be in 1..3"):
    dataclasses.replace(a, width=3)


def test_repr_str_and_label_are_readable():
  assert repr(MorphSpec("paper", 0.05)) == "MorphSpec('paper', precision=0.05)"
  assert repr(MorphSpec("bitx", columns=8, group_size=4, width=20)) == (
      "MorphSpec('bitx', columns=8, group_size=4, width=20)")
  assert str(MorphSpec("round", keep_bits=7)) == "round keep_bits=7"
  assert str(MorphSpec("fewest_ones", 0.05)) == "fewest_ones precision=0.05"
  assert MorphSpec("paper", 0.05).label() == "paper P=0.05"
  for spec in SPECS:
    assert eval(repr(spec)) == spec  # pylint: disable=eval-used


def test_configs_are_json_and_round_trip():
  written = {"paper": {"method": "paper", "precision": 0.1},
             "fewest_ones": {"method": "fewest_ones", "precision": 0.002},
             "round": {"method": "round", "keep_bits": 3},
             "bitx": {"method": "bitx", "columns": 5, "group_size": 4, "width": 20}}
  for spec in SPECS:
    config = spec.to_config()
    assert config == written[spec.method]
    again = MorphSpec.from_config(json.loads(json.dumps(config)))
    assert again == spec and hash(again) == hash(spec)
  assert MorphSpec.from_config({"method": "bitx", "columns": 8}) == MorphSpec("bitx", columns=8)


@pytest.mark.parametrize("config,match", [
    ([("method", "paper")], "a MorphSpec config is a mapping"),
    ({"precision": 0.1}, "needs a 'method'"),
    ({"method": "paper", "P": 0.1}, r"unknown MorphSpec settings \['P'\]"),
    ({"method": "bitx"}, "'bitx' needs columns"),
])
def test_from_config_refuses_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    MorphSpec.from_config(config)


def test_morph_takes_a_spec_and_matches_the_spec_references():
  x = _values()
  want = {
      "paper": np.vectorize(lambda v: ref.paper(np.float32(v), 0.1), otypes=[np.float32])(x),
      "fewest_ones": np.vectorize(lambda v: ref.fewest_ones_brute(np.float32(v), 0.002),
                                  otypes=[np.float32])(x),
      "round": np.vectorize(lambda v: ref.round_keep_bits(np.float32(v), 3),
                            otypes=[np.float32])(x),
      "bitx": ref.bitx(x, (0,), 4, 5),
  }
  for spec in SPECS:
    for backend in (None, "numpy"):
      got = mortar_tf.morph(x, spec, backend=backend)
      np.testing.assert_array_equal(u32(got), u32(want[spec.method]), err_msg=repr(spec))


@pytest.mark.parametrize("kwargs", [dict(precision=0.2), dict(keep_bits=3), dict(columns=4),
                                    dict(group_size=8), dict(width=20)])
def test_a_spec_and_flat_settings_together_are_an_error(kwargs):
  with pytest.raises(ValueError, match="as a MorphSpec or as flat settings, not both"):
    mortar_tf.morph(np.float32([1.5]), MorphSpec("paper", 0.1), **kwargs)


def test_layout_arguments_with_a_per_weight_spec_name_the_method():
  with pytest.raises(ValueError, match="method 'round' works per weight"):
    mortar_tf.morph(np.float32([[1.5]]), MorphSpec("round", keep_bits=2), reduction_axes=(0,))


# --------------------------------------------------------------------------
# Maps whose values are specs


BITX = MorphSpec("bitx", columns=8, group_size=4)


def test_a_map_value_may_be_a_number_a_spec_or_a_spec_config():
  specs = precision_map.check({"conv1": BITX, "fc": {"method": "round", "keep_bits": 5},
                               "*": 0.05}, "fewest_ones")
  assert specs == {"conv1": BITX, "fc": MorphSpec("round", keep_bits=5),
                   "*": MorphSpec("fewest_ones", 0.05)}
  # only number entries need a method with P: a map of specs goes with any method
  assert precision_map.check({"*": BITX}, "round") == {"*": BITX}


def test_the_first_match_wins_with_spec_values_too():
  weights = {1: precision_map.weight_names("net/conv1/kernel"),
             2: precision_map.weight_names("net/conv2/kernel"),
             3: precision_map.weight_names("net/fc/kernel")}
  specs = precision_map.resolve({"conv1": BITX, "conv*": 0.2, "*": {"method": "round",
                                                                    "keep_bits": 1}},
                                weights, "paper")
  assert specs == {1: BITX, 2: MorphSpec("paper", 0.2), 3: MorphSpec("round", keep_bits=1)}


@pytest.mark.parametrize("mapping,method,match", [
    ({"conv": {"method": "bitx"}}, "paper", "entry 'conv': method 'bitx' needs columns"),
    ({"conv": {"method": "bitz", "columns": 8}}, "paper",
     "entry 'conv': unknown morphing method 'bitz'"),
    ({"conv": {"method": "round", "keep_bits": 3, "columns": 2}}, "paper",
     "entry 'conv': method 'round' takes keep_bits; it does not use columns"),
    ({"conv": {"keep_bits": 3}}, "paper", "entry 'conv': a MorphSpec config needs a 'method'"),
    ({"conv": BITX, "*": 0.1}, "round",
     "entry '\\*' is a number, a P, which needs method 'paper' or 'fewest_ones', not 'round'"),
    ({"*": 0.1}, "bitx", "entry '\\*' is a number.*not 'bitx'.*MorphSpec"),
    ({"conv": [0.1]}, "paper", "entry 'conv': precision must be a real number.*MorphSpec"),
    ({"conv": 0.1}, "papr", "unknown morphing method 'papr'"),
    ({"conv": 0.1}, MorphSpec("paper", 0.1), "put the spec into the map"),
])
def test_map_errors_name_the_entry(mapping, method, match):
  with pytest.raises(ValueError, match=match):
    precision_map.check(mapping, method)


def test_check_morphing_is_one_spec_or_a_map_of_specs():
  assert precision_map.check_morphing(BITX) is BITX
  assert precision_map.check_morphing("round", keep_bits=2) == MorphSpec("round", keep_bits=2)
  assert precision_map.check_morphing("paper", {"a": 0.3}) == {"a": MorphSpec("paper", 0.3)}
  with pytest.raises(ValueError, match="map takes no keep_bits.*got columns.*MorphSpec"):
    precision_map.check_morphing("bitx", {"a": BITX}, columns=3)
  with pytest.raises(ValueError, match="not both"):
    precision_map.check_morphing(BITX, columns=3)


def test_to_json_writes_numbers_and_spec_configs():
  written = precision_map.to_json({"conv1": BITX, "fc": {"method": "round", "keep_bits": 5},
                                   "*": 0.05})
  assert json.loads(json.dumps(written)) == {
      "conv1": {"method": "bitx", "columns": 8, "group_size": 4,
                "width": bits.DEFAULT_WIDTH},
      "fc": {"method": "round", "keep_bits": 5}, "*": 0.05}
  assert precision_map.check(written, "fewest_ones") == precision_map.check(
      {"conv1": BITX, "fc": MorphSpec("round", keep_bits=5), "*": 0.05}, "fewest_ones")
