"""emulator.quantize against ml_dtypes casts, MPFR, and the golden model."""

import math
import os
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from emulator import quantize
from oracles import FORMATS, SMALL_FORMATS, mpfr_round, neighbours, same_value
from psum import golden
from psum.formats import parse

# Values per format and oracle; PSUM_ORACLE_N=1000000 gives the full-size run.
N = int(os.environ.get("PSUM_ORACLE_N", "20000"))


def fits(fmt, dtype) -> bool:
    try:
        quantize(torch.zeros(1, dtype=dtype), fmt)
    except ValueError:
        return False
    return True


def stress_inputs(n: int, seed: int) -> np.ndarray:
    """float64 values that stress rounding: all float32 bit patterns (incl. NaN, Inf,
    subnormals), normal values across scales, and exact float32 neighbours of round
    numbers (which sit on or next to the breakpoints of every small format)."""
    rng = np.random.default_rng(seed)
    third = n // 3
    patterns = rng.integers(0, 2**32, third, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = rng.standard_normal(third) * np.exp2(rng.integers(-40, 40, third))
    grid = rng.integers(1, 2**12, n - 2 * third) * np.exp2(rng.integers(-30, 20, n - 2 * third))
    nudged = grid.astype(np.float32).view(np.int32) + rng.integers(-2, 3, n - 2 * third).astype(np.int32)
    return np.concatenate([patterns.astype(np.float64), scaled,
                           nudged.view(np.float32).astype(np.float64) * rng.choice([-1, 1], n - 2 * third)])


def same_bits_or_both_nan(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    int_type = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    return (got.view(int_type) == want.view(int_type)) | (np.isnan(got) & np.isnan(want))


ML_DTYPES = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, "e5m2": ml_dtypes.float8_e5m2,
             "e4m3": ml_dtypes.float8_e4m3, "e3m4": ml_dtypes.float8_e3m4}


@pytest.mark.parametrize("name", ML_DTYPES)
def test_matches_ml_dtypes_casts(name):
    x = stress_inputs(N, seed=1).astype(np.float32)
    want = x.astype(ML_DTYPES[name]).astype(np.float32)
    got = quantize(torch.from_numpy(x), name).numpy()
    bad = ~same_bits_or_both_nan(got, want)
    assert bad.sum() == 0, f"{name}: {bad.sum()} mismatches, first input {x[bad][0]!r}"


def check_against_mpfr(fmt, dtype):
    x = stress_inputs(N, seed=2)
    x = x[np.isfinite(x)]
    x = x.astype(np.float32).astype(np.float64) if dtype == torch.float32 else x
    # Spread the values over the format's range wherever it sits (custom biases).
    x = x * 2.0 ** ((fmt.emin + fmt.emax) // 2)
    t = torch.from_numpy(x).to(dtype)
    t = t[torch.isfinite(t)]
    got = quantize(t, fmt).double().numpy()
    for xi, gi in zip(t.double().numpy().tolist(), got.tolist()):
        want = mpfr_round(fmt, xi)
        value = gi if (gi == 0 or math.isinf(gi)) else Fraction(gi)
        assert same_value(value, want), f"{fmt} on {dtype}: quantize({xi!r}) = {gi!r}, MPFR: {want}"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if fits(f, torch.float32)], ids=str)
def test_float32_matches_mpfr(fmt):
    check_against_mpfr(fmt, torch.float32)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if fits(f, torch.float64)], ids=str)
def test_float64_matches_mpfr(fmt):
    check_against_mpfr(fmt, torch.float64)


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=str)
def test_exhaustive_breakpoints_match_golden(fmt):
    """Every value of the format, every midpoint, and the float64 and float32
    neighbours of each, with both signs, plus Inf and NaN."""
    values = neighbours(fmt)
    values.append(values[-1] + (values[-1] - values[-2]))
    points = values + [(lo + hi) / 2 for lo, hi in zip(values, values[1:])]
    x = np.array([float(p) for p in points])
    x = np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf),
                        np.nextafter(x.astype(np.float32), np.float32(np.inf)).astype(np.float64),
                        np.nextafter(x.astype(np.float32), np.float32(-np.inf)).astype(np.float64)])
    x = np.concatenate([x, -x, [np.inf, -np.inf, np.nan]])
    for dtype in (torch.float64, torch.float32):
        t = torch.from_numpy(x).to(dtype)
        got = quantize(t, fmt).double().numpy()
        for xi, gi in zip(t.double().numpy().tolist(), got.tolist()):
            want = fmt.decode(golden.round_to(fmt, xi))
            value = gi if (gi == 0 or not math.isfinite(gi)) else Fraction(gi)
            assert same_value(value, want), f"{fmt} on {dtype}: quantize({xi!r}) = {gi!r}, golden: {want}"


@given(data=st.data())
def test_matches_golden_on_arbitrary_doubles(data):
    fmt = data.draw(st.sampled_from(FORMATS), label="fmt")
    xs = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
    got = quantize(torch.tensor(xs, dtype=torch.float64), fmt).tolist()
    for xi, gi in zip(xs, got):
        want = fmt.decode(golden.round_to(fmt, xi))
        value = gi if (gi == 0 or not math.isfinite(gi)) else Fraction(gi)
        assert same_value(value, want), (str(fmt), xi, gi, want)


def test_keeps_shape_dtype_and_leaves_input_alone():
    x = torch.randn(4, 6, dtype=torch.float64).t()  # not contiguous
    before = x.clone()
    y = quantize(x, "e4m3")
    assert y.shape == (6, 4) and y.dtype == torch.float64
    assert torch.equal(x, before)
    assert torch.equal(y, quantize(x.contiguous(), parse("e4m3")))
    assert torch.equal(quantize(torch.empty(0), "bf16"), torch.empty(0))


def test_errors_are_clear():
    with pytest.raises(TypeError, match="float32 or float64 tensors, not torch.float16"):
        quantize(torch.zeros(3, dtype=torch.float16), "e4m3")
    with pytest.raises(TypeError, match="integer format int8"):
        quantize(torch.zeros(3), "int8")
    with pytest.raises(ValueError, match="invalid format spec 'e4q3'"):
        quantize(torch.zeros(3), "e4q3")
    with pytest.raises(ValueError, match=r"not all float32 numbers \(use a float64 tensor\)"):
        quantize(torch.zeros(3), "e8m23b100")
    assert quantize(torch.ones(3, dtype=torch.float64), "e8m23b100").tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="not supported on float64"):
        quantize(torch.zeros(3, dtype=torch.float64), "e11m52")
