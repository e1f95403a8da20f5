"""Formats: parameters, derived constants, spec strings, errors."""

import dataclasses
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from oracles import FORMATS
from psum.formats import PRESETS, FloatFormat, IntFormat, candidates, parse


@pytest.mark.parametrize("spec", [
    "e4m7", "e4m7b10", "e4m7b-3", "e4m7:sat", "e4m7:ftz", "e4m7:rz", "e4m7b10:sat:ftz:rz",
    "e5m10:sat:rz", "fp32", "fp16", "bf16", "tf32", "e4m3", "e5m2", "int8", "int24",
    "int16:sat", "uint8", "uint12:sat",
])
def test_canonical_specs_round_trip_literally(spec):
    assert str(parse(spec)) == spec


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_every_format_round_trips_through_its_string(fmt):
    assert parse(str(fmt)) == fmt
    assert hash(parse(str(fmt))) == hash(fmt)


def test_non_canonical_spellings_parse_to_the_same_format():
    assert parse("E4M7B7") == parse("e4m7") == FloatFormat(4, 7)
    assert parse("e4m7:rz:sat") == parse("e4m7:sat:rz") == parse(" e4m7:sat:rz ")
    assert parse("e4m7:inf:sub:rne") == parse("e4m7")
    assert parse("e5m10") == parse("fp16") and str(parse("e5m10")) == "e5m10"
    assert parse("int8:wrap") == IntFormat(8)


def test_presets_are_the_ieee_style_formats():
    for name, (e, m) in PRESETS.items():
        assert parse(name) == FloatFormat(e, m)
    assert parse("bf16").bias == 127 and parse("e4m3").bias == 7


def test_defaults_and_public_argument_names():
    fmt = FloatFormat(exp_bits=4, man_bits=7, bias=None, subnormals=True, overflow="inf",
                      rounding="nearest_even")
    assert fmt == FloatFormat(4, 7) and fmt.bias == 7
    assert IntFormat(bits=24, signed=True, overflow="wrap") == parse("int24")


def test_formats_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse("e4m7").man_bits = 3


@pytest.mark.parametrize("spec, fragment", [
    ("e4x7", "not a format name"),
    ("", "empty format name"),
    ("e4m", "not a format name"),
    ("e1m7", "exp_bits must be between 2 and 11, not 1"),
    ("e12m3", "exp_bits must be between 2 and 11, not 12"),
    ("e4m60", "man_bits must be between 0 and 52, not 60"),
    ("e4m7:bogus", "unknown mode 'bogus'"),
    ("e4m7:sat:inf", "conflicting modes for overflow"),
    ("e4m7:rz:rne", "conflicting modes for rounding"),
    ("int1", "bits must be between 2 and 64, not 1"),
    ("int128", "bits must be between 2 and 64, not 128"),
    ("int8:ftz", "unknown mode 'ftz'"),
    ("fp8", "not a format name"),
    ("e4m7b", "not a format name"),
])
def test_malformed_specs_say_what_is_wrong_and_what_is_accepted(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid format spec {spec!r}: ")
    assert fragment in message
    assert "expected eEmM" in message


def test_constructor_checks_types_and_values_like_amaranth():
    with pytest.raises(TypeError, match=r"^exp_bits must be an integer, not '4'$"):
        FloatFormat("4", 7)
    with pytest.raises(TypeError, match=r"^man_bits must be an integer, not True$"):
        FloatFormat(4, True)
    with pytest.raises(TypeError, match=r"^bias must be an integer or None, not 1.5$"):
        FloatFormat(4, 7, bias=1.5)
    with pytest.raises(ValueError, match=r"^overflow must be one of 'inf', 'saturate', not 'nan'$"):
        FloatFormat(4, 7, overflow="nan")
    with pytest.raises(ValueError, match=r"^rounding must be one of 'nearest_even', 'toward_zero', 'stochastic', not 'up'$"):
        FloatFormat(4, 7, rounding="up")
    with pytest.raises(TypeError, match=r"^subnormals must be a bool, not 0$"):
        FloatFormat(4, 7, subnormals=0)
    with pytest.raises(ValueError, match=r"^overflow must be one of 'wrap', 'saturate', not 'inf'$"):
        IntFormat(8, overflow="inf")


ML_DTYPES = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, "fp32": np.float32,
             "e4m3": ml_dtypes.float8_e4m3, "e5m2": ml_dtypes.float8_e5m2,
             "e3m4": ml_dtypes.float8_e3m4}


@pytest.mark.parametrize("name", ML_DTYPES)
def test_constants_match_ml_dtypes_finfo(name):
    fmt, info = parse(name), ml_dtypes.finfo(ML_DTYPES[name])
    assert fmt.bits == info.bits
    assert fmt.man_bits == info.nmant and fmt.exp_bits == info.nexp
    assert fmt.max_finite == Fraction(float(info.max))
    assert fmt.min_normal == Fraction(float(info.smallest_normal))
    assert fmt.min_subnormal == Fraction(float(info.smallest_subnormal))
    assert fmt.epsilon == Fraction(float(info.eps))
    assert fmt.emax == info.maxexp - 1 and fmt.emin == info.minexp


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_invariants(fmt):
    assert fmt.bits == 1 + fmt.exp_bits + fmt.man_bits
    assert fmt.sign_mask | fmt.exp_mask | fmt.man_mask == (1 << fmt.bits) - 1
    # The largest finite value survives; twice it overflows by the format's rule.
    assert fmt.decode(fmt.encode(fmt.max_finite)) == fmt.max_finite
    over = fmt.decode(fmt.encode(2 * fmt.max_finite))
    if fmt.overflow == "inf" and fmt.rounding == "nearest_even":
        assert over == math.inf
    else:
        assert over == fmt.max_finite
    assert fmt.decode(fmt.encode(fmt.min_positive)) == fmt.min_positive
    # Half the smallest positive value is a tie between 0 (even) and it: rounds to 0.
    assert fmt.decode(fmt.encode(fmt.min_positive / 2)) == 0
    if fmt.min_normal <= 1 < 2 <= fmt.max_finite:  # epsilon is the gap above 1
        assert fmt.decode(fmt.encode(1 + fmt.epsilon)) == 1 + fmt.epsilon
        # 1 + eps/2 is a tie between 1 and 1 + eps; the even one is 1, except for M = 0
        # where 1 has the odd significand (1) and 2 the even one (10b).
        tie = fmt.decode(fmt.encode(1 + fmt.epsilon / 2))
        assert tie == (2 if fmt.man_bits == 0 and fmt.rounding == "nearest_even" else 1)
    expected_binades = math.log2(fmt.max_finite / fmt.min_positive)
    assert fmt.dynamic_range_binades == pytest.approx(expected_binades, rel=1e-12)
    assert (fmt.min_subnormal is None) == (not fmt.subnormals or fmt.man_bits == 0)


def test_bias_moves_the_range_by_powers_of_two():
    base, shifted = parse("e4m7"), parse("e4m7b10")
    assert shifted.max_finite * 8 == base.max_finite
    assert shifted.min_positive * 8 == base.min_positive
    assert parse("e4m7b-3").min_normal == 2 ** 4


def test_saturating_formats_use_the_top_exponent_code_for_numbers():
    inf_fmt, sat_fmt = parse("e4m3"), parse("e4m3:sat")
    assert inf_fmt.max_finite == 240 and sat_fmt.max_finite == 480
    assert not sat_fmt.has_inf and not sat_fmt.has_nan
    assert parse("e5m0").has_inf and not parse("e5m0").has_nan


def test_int_formats():
    wrap, sat, unsigned = parse("int8"), parse("int8:sat"), parse("uint8")
    assert (wrap.min_value, wrap.max_value) == (-128, 127)
    assert (unsigned.min_value, unsigned.max_value) == (0, 255)
    assert wrap.fit(128) == -128 and wrap.fit(-129) == 127 and wrap.fit(300) == 44
    assert sat.fit(128) == 127 and sat.fit(-1000) == -128
    assert unsigned.fit(-1) == 255 and parse("uint8:sat").fit(-1) == 0
    for v in range(-128, 128):
        assert wrap.decode(wrap.encode(v)) == v
    assert wrap.encode(-1) == 0xFF
    with pytest.raises(ValueError):
        wrap.decode(256)


def test_candidates():
    found = candidates()
    specs = [str(f) for f in found]
    assert len(found) >= 40 and len(set(found)) == len(found)
    assert {"fp16", "bf16", "fp32", "e4m7", "e3m4", "e8m0"} <= set(specs)
    for fmt in found:
        assert 3 <= fmt.exp_bits <= 8
        assert 8 <= fmt.bits <= 24 or str(fmt) == "fp32"
    assert [f.bits for f in found] == sorted(f.bits for f in found)
