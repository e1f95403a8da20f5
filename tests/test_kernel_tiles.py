"""The CPU kernel's register tiles (directed-rounding adds, docs/emulator.md) against
the plain k-loop reference and the golden model, bit for bit, on the cases that decide
their correctness: ties at the format's precision, rare lanes (overflow, Inf, NaN) in
the middle of a tile, signed zeros, tile edges in both directions, chunking, and the
preconditions that send a matmul to the other implementations."""

import numpy as np
import pytest
import torch

from emulator import AccumConfig
from emulator.matmul import KERNEL_PATHS, emulated_matmul, kernel_path, matmul_reference
from test_matmul import assert_same, golden_matmul, identical

TILES = [p for p in KERNEL_PATHS if "tiles" in p]


def tiles_available() -> bool:
    cfg = AccumConfig(acc="e4m7")
    return kernel_path(torch.ones(4, 8), torch.ones(8, 40), cfg) == "float32 tiles"


pytestmark = pytest.mark.skipif(not tiles_available(), reason="the CPU kernel was built without AVX-512 tiles")


def grid_values(rng, shape, mantissa: int = 255, exponents=(0, 8)) -> torch.Tensor:
    """Integers m * 2^e with |m| <= ``mantissa``: exact in bf16, and their sums land on
    the format's ties over and over."""
    m = rng.integers(-mantissa, mantissa + 1, shape)
    e = rng.integers(exponents[0], exponents[1] + 1, shape)
    return torch.from_numpy((m * np.exp2(e)).astype(np.float32))


def check(a, b, cfg, path, golden_rows: int = 0):
    assert kernel_path(a, b, cfg) == path, cfg
    got = emulated_matmul(a, b, cfg)
    want = matmul_reference(a, b, cfg).to(got.dtype)
    assert identical(got.double(), want.double()), f"{cfg}: tile result differs from the reference"
    if golden_rows:
        assert_same(got[:golden_rows].double(), golden_matmul(a[:golden_rows], b, cfg), str(cfg))
    return got


@pytest.mark.parametrize("acc, path", [("e4m7", "float32 tiles"), ("e5m10", "float32 tiles"),
                                       ("e4m4", "float32 tiles"), ("e4m7:ftz", "float32 tiles"),
                                       ("e4m7:sat", "float32 tiles"), ("e6m9b40", "float32 tiles"),
                                       ("fp32", "binary32 tiles"), ("e8m23:ftz", "float64 tiles"),
                                       ("e8m15:ftz", "float64 tiles"), ("bf16", "float64 tiles"),
                                       ("e4m7:rz", "float32 tiles"), ("e5m10:ftz:rz", "float32 tiles"),
                                       ("e4m3:sat:rz", "float32 tiles"), ("e8m15:rz", "float64 tiles"),
                                       ("bf16:ftz:rz", "float64 tiles")])
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 32, 9), (5, 33, 40), (3, 17, 64), (9, 70, 31), (6, 16, 0)])
def test_tiles_equal_the_reference_on_ties_and_edges(acc, path, shape):
    m, n, k = shape
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    scale = 2.0 ** -6 if acc.startswith(("e4", "e5")) else 1.0  # e4/e5: sums around their range
    a = grid_values(rng, (m, k), 15) * scale
    b = grid_values(rng, (k, n), 15)
    if path in ("float64 tiles", "binary32 tiles"):
        a, b = grid_values(rng, (m, k), 255, (0, 10)), grid_values(rng, (k, n), 255, (0, 10))
    check(a, b, AccumConfig(acc=acc), path, golden_rows=min(m, 2))


@pytest.mark.parametrize("acc", ["e4m7", "e4m7:sat", "e5m10", "fp32", "e8m10", "e8m23:ftz", "e4m7:rz",
                                 "e4m7:sat:rz", "e8m10:rz"])
def test_rare_lanes_in_the_middle_of_a_tile(acc):
    """Overflow, Inf and NaN in some lanes and steps: those rows take the general step
    for that step and go on in the tile."""
    rng = np.random.default_rng(7)
    a = torch.from_numpy(rng.standard_normal((8, 50)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((50, 40)).astype(np.float32))
    big = 1e4 if acc.startswith(("e4", "e5")) else 1e37
    a[1, 10] = big
    a[2, 5] = float("inf")
    b[20, 3] = float("nan")
    b[30, 35] = -big
    a[6, 49] = -float("inf")
    cfg = AccumConfig(acc=acc)
    path = "binary32 tiles" if acc == "fp32" else "float64 tiles" if acc.startswith("e8") else "float32 tiles"
    got = check(a, b, cfg, path)
    if ":sat" in acc:  # no Inf or NaN: they saturate to the largest finite value
        assert got.isfinite().all() and (got.abs() == float(cfg.acc.max_finite)).any()
    else:
        assert got.isnan().any() and got.isinf().any()


def test_signed_zeros():
    """+0 + -0 = +0 from the +0 start; a negative sum rounded or flushed to zero is -0."""
    a = torch.tensor([[-0.0, -0.0, -0.0], [0.0, -0.0, 1.0], [0.0, 0.0, -2.0 ** -15], [0.0, 0.0, -2.0 ** -8]])
    b = torch.ones(3, 20)
    b[1, :10] = -1.0
    for acc, path in (("e4m7", "float32 tiles"), ("fp32", "binary32 tiles"), ("e8m23:ftz", "float64 tiles"),
                      ("e4m7:ftz", "float32 tiles"), ("e4m7:rz", "float32 tiles"), ("e4m7:ftz:rz", "float32 tiles")):
        got = check(torch.cat([a, a]), b, AccumConfig(acc=acc), path)
        assert not torch.signbit(got[0]).any()  # only -0 terms, from +0: +0
        assert torch.signbit(got[2]).all() and (got[2] == 0).all() == (acc not in ("fp32", "e8m23:ftz"))
        # e4m7: -2^-15 -> -0 (and toward zero); -2^-8 is a subnormal, flushed with ftz
        assert torch.signbit(got[3]).all() and (got[3] == 0).all() == acc.startswith("e4m7:ftz")


def test_ftz_flushes_after_rounding_in_the_tiles():
    rng = np.random.default_rng(3)
    a = grid_values(rng, (6, 40), 7, (0, 3)) * 2.0 ** -12  # partial sums around e4m7's smallest normal
    b = grid_values(rng, (40, 24), 7, (0, 3))
    for acc in ("e4m7:ftz", "e4m7", "e5m4:ftz"):
        check(a, b, AccumConfig(acc=acc), "float32 tiles", golden_rows=2)


@pytest.mark.parametrize("chunk, outer", [(1, "fp32"), (5, "e5m10"), (16, "fp32"), (64, "e8m10:ftz")])
def test_chunked_tiles(chunk, outer):
    rng = np.random.default_rng(chunk)
    a, b = grid_values(rng, (7, 90), 31) * 2.0 ** -5, grid_values(rng, (90, 37), 31)
    check(a, b, AccumConfig(acc="e4m7", chunk=chunk, chunk_acc=outer), "float32 tiles", golden_rows=1)
    check(a, b, AccumConfig(acc="fp32", chunk=chunk, chunk_acc=outer), "binary32 tiles")
    check(a, b, AccumConfig(acc="e8m23:ftz", chunk=chunk, chunk_acc=outer), "float64 tiles")


@pytest.mark.parametrize("acc, why", [
    ("e5m10b120", "float32 subnormal sums possible (emin - M < -102)"),
    ("e4m7b110", "float32 subnormal sums possible (emin - M < -102)"),
])
def test_preconditions_send_other_configs_to_the_blocks(acc, why):
    rng = np.random.default_rng(1)
    a, b = grid_values(rng, (5, 20), 15) * 2.0 ** -6, grid_values(rng, (20, 33), 15)
    if "b1" in acc:
        a = a * 2.0 ** -105  # sums in the format's range
    path = kernel_path(a, b, AccumConfig(acc=acc))
    assert "blocks" in path, why
    check(a, b, AccumConfig(acc=acc), path)


def test_tiny_operands_send_the_matmul_to_the_blocks():
    """A product that is not a normal float32 would be inexact in the tiles."""
    rng = np.random.default_rng(2)
    a, b = grid_values(rng, (5, 20), 15), grid_values(rng, (20, 33), 15)
    cfg = AccumConfig(acc="e5m10")
    assert kernel_path(a, b, cfg) == "float32 tiles"
    a[3, 4], b[7, 2] = 2.0 ** -70, 2.0 ** -60
    assert kernel_path(a, b, cfg) == "float32 blocks"
    check(a, b, cfg, "float32 blocks", golden_rows=4)
    assert kernel_path(a, b, AccumConfig(acc="e5m10", product="fp16")) == "float32 blocks" or \
        kernel_path(a, b, AccumConfig(acc="e5m10", product="fp16")) == "float64 blocks"


def test_tiles_give_the_blocks_bits_on_random_data():
    """The same operands through both implementations (tiny operands force the blocks)."""
    rng = np.random.default_rng(11)
    a = torch.from_numpy((rng.standard_normal((33, 300)) * np.exp2(rng.integers(-8, 4, (33, 300)))).astype(np.float32))
    b = torch.from_numpy((rng.standard_normal((300, 45)) * 0.05).astype(np.float32))
    for acc in ("e4m7", "e5m10", "e4m3", "e6m9", "fp32", "e8m15", "e4m7:rz", "e5m10:ftz:rz", "e8m15:rz", "fp32:rz"):
        cfg = AccumConfig(acc=acc)
        tiled = emulated_matmul(a, b, cfg)
        assert "tiles" in kernel_path(a, b, cfg)
        forced_a = torch.cat([a, torch.full((1, 300), 2.0 ** -126)])  # one tiny row: blocks for all
        blocked = emulated_matmul(forced_a, b, cfg)[:33]
        assert "blocks" in kernel_path(forced_a, b, cfg) or acc in ("fp32", "e8m15", "e8m15:rz", "fp32:rz")
        assert identical(tiled.double(), blocked.double()), acc


def test_binary32_tiles_are_one_fused_multiply_add_with_ieee_specials():
    """An IEEE binary32 accumulator: RN(acc + a * w), the product exact (also when it is
    not a float32: tiny, huge or wider than 24 bits), Inf x 0 and Inf - Inf NaN, overflow
    Inf, subnormal sums kept also when the caller's thread flushes denormals."""
    rng = np.random.default_rng(5)
    a = torch.from_numpy((rng.standard_normal((9, 70)) * np.exp2(rng.integers(-75, 70, (9, 70)))).astype(np.float32))
    b = torch.from_numpy((rng.standard_normal((70, 37)) * np.exp2(rng.integers(-75, 70, (70, 37)))).astype(np.float32))
    a[2, 3], b[3, 4] = float("inf"), 0.0
    a[5, :] = -0.0
    b[8, 30] = float("nan")
    for cfg in (AccumConfig(acc="fp32"), AccumConfig(acc="fp32", inputs="fp32"),
                AccumConfig(acc="fp32", chunk=6, chunk_acc="e5m10")):
        got = check(a, b, cfg, "binary32 tiles", golden_rows=3)
        assert got.isnan().any() and got.isinf().any() and torch.signbit(got[5]).sum() == 0
    tiny = torch.full((4, 3), 2.0 ** -70)
    torch.set_flush_denormal(True)
    try:
        got = emulated_matmul(tiny, torch.full((3, 40), 2.0 ** -70), AccumConfig(acc="fp32"))
    finally:
        torch.set_flush_denormal(False)
    assert got.dtype == torch.float32 and (got.view(torch.int32) == 3 * 2 ** 9).all()  # 3 * 2^-140
    for other, path in (("fp32:ftz", "float64 tiles"), ("fp32:rz", "float64 tiles"), ("e8m22", "float64 tiles")):
        assert kernel_path(a, b, AccumConfig(acc=other)) == path, other
