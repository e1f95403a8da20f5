"""The Triton (GPU) kernels: bit for bit the CPU kernel's results and the golden model's.

Without a GPU they run through Triton's interpreter (``TRITON_INTERPRET=1``, set in
conftest.py) on CPU tensors; on a machine with CUDA they run on the GPU. Either way
the CPU kernel (itself proven against MPFR and the golden model in test_matmul.py /
test_quantize.py) and the golden model are the oracles. A last test compiles every
kernel for a real GPU (sm_90) to check that the compiler, not just the interpreter,
accepts them, and that the float arithmetic stays unfused.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton")

from emulator import AccumConfig, IntAccumConfig, quantize  # noqa: E402
from emulator import triton_kernels as tk  # noqa: E402
from emulator.device import DeviceError, resolve_device  # noqa: E402
from emulator.matmul import _cpu_int_matmul, _cpu_matmul, narrow_lanes  # noqa: E402
from psum import golden  # noqa: E402
from psum.formats import parse  # noqa: E402
from test_matmul import INT_ACCS as ALL_INT_ACCS  # noqa: E402
from test_matmul import (FLOAT64_TIES, STICKY_TIES, assert_same, configs,  # noqa: E402
                         golden_matmul, identical, values)

matmul_module = importlib.import_module("emulator.matmul")  # the module, not the function
# inf - inf and the like inside the interpreter's numpy: the NaNs are intended
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parent.parent

# Accumulators over every mode: subnormals/FTZ, Inf/saturate, nearest-even/toward zero,
# custom biases, M = 0, wide (float64 lanes) and narrow (float32 lanes), and of the
# narrow ones each way the fast step rounds: by the float adder (e4m7...), by integer
# rounding for M = 22 (e5m22) and for a range too wide for the adder's constant
# (e7m2b10), with accumulator values below 2^-103 (e7m10b110).
FLOAT_ACCS = ["e4m7", "e5m10", "fp32", "e4m3:sat", "e5m4:ftz", "e4m7:rz", "e5m10:ftz:rz",
              "e3m4:sat:ftz:rz", "e6m9b40:sat:rz", "e4m0", "e8m15:ftz", "e5m2b3:ftz", "e5m22",
              "e7m2b10:sat", "e7m10b110"]
INT_ACCS = ["int32", "int24", "int16", "int12:sat", "int20:sat", "int62:sat", "int64", "int8"]


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def operands(cfg: AccumConfig, m: int, k: int, n: int, seed: int, specials: bool):
    """a (m, k), b (k, n) float32 holding values of the input formats, with zeros,
    signed zeros, several scales and (optionally) Inf/NaN."""
    rng = np.random.default_rng(seed)
    a = quantize(values(rng, (m, k), specials), cfg.inputs).float()
    b = quantize(values(rng, (k, n), specials), cfg.weights).float()
    return a, b


def run_both(a, b, cfg, blocks=None):
    want = _cpu_matmul(a, b, cfg)
    da, db = on_device(a, b)
    got = tk.triton_matmul(da, db, cfg, blocks).cpu()
    return got, want


# -- quantize ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["bf16", "fp16", "e4m3", "e5m2:sat", "e3m4:ftz:rz", "e4m7b10:rz",
                                  "e2m1", "e7m0", "e8m15:ftz:rz", "e6m9b40:sat:rz", "e5m10:ftz"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantize_equals_cpu_kernel(spec, dtype):
    rng = np.random.default_rng(1)
    x = values(rng, (6000,), specials=True)
    x = torch.cat([x, torch.tensor([float.fromhex("0x1p-149"), float.fromhex("-0x1.8p-140"),
                                    3.4e38, -3.4e38, 65504.0, 65520.0, 2.0 ** -24 * 0.75])])
    x = x.to(dtype)
    want = quantize(x, spec)
    got = tk.triton_quantize(x.to(DEVICE), parse(spec)).cpu()
    assert got.dtype == dtype
    assert bool(((got == want) & (torch.signbit(got) == torch.signbit(want)) | (got.isnan() & want.isnan())).all())


def test_quantize_against_golden():
    fmt = parse("e4m3:sat")
    x = torch.linspace(-300, 300, 2001, dtype=torch.float64)
    got = tk.triton_quantize(x.to(DEVICE), fmt).cpu()
    for v, g in zip(x.tolist(), got.tolist()):
        assert fmt.decode(golden.round_to(fmt, v)) == g


# -- float matmul ------------------------------------------------------------------------


@pytest.mark.parametrize("acc", FLOAT_ACCS)
def test_float_kernel_equals_cpu_kernel(acc):
    """Plain, chunked and unfused MACs, with and without special operands, on odd
    shapes that cross tile edges; the CPU kernel is the oracle."""
    blocks = tk.BlockConfig(16, 32, num_warps=2, check_every=5)
    cases = [
        (AccumConfig(acc=acc), (23, 41, 37), False),
        (AccumConfig(acc=acc), (19, 29, 35), True),
        (AccumConfig(acc=acc, chunk=6, chunk_acc="e6m9"), (17, 33, 21), False),
        (AccumConfig(acc=acc, inputs="fp16", weights="e4m3", product="e5m7"), (9, 26, 40), True),
        (AccumConfig(acc=acc, inputs="fp32"), (8, 31, 18), False),
    ]
    for i, (cfg, (m, k, n), specials) in enumerate(cases):
        a, b = operands(cfg, m, k, n, seed=100 + i, specials=specials)
        got, want = run_both(a, b, cfg, blocks)
        assert identical(got, want), f"{cfg} case {i}: {(got.view(torch.int64) != want.view(torch.int64)).sum()} differ"


@given(cfg=configs, m=st.integers(1, 3), n=st.integers(1, 4), k=st.integers(0, 24),
       seed=st.integers(0, 2**32 - 1), specials=st.booleans(), check_every=st.sampled_from([1, 4, 16]))
def test_float_kernel_property(cfg, m, n, k, seed, specials, check_every):
    """test_matmul's property test through the Triton kernels: random accumulators
    (every mode), input formats, product rounding, chunking; Inf/NaN operands."""
    a, b = operands(cfg, m, k, n, seed, specials)
    got, want = run_both(a, b, cfg, tk.BlockConfig(4, 4, num_warps=1, check_every=check_every))
    assert identical(got, want), str(cfg)
    assert_same(got, golden_matmul(a, b, cfg), str(cfg))


@pytest.mark.parametrize("acc", ["e4m7", "e3m2:sat:rz", "e5m4:ftz", "fp32"])
def test_float_kernel_against_golden(acc):
    cfg = AccumConfig(acc=acc, chunk=5, chunk_acc="e5m6")
    a, b = operands(cfg, 3, 17, 4, seed=7, specials=True)
    got = tk.triton_matmul(*on_device(a, b), cfg).cpu()
    assert_same(got, golden_matmul(a, b, cfg), f"triton {cfg}")


@pytest.mark.parametrize("acc", ["e4m3:sr", "e5m2:sr4:ftz", "e3m2:sr3:sat", "e4m7:sr16", "e5m6b20:sr1",
                                 "fp32:sr20"])
@pytest.mark.parametrize("shape", [(3, 17, 5), (9, 11, 3)])  # the second: rows in the lanes
def test_stochastic_kernel_equals_cpu_kernel_and_golden(acc, shape):
    """docs/semantics.md §13 through the Triton kernel: the CPU kernel's bits (its start
    states transposed with the problem) and the golden model's, with Inf/NaN operands,
    product rounding and chunking."""
    from emulator.stochastic import stochastic_states
    from test_stochastic import below_a_double_operands, golden_sr

    m, k, n = shape
    for cfg in (AccumConfig(acc=acc, inputs="e4m3", seed=5), AccumConfig(acc=acc, inputs="bf16", product="e5m4",
                                                                         chunk=4, chunk_acc="e5m7", seed=6)):
        a, b = operands(cfg, m, k, n, seed=m * k, specials=True)
        states = stochastic_states(cfg.seed, torch.arange(m), torch.arange(n))
        got = tk.triton_sr_matmul(*on_device(a, b), cfg, states.to(DEVICE), tk.BlockConfig(4, 4, num_warps=1)).cpu()
        assert identical(got, _cpu_matmul(a, b, cfg, states)), str(cfg)
        assert_same(got, golden_sr(a, b, cfg, range(m)), f"triton {cfg}")
    a, b, cfg = below_a_double_operands()
    states = stochastic_states(cfg.seed, torch.arange(3), torch.arange(64))
    got = tk.triton_sr_matmul(*on_device(a, b), cfg, states.to(DEVICE), tk.BlockConfig(4, 16, num_warps=1)).cpu()
    assert identical(got, _cpu_matmul(a, b, cfg, states))


def test_narrow_rare_cases_take_the_exact_path():
    """Cases the float32 fast step must hand to the float64 step: products that
    underflow float32, partial sums and products near float32's underflow, results in
    and below the accumulator's subnormals, overflow, Inf/NaN mid-run, signed zeros."""
    tiny = float.fromhex("0x1p-70")
    rows = [
        [tiny, tiny, 1.0, -1.0, 0.0],             # product 2^-140: not a normal float32
        [2.0 ** -60, -(2.0 ** -60), 2.0 ** -52, 1.0, 1.0],  # sums around 2^-103..2^-120
        [1e-3, 1e-3, -1e-3, 2e-3, -1e-3],         # subnormals of e5m4 / e4m7
        [200.0, 200.0, 200.0, -200.0, -200.0],    # overflow of e4m3-like accumulators
        [float("inf"), 1.0, float("-inf"), 1.0, 0.0],
        [-0.0, -0.0, -0.0, -0.0, -0.0],           # -0 products: the sum stays +0
        [-1.0, 1.0, -1.0, 1.0, -1.0],
    ]
    cols = [[1.0] * 5, [tiny] * 5, [-(2.0 ** -75)] * 5, [0.5, -0.25, 3.0, 1e-3, -7.0]]
    a = torch.tensor(rows, dtype=torch.float32)
    b = torch.tensor(cols, dtype=torch.float32).t().contiguous()
    for acc in ["e4m7", "e5m4", "e5m10:rz", "e4m3:sat", "e4m3", "e7m9", "e5m4:ftz:rz", "e5m22",
                "e7m2b10:sat", "e7m10b110", "e7m10b110:ftz:rz"]:
        cfg = AccumConfig(acc=acc)
        aq, bq = quantize(a, cfg.inputs), quantize(b, cfg.weights)
        assert narrow_lanes(cfg)
        for check_every in (1, 3, 16):
            got, want = run_both(aq, bq, cfg, tk.BlockConfig(8, 4, num_warps=1, check_every=check_every))
            assert identical(got, want), f"{acc}, check_every={check_every}"
        assert_same(got, golden_matmul(aq, bq, cfg), f"triton {acc}")


@pytest.mark.parametrize("acc", ["e6m17", "e6m17:rz", "e6m17:ftz", "e5m22"])
def test_ties_decided_by_the_sticky_bit(acc):
    """Exact sums that float32 rounds onto a midpoint of the accumulator, the true sum
    lying just above or below it (only the TwoSum error tells): one bf16 product
    carries both the tie bit and a tail 2^-14 below it."""
    cfg = AccumConfig(acc=acc)
    assert narrow_lanes(cfg)
    for row, col in STICKY_TIES:
        a, b = torch.tensor([row]), torch.tensor([col]).t().contiguous()
        assert torch.equal(quantize(a, "bf16"), a) and torch.equal(quantize(b, "bf16"), b)
        got, want = run_both(a, b, cfg, tk.BlockConfig(1, 1, num_warps=1, check_every=2))
        assert identical(got, want), (row, col)
        assert_same(got, golden_matmul(a, b, cfg), f"triton {acc} {row}")


@pytest.mark.parametrize("acc, row, col", FLOAT64_TIES)
def test_float64_lanes_where_float64_then_round_is_wrong(acc, row, col):
    """Sums where rounding the float64 sum is wrong (test_matmul's double-rounding
    cases, and ties of fp32 and a 30-bit accumulator that only the TwoSum error
    decides), through float64 lanes: fp32 inputs, the fast step for nearest-even, the
    general step for toward zero."""
    x, w = torch.tensor([row]), torch.tensor([col]).t().contiguous()
    cfg = AccumConfig(acc=acc, inputs="fp32")
    assert not narrow_lanes(cfg) and tk._fast64(cfg) == (not acc.endswith(":rz"))
    got, want = run_both(x, w, cfg, tk.BlockConfig(1, 1, 1, 1))
    assert identical(got, want)
    assert_same(got, golden_matmul(x, w, cfg), f"triton {acc}")


def test_results_do_not_depend_on_the_launch_shape():
    """Tile shapes, warps, check intervals, and tall-skinny products (run transposed,
    outputs in the tile's wide dimension) all give the same bits."""
    cfg = AccumConfig(acc="e5m3:rz", chunk=9, chunk_acc="e5m10")
    for m, k, n in [(33, 50, 45), (150, 20, 5)]:
        a, b = operands(cfg, m, k, n, seed=3, specials=False)
        want = _cpu_matmul(a, b, cfg)
        for blocks in (tk.BlockConfig(16, 16, 1, 1), tk.BlockConfig(64, 64, 4, 16),
                       tk.BlockConfig(32, 128, 8, 64), None):
            got = tk.triton_matmul(*on_device(a, b), cfg, blocks).cpu()
            assert got.shape == (m, n) and identical(got, want), blocks
    ai = torch.randint(-2 ** 15, 2 ** 15, (150, 20), dtype=torch.int32)
    bi = torch.randint(-2 ** 15, 2 ** 15, (20, 5), dtype=torch.int32)
    icfg = IntAccumConfig(acc="int24:sat", chunk=6)
    assert torch.equal(tk.triton_int_matmul(*on_device(ai, bi), icfg).cpu(), _cpu_int_matmul(ai, bi, icfg))


def test_64_bit_offsets(monkeypatch):
    """The int64-offset variant (operands of 2^31 elements or more) on a small shape."""
    init, launched = tk._Operands.__init__, []

    def wide_init(self, *args):
        init(self, *args)
        self.wide = True
        launched.append(self)

    monkeypatch.setattr(tk._Operands, "__init__", wide_init)
    cfg = AccumConfig(acc="e4m7", chunk=8, chunk_acc="e5m10")
    a, b = operands(cfg, 20, 30, 40, seed=9, specials=True)
    got, want = run_both(a, b, cfg, tk.BlockConfig(16, 16, 1, 4))
    assert identical(got, want)
    ai, bi = (torch.randint(-99, 99, shape, dtype=torch.int32) for shape in ((20, 30), (30, 40)))
    icfg = IntAccumConfig(acc="int16")
    assert torch.equal(tk.triton_int_matmul(*on_device(ai, bi), icfg).cpu(), _cpu_int_matmul(ai, bi, icfg))
    assert len(launched) == 2


def test_empty_and_degenerate_shapes():
    cfg = AccumConfig(acc="e4m7")
    for m, k, n in [(0, 4, 3), (3, 0, 2), (2, 5, 0), (1, 1, 1)]:
        a, b = operands(cfg, m, k, n, seed=0, specials=False)
        got, want = run_both(a, b, cfg)
        assert got.shape == (m, n) and identical(got, want)


def test_layers_run_on_the_triton_kernels(monkeypatch):
    """LeNet5 with an e4m7 accumulator (convolutions in nhwc order and linear layers)
    gives the same logits through the Triton kernels as through the CPU kernel."""
    from emulator import Policy, convert
    from emulator.models import build

    torch.manual_seed(0)
    model, _ = build("lenet5")
    x = torch.randn(1, 3, 32, 32)
    for order in ("nhwc",):
        emulated = convert(model, Policy(AccumConfig(acc="e4m7", order=order)))
        want = emulated(x)
        big = tk.BlockConfig(128, 128, num_warps=8)  # few programs: quick in the interpreter
        monkeypatch.setitem(matmul_module._BACKENDS, "cpu",
                            (lambda a, b, cfg: tk.triton_matmul(a, b, cfg, big), tk.triton_int_matmul))
        got = emulated.to(DEVICE)(x.to(DEVICE)).cpu()
        monkeypatch.undo()
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), order


# -- integer matmul ------------------------------------------------------------------------


@pytest.mark.parametrize("acc", INT_ACCS)
def test_int_kernel_equals_cpu_kernel(acc):
    rng = np.random.default_rng(5)
    for i, (chunk, chunk_acc, bits) in enumerate([(None, "int32", 8), (7, "int32:sat", 8),
                                                  (4, "int64", 16), (None, "int32", 32)]):
        cfg = IntAccumConfig(acc=acc, chunk=chunk, chunk_acc=chunk_acc)
        m, k, n = 13 + i, 29, 21
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
        a = torch.from_numpy(rng.integers(lo, hi, (m, k))).to(torch.int32)
        b = torch.from_numpy(rng.integers(lo, hi, (k, n))).to(torch.int32)
        if bits == 32:
            a[0, :] = -(2 ** 31)  # the largest products, every step
            b[:, 0] = -(2 ** 31)
        want = _cpu_int_matmul(a, b, cfg)
        got = tk.triton_int_matmul(*on_device(a, b), cfg, tk.BlockConfig(16, 16, 2)).cpu()
        assert torch.equal(got, want), f"{cfg}"
    a_small, b_small = a[:2, :6].to(torch.int64), b[:6, :3].to(torch.int64)
    got = tk.triton_int_matmul(*on_device(a[:2, :6], b[:6, :3]), cfg).cpu()
    for i in range(2):
        for j in range(3):
            assert int(got[i, j]) == golden.int_dot(a_small[i].tolist(), b_small[:, j].tolist(),
                                                    acc=cfg.acc, chunk=cfg.chunk,
                                                    chunk_acc=cfg.chunk_acc)


@given(acc=st.sampled_from(ALL_INT_ACCS), chunk=st.sampled_from([None, 1, 3, 8]),
       chunk_acc=st.sampled_from(["int32", "int20:sat", "int64"]),
       m=st.integers(1, 3), n=st.integers(1, 4), k=st.integers(0, 40), bits=st.sampled_from([4, 8, 16, 32]),
       seed=st.integers(0, 2**32 - 1))
def test_int_kernel_property(acc, chunk, chunk_acc, m, n, k, bits, seed):
    rng = np.random.default_rng(seed)
    limit = 2 ** (bits - 1)
    a = torch.from_numpy(rng.integers(-limit, limit, (m, k))).to(torch.int32)
    b = torch.from_numpy(rng.integers(-limit, limit, (k, n))).to(torch.int32)
    cfg = IntAccumConfig(acc=acc, chunk=chunk, chunk_acc=chunk_acc)
    got = tk.triton_int_matmul(*on_device(a, b), cfg, tk.BlockConfig(4, 4, num_warps=1)).cpu()
    assert torch.equal(got, _cpu_int_matmul(a, b, cfg))
    for i in range(m):
        for j in range(n):
            assert got[i, j].item() == golden.int_dot(a[i].tolist(), b[:, j].tolist(), acc=acc,
                                                      chunk=chunk, chunk_acc=chunk_acc)


# -- devices and errors -----------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_an_error():
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device(spec)
    for spec in ("tpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError):
            resolve_device(spec)
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")


def test_kernel_argument_errors():
    cfg = AccumConfig(acc="e4m7")
    with pytest.raises(TypeError):
        tk.triton_matmul(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2), cfg)
    with pytest.raises(TypeError):
        tk.triton_int_matmul(torch.zeros(2, 2), torch.zeros(2, 2), IntAccumConfig(acc="int16"))
    with pytest.raises(ValueError, match="power of two"):
        tk.BlockConfig(block_m=48)


# -- fused dot-product units -------------------------------------------------------------------

DPU_CONFIGS = [(4, 13, True, False, "fp32", "e4m3"), (4, 13, False, False, "fp32", "e5m2"),
               (8, 10, True, True, "e5m10", "bf16"), (16, 14, True, False, "fp32", "e4m3"),
               (32, 20, False, True, "bf16", "bf16"), (4, 3, True, False, "e4m3", "bf16"),
               (8, 0, False, False, "e4m7:rz", "bf16"), (2, 6, True, True, "e3m2:sat:ftz", "e4m3")]


@pytest.mark.parametrize("cfg", DPU_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@settings(max_examples=4, deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 40), k=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       specials=st.booleans(), promote=st.booleans())
def test_dpu_kernel_equals_cpu_kernel(cfg, m, n, k, seed, specials, promote):
    """The Triton unit kernel (interpreter here) against the CPU kernel, itself held to the
    golden model in test_dpu.py: the same bits, specials and promotion included."""
    from emulator.config import DotUnit
    from emulator.dpu import dpu_matmul

    width, align_bits, include_acc, sticky, acc, inputs = cfg
    rng = np.random.default_rng(seed)
    a, b = values(rng, (m, k), specials), values(rng, (k, n), specials)
    chunk = 2 * width if promote else None
    config = AccumConfig(acc=acc, inputs=inputs, chunk=chunk, unit=DotUnit(width, align_bits, include_acc, sticky))
    want = dpu_matmul(a, b, acc, width=width, align_bits=align_bits, include_acc=include_acc, sticky=sticky,
                      inputs=inputs, chunk=chunk)
    aq, bq = quantize(a.double(), inputs).float(), quantize(b.double(), inputs).float()
    got = tk.triton_dpu_matmul(aq.to(DEVICE), bq.to(DEVICE), config).cpu()
    assert identical(got, want), (cfg, got, want)


# -- the real compiler ---------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from emulator import triton_kernels as tk
from emulator.config import AccumConfig, IntAccumConfig

def compile(fn, types, constants, num_warps=4):
    sig = {name: types.get(name, "constexpr") for name in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=sig,
                                    constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "enable_fp_fusion": False})
    ptx = kernel.asm["ptx"]
    return {"fma": len(re.findall(r"\bfma\.", ptx)), "ftz": len(re.findall(r"\.f(32|64)\b.*\.ftz|\.ftz\.f", ptx)),
            "cubin_bytes": len(kernel.asm["cubin"])}

ptr = {"at_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*fp64", "M": "i32", "N": "i32", "K": "i32", "MP": "i32",
       "NP": "i32", "CHUNK": "i32"}
out = {}
for name, cfg, tiny in [("narrow", AccumConfig(acc="e5m10"), False),
                        ("narrow_checked", AccumConfig(acc="e7m10b110"), True),
                        ("narrow_int_rounding", AccumConfig(acc="e5m22"), False),
                        ("narrow_ftz_rz_chunked", AccumConfig(acc="e4m3:ftz:rz", chunk=32), False),
                        ("wide_fast", AccumConfig(acc="fp32", chunk=64), False),
                        ("wide_unfused", AccumConfig(acc="fp32", product="e5m10"), False)]:
    c = {**tk.format_constants(cfg.acc, "A"), **tk.format_constants(cfg.product or cfg.acc, "P"),
         **tk.format_constants(cfg.chunk_acc, "O"), **tk._narrow_constants(cfg.acc, tiny),
         "FAST": name != "wide_unfused", "NARROW": name.startswith("narrow"),
         "HAS_PRODUCT": cfg.product is not None,
         "CHUNKED": cfg.chunk is not None, "WIDE": name == "wide_unfused", "BLOCK_M": 64, "BLOCK_N": 32,
         "CHECK_EVERY": 16}
    out[name] = compile(tk._float_matmul_kernel, ptr, c)
ints = {**ptr, "at_ptr": "*i32", "b_ptr": "*i32", "out_ptr": "*i64"}
for name, cfg in [("int_wrap", IntAccumConfig(acc="int16")), ("int_sat_chunked", IntAccumConfig(acc="int20:sat", chunk=8))]:
    out[name] = compile(tk._int_matmul_kernel, ints,
                        {"BITS": cfg.acc.bits, "SAT": cfg.acc.overflow == "saturate", "OUTER_BITS": 32,
                         "OUTER_SAT": False, "CHUNKED": cfg.chunk is not None, "WIDE": False,
                         "BLOCK_M": 64, "BLOCK_N": 32})
for name, w, bits, include, sticky, chunked in [("dpu_hopper", 32, 13, 1, 0, 0), ("dpu_apart_sticky_promoted", 4, 9, 0, 1, 1)]:
    out[name] = compile(tk._dpu_kernel, ptr, {**tk.format_constants(tk.FloatFormat(8, 23), "A"),
                                              **tk.format_constants(tk.FloatFormat(8, 23), "O"), "W": w, "L": bits,
                                              "INCLUDE": include, "STICKY": sticky, "CHUNKED": chunked, "WIDE": False,
                                              "BLOCK_M": 16, "BLOCK_N": 32})
for name, cfg in [("stochastic", AccumConfig(acc="e4m4:sr")),
                  ("stochastic_ftz_unfused_chunked", AccumConfig(acc="e5m3:sr12:ftz", product="e5m4", chunk=16))]:
    out[name] = compile(tk._sr_matmul_kernel, {**ptr, "st_ptr": "*i64"},
                        {**tk.format_constants(cfg.acc, "A"), **tk.format_constants(cfg.product or cfg.acc, "P"),
                         **tk.format_constants(cfg.chunk_acc, "O"), "R": cfg.acc.random_bits,
                         "HAS_PRODUCT": cfg.product is not None, "CHUNKED": cfg.chunk is not None, "WIDE": False,
                         "BLOCK_M": 16, "BLOCK_N": 128})
out["quantize"] = compile(tk._quantize_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"},
                          {**tk.format_constants(tk.FloatFormat(4, 3), "F"), "BLOCK": 1024})
print(json.dumps(out))
"""


def test_kernels_compile_for_a_gpu_without_fused_or_flushed_arithmetic():
    """Triton's compiler (not the interpreter) accepts every kernel specialization and
    emits sm_90 code with no FMA and no flush-to-zero float instruction."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(Path(os.environ.get("PSUM_CACHE_DIR", Path.home() / ".cache/psum")) / "triton")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, env=env, check=False, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this Triton has no ptxas to compile with")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"narrow", "narrow_checked", "narrow_int_rounding", "narrow_ftz_rz_chunked",
                           "wide_fast", "wide_unfused", "int_wrap", "int_sat_chunked", "quantize", "dpu_hopper",
                           "dpu_apart_sticky_promoted", "stochastic", "stochastic_ftz_unfused_chunked"}
    for name, info in result.items():
        assert info["cubin_bytes"] > 0, name
        assert info["fma"] == 0 and info["ftz"] == 0, (name, info)
