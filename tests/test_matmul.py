"""Emulated matmul: compiled kernel == PyTorch k-loop reference == golden model."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from emulator import AccumConfig, IntAccumConfig, int_matmul, matmul, quantize
from emulator.matmul import (emulated_int_matmul, emulated_matmul, int_matmul_reference,
                             matmul_reference)
from oracles import same_value
from psum import golden
from psum.formats import parse

# Accumulators covering every mode: bias, FTZ, saturate, toward-zero, M = 0, wide and narrow.
ACC_SPECS = ["fp32", "bf16", "fp16", "e5m10:rz", "e4m7", "e4m7:ftz", "e4m7:sat", "e4m7b10:rz",
             "e4m3", "e3m4:sat:ftz", "e5m2:rz", "e6m9b40:sat:rz", "e2m1", "e7m0", "e8m15:ftz:rz",
             "e3m2:sat", "e5m4b3:ftz"]
INPUT_SPECS = ["bf16", "fp16", "e4m3", "e5m2", "fp32", "e3m4:sat"]


def values(rng: np.random.Generator, shape, specials: bool) -> torch.Tensor:
    """Normal values over several scales with exact zeros, and optionally Inf/NaN."""
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 6, shape))
    x[rng.random(shape) < 0.1] = 0.0
    x[rng.random(shape) < 0.05] = -0.0
    if specials:
        x[rng.random(shape) < 0.03] = np.inf
        x[rng.random(shape) < 0.02] = -np.inf
        x[rng.random(shape) < 0.02] = np.nan
    return torch.from_numpy(x)


def golden_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig) -> list[list]:
    """Each output element from psum.golden.dot on the bit patterns of the inputs."""
    aq = [[golden.round_to(cfg.inputs, float(v)) for v in row] for row in a.double().tolist()]
    bq = [[golden.round_to(cfg.weights, float(v)) for v in row] for row in b.double().tolist()]
    out_fmt = cfg.result_format
    return [[out_fmt.decode(golden.dot(row, [bq[k][j] for k in range(len(bq))], acc=cfg.acc,
                                       inputs=cfg.inputs, weights=cfg.weights, product=cfg.product,
                                       chunk=cfg.chunk, chunk_acc=cfg.chunk_acc))
             for j in range(b.shape[1])] for row in aq]


def identical(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same float64 bit patterns (so -0 differs from +0), NaN equal to NaN."""
    same = (x.view(torch.int64) == y.view(torch.int64)) | (x.isnan() & y.isnan())
    return bool(same.all())


def assert_same(got: torch.Tensor, want, context):
    for i, row in enumerate(want):
        for j, w in enumerate(row):
            g = got[i, j].item()
            value = g if (g == 0 or not math.isfinite(g)) else Fraction(g)
            assert same_value(value, w), f"{context}: [{i},{j}] kernel {g!r}, golden {w}"


configs = st.builds(
    AccumConfig,
    acc=st.sampled_from(ACC_SPECS),
    inputs=st.sampled_from(INPUT_SPECS),
    weights=st.sampled_from([None, "bf16", "e4m3"]),
    product=st.sampled_from([None, None, None, "bf16", "e4m3:sat", "fp16:rz"]),
    chunk=st.sampled_from([None, None, 1, 2, 3, 5, 8]),
    chunk_acc=st.sampled_from(["fp32", "bf16", "e5m10:sat"]),
)


@given(cfg=configs, m=st.integers(1, 3), n=st.integers(1, 4), k=st.integers(0, 24),
       seed=st.integers(0, 2**32 - 1), specials=st.booleans())
def test_kernel_equals_reference_equals_golden(cfg, m, n, k, seed, specials):
    rng = np.random.default_rng(seed)
    a, b = values(rng, (m, k), specials), values(rng, (k, n), specials)
    kernel = emulated_matmul(a, b, cfg)
    assert identical(kernel, matmul_reference(a, b, cfg))
    assert_same(kernel, golden_matmul(a, b, cfg), str(cfg))


@pytest.mark.parametrize("acc", ACC_SPECS)
@pytest.mark.parametrize("chunk", [None, 7])
def test_kernel_equals_reference_across_blocks(acc, chunk):
    """Shapes that cross the kernel's row and column blocks, long accumulations."""
    rng = np.random.default_rng(len(acc))
    a, b = values(rng, (9, 150), False), values(rng, (150, 131), False)
    cfg = AccumConfig(acc=acc, chunk=chunk)
    assert identical(emulated_matmul(a, b, cfg), matmul_reference(a, b, cfg))


@pytest.mark.parametrize("acc, c, a, b, want", [
    ("bf16", Fraction(1, 2**60), Fraction(17, 16), Fraction(17, 16), 1 + Fraction(1, 8) + Fraction(1, 128)),
    ("bf16", -Fraction(1, 2**60), Fraction(3, 4), Fraction(97, 64), Fraction(145, 128)),
    ("bf16:rz", Fraction(1), 1 + Fraction(1, 2**23), Fraction(1, 128) * (1 - Fraction(1, 2**23)), Fraction(1)),
    ("e4m7:rz", Fraction(1), 1 + Fraction(1, 2**23), Fraction(1, 128) * (1 - Fraction(1, 2**23)), Fraction(1)),
])
def test_double_rounding_cases(acc, c, a, b, want):
    """Sums where float64-then-round is wrong (docs/semantics.md §4): the first
    product puts c in the accumulator exactly, the second is the critical one."""
    x = torch.tensor([[float(c), float(a)]], dtype=torch.float64)
    w = torch.tensor([[1.0], [float(b)]], dtype=torch.float64)
    cfg = AccumConfig(acc=acc, inputs="fp32")
    assert parse(acc).decode(parse(acc).encode(c)) == c  # c is exactly an accumulator value
    assert Fraction(emulated_matmul(x, w, cfg).item()) == want
    assert Fraction(matmul_reference(x, w, cfg).item()) == want


# One bf16 product carries both an accumulator's tie bit and a tail 2^-14 below it:
# float32 rounds the sum onto the midpoint, the exact sum lies just above or below.
_P7 = 2.0 ** -7
STICKY_TIES = [
    ([1.0, 2.0 ** -12 * (1 + _P7)], [1.0, 1 + _P7]),                    # 1 + 2^-12 + 2^-18 + 2^-26
    ([1.0, 2.0 ** -17, 2.0 ** -18 * (1 + _P7)], [1.0, 1.0, 1 - _P7]),   # 1 + 2^-17 + 2^-18 - 2^-32
    ([-1.0, -(2.0 ** -17), 2.0 ** -18 * (1 + _P7)], [1.0, 1.0, -(1 - _P7)]),
]


@pytest.mark.parametrize("acc", ["e6m17", "e6m17:rz", "e6m17:ftz", "e5m22"])
def test_float32_lane_ties_decided_by_the_sticky_bit(acc):
    cfg = AccumConfig(acc=acc)
    for row, col in STICKY_TIES:
        a, b = torch.tensor([row]), torch.tensor([col]).t().contiguous()
        assert torch.equal(quantize(a, "bf16"), a) and torch.equal(quantize(b, "bf16"), b)
        got = emulated_matmul(a, b, cfg).double()
        assert identical(got, matmul_reference(a, b, cfg)), row
        assert_same(got, golden_matmul(a, b, cfg), f"{acc} {row}")


# Sums in float64 lanes (fp32 inputs) where rounding the float64 sum is wrong: the
# double-rounding cases above, and ties of fp32 and a 30-bit accumulator that only the
# TwoSum error decides.
FLOAT64_TIES = [
    ("bf16", [2.0 ** -60, 17 / 16], [1.0, 17 / 16]),
    ("bf16", [-(2.0 ** -60), 3 / 4], [1.0, 97 / 64]),
    ("bf16:rz", [1.0, 1 + 2.0 ** -23], [1.0, 2.0 ** -7 * (1 - 2.0 ** -23)]),
    # 1 + 2^-23 + 2^-24 - 2^-70: float64 rounds onto the fp32 tie, the sum is below it
    ("fp32", [1 + 2.0 ** -23, 1 + 2.0 ** -23], [1.0, 2.0 ** -24 * (1 - 2.0 ** -23)]),
    # 1 + 2^-30 + 2^-31 - 2^-77 for a 30-bit mantissa
    ("e8m30", [1.0, 2.0 ** -30, 1 + 2.0 ** -23], [1.0, 1.0, 2.0 ** -31 * (1 - 2.0 ** -23)]),
]


@pytest.mark.parametrize("acc, row, col", FLOAT64_TIES)
def test_float64_lane_ties_decided_by_the_sticky_bit(acc, row, col):
    x, w = torch.tensor([row], dtype=torch.float64), torch.tensor([col], dtype=torch.float64).t()
    cfg = AccumConfig(acc=acc, inputs="fp32")
    got = emulated_matmul(x, w, cfg)
    assert identical(got, matmul_reference(x, w, cfg))
    assert_same(got, golden_matmul(x, w, cfg), f"{acc} {row}")


def test_public_matmul_signature_and_shapes():
    a, b = torch.randn(2, 3, 5), torch.randn(5, 4)
    y = matmul(a, b, "e4m7", inputs="bf16", product=None, chunk=None, chunk_acc="fp32")
    assert y.shape == (2, 3, 4) and y.dtype == torch.float32
    assert torch.equal(y, matmul(a, b, acc="e4m7"))
    y64 = matmul(a.double(), b.double(), "e4m7")
    assert y64.dtype == torch.float64 and torch.equal(y64.float(), y)
    assert matmul(torch.zeros(3, 0), torch.zeros(0, 2), "e4m7").abs().sum() == 0


def test_wide_accumulator_matches_float_matmul():
    a, b = torch.randn(64, 300), torch.randn(300, 40)
    exact = (a.double() @ b.double())
    assert torch.allclose(matmul(a, b, "fp32", inputs="fp32").double(), exact, rtol=1e-5, atol=1e-4)


def test_matmul_errors():
    with pytest.raises(ValueError, match=r"a \(..., K\) and b \(K, N\)"):
        matmul(torch.zeros(2, 3), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        matmul(torch.zeros(2, 3, dtype=torch.float16), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="invalid format spec 'e4q7'"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), "e4q7")
    with pytest.raises(ValueError, match="must be a floating-point format, not int8"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), "int8")
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), chunk=0)
    with pytest.raises(ValueError, match="inputs format e8m30 .* is not supported by the emulator: its values are not all float32"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), inputs="e8m30")
    with pytest.raises(ValueError, match="accumulators up to 2"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), "e11m20", inputs="bf16")


INT_ACCS = ["int32", "int24", "int16", "int12", "int16:sat", "int12:sat", "int8:sat", "int64", "int62:sat"]


@given(acc=st.sampled_from(INT_ACCS), chunk=st.sampled_from([None, 1, 3, 8]),
       chunk_acc=st.sampled_from(["int32", "int20:sat", "int64"]),
       m=st.integers(1, 3), n=st.integers(1, 4), k=st.integers(0, 40), bits=st.sampled_from([4, 8, 16]),
       seed=st.integers(0, 2**32 - 1))
def test_int_kernel_equals_reference_equals_golden(acc, chunk, chunk_acc, m, n, k, bits, seed):
    rng = np.random.default_rng(seed)
    limit = 2 ** (bits - 1)
    a = torch.from_numpy(rng.integers(-limit, limit, (m, k)))
    b = torch.from_numpy(rng.integers(-limit, limit, (k, n)))
    cfg = IntAccumConfig(acc=acc, chunk=chunk, chunk_acc=chunk_acc)
    got = emulated_int_matmul(a, b, cfg)
    assert torch.equal(got, int_matmul_reference(a, b, cfg))
    for i in range(m):
        for j in range(n):
            want = golden.int_dot(a[i].tolist(), b[:, j].tolist(), acc=acc, chunk=chunk, chunk_acc=chunk_acc)
            assert got[i, j].item() == want


def test_int_kernel_across_blocks_and_extremes():
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.integers(-2**31, 2**31, (9, 70))).to(torch.int32)
    b = torch.from_numpy(rng.integers(-2**31, 2**31, (70, 130))).to(torch.int32)
    for acc in ["int64", "int62:sat", "int32", "int40:sat"]:
        cfg = IntAccumConfig(acc=acc, chunk=16)
        assert torch.equal(emulated_int_matmul(a, b, cfg), int_matmul_reference(a, b, cfg))
    assert int_matmul(a, b, "int64").dtype == torch.int64


def test_wrapping_accumulator_by_one_exact_sum():
    """Unchunked wrapping accumulators take one exact float64 sum, reduced once, where
    it is exact (K max|a| max|b| <= 2^53); beyond, the step-by-step kernel."""
    from emulator.matmul import _one_exact_sum

    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.integers(-127, 128, (7, 300))).to(torch.int32)
    b = torch.from_numpy(rng.integers(-127, 128, (300, 9))).to(torch.int32)
    for acc in ["int8", "int12", "int20", "int32"]:
        cfg = IntAccumConfig(acc=acc)
        assert _one_exact_sum(a, b, cfg) is not None
        assert torch.equal(emulated_int_matmul(a, b, cfg), int_matmul_reference(a, b, cfg))
    big = torch.full((1, 4), -2**31, dtype=torch.int32)  # 4 * 2^62 > 2^53: not exact in float64
    assert _one_exact_sum(big, big.T.contiguous(), IntAccumConfig(acc="int64")) is None
    assert _one_exact_sum(a, b, IntAccumConfig(acc="int20:sat")) is None  # 300 * 127^2 > 2^19: may saturate
    cfg = IntAccumConfig(acc="int24:sat")  # cannot saturate: the exact sum
    assert _one_exact_sum(a, b, cfg) is not None
    assert torch.equal(emulated_int_matmul(a, b, cfg), int_matmul_reference(a, b, cfg))
    cfg = IntAccumConfig(acc="int40")
    assert torch.equal(emulated_int_matmul(big, big.T.contiguous(), cfg), int_matmul_reference(big, big.T, cfg))


def test_int_matmul_errors():
    with pytest.raises(TypeError, match="integer tensor"):
        int_matmul(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="outside int32's range"):
        int_matmul(torch.full((1, 1), 2**40), torch.ones(1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="up to 62 bits"):
        int_matmul(torch.ones(1, 1, dtype=torch.int32), torch.ones(1, 1, dtype=torch.int32), "int64:sat")
    with pytest.raises(ValueError, match="acc must be an integer format, not e4m7"):
        int_matmul(torch.ones(1, 1, dtype=torch.int32), torch.ones(1, 1, dtype=torch.int32), "e4m7")


SPECIAL_VALUES = [0.0, -0.0, 1.0, -1.5, 3e38, -3e38, 1e-30, math.inf, -math.inf, math.nan, 200.0]


@pytest.mark.parametrize("acc", ACC_SPECS)
def test_special_operand_pairs_against_golden(acc):
    """Every pair of special operands, as the first and as a later term."""
    pairs = [(x, y) for x in SPECIAL_VALUES for y in SPECIAL_VALUES]
    a = torch.tensor([[x, 2.0, y] for x, y in pairs], dtype=torch.float64)  # (P, 3)
    b = torch.tensor([[1.0, 0.5, 1.0], [-1.0, 64.0, -0.0], [7.0, -3.0, math.inf]], dtype=torch.float64)
    for cfg in (AccumConfig(acc=acc, inputs="fp32"), AccumConfig(acc=acc, inputs="e4m3", chunk=2)):
        got = emulated_matmul(a, b, cfg)
        assert identical(got, matmul_reference(a, b, cfg))
        assert_same(got, golden_matmul(a, b, cfg), str(cfg))


def test_float32_lanes_are_used_only_where_exact():
    from emulator.matmul import narrow_lanes

    assert narrow_lanes(AccumConfig(acc="e4m7")) and narrow_lanes(AccumConfig(acc="e5m10:ftz:rz"))
    assert narrow_lanes(AccumConfig(acc="e4m3", inputs="fp16"))
    assert not narrow_lanes(AccumConfig(acc="fp32"))  # M = 23: midpoints need 25 bits
    assert not narrow_lanes(AccumConfig(acc="bf16"))  # its binade below emin is float32-subnormal
    assert not narrow_lanes(AccumConfig(acc="e4m7", inputs="fp32"))  # 48-bit products
    assert not narrow_lanes(AccumConfig(acc="e4m7", product="e4m3"))


def test_gpu_backend_without_triton_is_a_clear_error(monkeypatch):
    import sys

    from emulator.device import DeviceError, load_gpu_backend

    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    with pytest.raises(DeviceError, match="needs Triton"):
        load_gpu_backend()
