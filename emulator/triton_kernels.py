"""The GPU backend: psum's rounding and emulated matmuls as Triton kernels.

The same arithmetic as the CPU kernel (``emulator/kernels/psum_cpu.c``), step for
step, so that a GPU run and a CPU run give the same bits (docs/emulator.md, "GPU"):

- rounding works on the float64 bit pattern of a value: the pattern is rounded to a
  multiple of 2^s where s is the distance between the format's quantum and float64's,
  with a "sticky direction" saying on which side of the double the exact value lies;
- an accumulator step forms the exact sum ``acc + a*b`` as a TwoSum pair (hi, lo)
  and rounds hi with lo's side as the sticky direction, which is the correct rounding
  of the exact sum (docs/semantics.md §4);
- for accumulators whose breakpoints are all float32 numbers ("narrow" configs, see
  :func:`emulator.matmul.narrow_lanes`) the step runs in float32 lanes; a run of
  ``check_every`` steps that meets a rare case (overflow, Inf/NaN, values below the
  accumulator's smallest subnormal, a product or partial sum near float32's underflow)
  is redone from its start in the general float64 step.

Each program owns a BLOCK_M x BLOCK_N tile of outputs and walks k = 0..K-1 in order;
parallelism is across output elements only, never across k, so the order of
accumulation is the sequential one of docs/semantics.md §5 whatever the tiling.

Kernels are compiled with floating-point contraction off (``enable_fp_fusion=False``):
an FMA would break the exact TwoSum. The float32 fast step does not rely on the GPU
keeping float32 subnormals either: any operand or product near float32's underflow
sends its run to the float64 step.

With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors through Triton's
interpreter; that is how the test suite proves them on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from emulator import _native
from emulator.config import AccumConfig, IntAccumConfig
from emulator.matmul import narrow_lanes, register_backend
from psum.formats import FloatFormat

__all__ = ["triton_quantize", "triton_matmul", "triton_int_matmul", "format_constants",
           "BlockConfig"]

_SIGN64 = tl.constexpr(-(1 << 63))  # the float64 sign bit as an int64
_ABS64 = tl.constexpr((1 << 63) - 1)
_SIGN32 = tl.constexpr(-(1 << 31))
_ABS32 = tl.constexpr((1 << 31) - 1)
#: 2^-103 as a float32 pattern: operands at least this large (or zero) keep every
#: float32 TwoSum term a normal number or zero (their ulps are >= 2^-126).
_TINY32 = tl.constexpr((127 - 103) << 23)


# -- rounding on float64 patterns (round_abs / round_bits of psum_cpu.c) ----------------


@triton.jit
def _round_bits(u, sticky_dir, MAN: tl.constexpr, EMIN: tl.constexpr, SUB: tl.constexpr,
                NE: tl.constexpr, MAX_ABS: tl.constexpr, OVERFLOW_ABS: tl.constexpr,
                INF_ABS: tl.constexpr, MIN_NORMAL_ABS: tl.constexpr,
                MIN_SUB_ABS: tl.constexpr, HALF_MIN_SUB_ABS: tl.constexpr,
                FTZ_UP_ABS: tl.constexpr, NAN_RESULT: tl.constexpr):
    """The float64 pattern ``u`` (int64) rounded into the format; ``sticky_dir`` is 0
    when the exact value is the double itself, +1/-1 when its magnitude is slightly
    above/below |double|. Every case is computed and the right one selected."""
    sign = u & _SIGN64
    magnitude = u & _ABS64
    sticky = (sticky_dir != 0).to(tl.int64)
    a = magnitude - (sticky_dir < 0).to(tl.int64)  # exact value strictly inside (a, a + 1 ulp)
    exp_field = a >> 52
    e = exp_field - 1023  # leading-bit exponent
    quantum = tl.maximum(e, -1022) - 52  # float64's quantum at a
    s = tl.maximum(e, EMIN) - MAN - quantum  # the format's quantum, relative to it
    s = tl.minimum(tl.maximum(s, 0), 52)  # clamped only where selected away below
    half = ((s > 0).to(tl.int64) << s) >> 1
    significand = (a & ((1 << 52) - 1)) | ((exp_field != 0).to(tl.int64) << 52)
    odd = (significand >> s) & 1
    r = ((a + NE * (half - 1 + (sticky | odd))) >> s) << s
    r = tl.where(r > MAX_ABS, OVERFLOW_ABS, r)
    if SUB:  # below the smallest subnormal: 0 or the smallest subnormal
        if NE:
            up = (a > HALF_MIN_SUB_ABS) | ((a == HALF_MIN_SUB_ABS) & (sticky != 0))
            r = tl.where(a < MIN_SUB_ABS, tl.where(up, MIN_SUB_ABS, 0), r)
        else:
            r = tl.where(a < MIN_SUB_ABS, 0, r)
    else:  # flush to zero after rounding: 0 or the smallest normal
        if NE:
            r = tl.where(a < MIN_NORMAL_ABS, tl.where(a >= FTZ_UP_ABS, MIN_NORMAL_ABS, 0), r)
        else:
            r = tl.where(a < MIN_NORMAL_ABS, 0, r)
    r = sign | r
    r = tl.where(magnitude == 0, u, r)  # signed zeros stay
    r = tl.where(magnitude == 0x7FF0000000000000, sign | INF_ABS, r)
    return tl.where(magnitude > 0x7FF0000000000000, NAN_RESULT, r)


@triton.jit
def _two_sum_round(x, y, MAN: tl.constexpr, EMIN: tl.constexpr, SUB: tl.constexpr,
                   NE: tl.constexpr, MAX_ABS: tl.constexpr, OVERFLOW_ABS: tl.constexpr,
                   INF_ABS: tl.constexpr, MIN_NORMAL_ABS: tl.constexpr,
                   MIN_SUB_ABS: tl.constexpr, HALF_MIN_SUB_ABS: tl.constexpr,
                   FTZ_UP_ABS: tl.constexpr, NAN_RESULT: tl.constexpr):
    """round(x + y) of two float64 tensors holding exact values: the TwoSum pair
    (hi, lo) with lo's side of hi as the sticky direction."""
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)
    same_side = (lo > 0) == (hi > 0)
    sticky_dir = tl.where(lo != 0, tl.where(same_side, 1, -1), 0).to(tl.int64)
    r = _round_bits(hi.to(tl.int64, bitcast=True), sticky_dir, MAN, EMIN, SUB, NE, MAX_ABS,
                    OVERFLOW_ABS, INF_ABS, MIN_NORMAL_ABS, MIN_SUB_ABS, HALF_MIN_SUB_ABS,
                    FTZ_UP_ABS, NAN_RESULT)
    return r.to(tl.float64, bitcast=True)


# -- the float32 fast step (PSUM_FAST_STEP32 of psum_cpu.c) -----------------------------


@triton.jit
def _fast_step32(x, av, bw, MAN: tl.constexpr, EMIN: tl.constexpr, SUB: tl.constexpr,
                 NE: tl.constexpr, MAX32: tl.constexpr, MIN_NORMAL32: tl.constexpr,
                 RARE_BELOW32: tl.constexpr):
    """One MAC step ``round(x + av*bw)`` in float32 lanes, and a per-lane flag (int32)
    set where the step may be wrong and the float64 step must be taken instead.

    Right for every result that is zero, normal or subnormal (not below the smallest
    subnormal), finite and not above max, when x and the product are zero or at least
    2^-103 and the product is exact; everything else is flagged."""
    y = av * bw
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)  # TwoSum: hi + lo is exact
    u = hi.to(tl.int32, bitcast=True)
    ul = lo.to(tl.int32, bitcast=True)
    ux = x.to(tl.int32, bitcast=True) & _ABS32
    uy = y.to(tl.int32, bitcast=True) & _ABS32
    sticky = ((ul & _ABS32) != 0).to(tl.int32)
    below = ((ul ^ u) < 0).to(tl.int32)  # lo points toward zero
    a = (u & _ABS32) - (sticky & below)  # exact sum strictly inside (a, a + 1 ulp)
    s = tl.zeros_like(a) + (23 - MAN)  # the format's quantum relative to float32's
    if SUB:  # below the smallest normal the quantum stays at emin - M
        s = tl.minimum(s + tl.maximum((EMIN + 127) - (a >> 23), 0), 23)
    if NE:
        t = a >> (s - 1)  # kept bits and the round bit
        rest = ((t << (s - 1)) != a).to(tl.int32) | sticky
        q = t >> 1
        odd = (q | (s == 23).to(tl.int32)) & 1  # at s = 23 the kept bit is the implicit 1
        r = (q + (t & 1 & (rest | odd))) << s
    else:
        r = (a >> s) << s
    if not SUB:
        r = tl.where(r >= MIN_NORMAL32, r, 0)  # flush to zero, after rounding
    rare = (r > MAX32) | (r < 0)  # overflow, Inf/NaN (r < 0: a NaN pattern rounded up)
    rare = rare | ((a >= 1) & (a < RARE_BELOW32))
    rare = rare | ((ux >= 1) & (ux < _TINY32)) | ((uy >= 1) & (uy < _TINY32))
    rare = rare | ((uy == 0) & (av != 0) & (bw != 0))  # a product that underflowed
    out = ((u & _SIGN32) | r).to(tl.float32, bitcast=True)
    return out, rare.to(tl.int32)


# -- kernels ----------------------------------------------------------------------------


@triton.jit
def _quantize_kernel(x_ptr, y_ptr, n, F_MAN: tl.constexpr, F_EMIN: tl.constexpr,
                     F_SUB: tl.constexpr, F_NE: tl.constexpr, F_MAX: tl.constexpr,
                     F_OVF: tl.constexpr, F_INF: tl.constexpr, F_MINN: tl.constexpr,
                     F_MINS: tl.constexpr, F_HALFS: tl.constexpr, F_FTZUP: tl.constexpr,
                     F_NAN: tl.constexpr, BLOCK: tl.constexpr):
    """y = round(x) elementwise; x and y float32 or float64 (y's values fit its dtype)."""
    offs = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    r = _round_bits(x.to(tl.int64, bitcast=True), tl.zeros_like(offs), F_MAN, F_EMIN, F_SUB,
                    F_NE, F_MAX, F_OVF, F_INF, F_MINN, F_MINS, F_HALFS, F_FTZUP, F_NAN)
    tl.store(y_ptr + offs, r.to(tl.float64, bitcast=True).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _general_step(acc, at_ptr, b_ptr, k, M, N, rm, rn, mm, mn, HAS_PRODUCT: tl.constexpr,
                  A_MAN: tl.constexpr, A_EMIN: tl.constexpr, A_SUB: tl.constexpr,
                  A_NE: tl.constexpr, A_MAX: tl.constexpr, A_OVF: tl.constexpr,
                  A_INF: tl.constexpr, A_MINN: tl.constexpr, A_MINS: tl.constexpr,
                  A_HALFS: tl.constexpr, A_FTZUP: tl.constexpr, A_NAN: tl.constexpr,
                  P_MAN: tl.constexpr, P_EMIN: tl.constexpr, P_SUB: tl.constexpr,
                  P_NE: tl.constexpr, P_MAX: tl.constexpr, P_OVF: tl.constexpr,
                  P_INF: tl.constexpr, P_MINN: tl.constexpr, P_MINS: tl.constexpr,
                  P_HALFS: tl.constexpr, P_FTZUP: tl.constexpr, P_NAN: tl.constexpr):
    """acc (float64) after the MAC step of term k: products exact in float64 (rounded
    to the product format when there is one), the sum correctly rounded."""
    kk = tl.cast(k, tl.int64)
    av = tl.load(at_ptr + kk * M + rm, mask=mm, other=0.0).to(tl.float64)
    bw = tl.load(b_ptr + kk * N + rn, mask=mn, other=0.0).to(tl.float64)
    p = av[:, None] * bw[None, :]
    if HAS_PRODUCT:
        p = _round_bits(p.to(tl.int64, bitcast=True), tl.zeros(p.shape, tl.int64), P_MAN,
                        P_EMIN, P_SUB, P_NE, P_MAX, P_OVF, P_INF, P_MINN, P_MINS, P_HALFS,
                        P_FTZUP, P_NAN).to(tl.float64, bitcast=True)
    return _two_sum_round(acc, p, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF, A_INF, A_MINN,
                          A_MINS, A_HALFS, A_FTZUP, A_NAN)


@triton.jit
def _float_matmul_kernel(
        at_ptr, b_ptr, out_ptr, M, N, K, CHUNK,
        NARROW: tl.constexpr, HAS_PRODUCT: tl.constexpr, CHUNKED: tl.constexpr,
        A_MAN: tl.constexpr, A_EMIN: tl.constexpr, A_SUB: tl.constexpr, A_NE: tl.constexpr,
        A_MAX: tl.constexpr, A_OVF: tl.constexpr, A_INF: tl.constexpr, A_MINN: tl.constexpr,
        A_MINS: tl.constexpr, A_HALFS: tl.constexpr, A_FTZUP: tl.constexpr,
        A_NAN: tl.constexpr,
        A_MAX32: tl.constexpr, A_MINN32: tl.constexpr, A_RARE32: tl.constexpr,
        P_MAN: tl.constexpr, P_EMIN: tl.constexpr, P_SUB: tl.constexpr, P_NE: tl.constexpr,
        P_MAX: tl.constexpr, P_OVF: tl.constexpr, P_INF: tl.constexpr, P_MINN: tl.constexpr,
        P_MINS: tl.constexpr, P_HALFS: tl.constexpr, P_FTZUP: tl.constexpr,
        P_NAN: tl.constexpr,
        O_MAN: tl.constexpr, O_EMIN: tl.constexpr, O_SUB: tl.constexpr, O_NE: tl.constexpr,
        O_MAX: tl.constexpr, O_OVF: tl.constexpr, O_INF: tl.constexpr, O_MINN: tl.constexpr,
        O_MINS: tl.constexpr, O_HALFS: tl.constexpr, O_FTZUP: tl.constexpr,
        O_NAN: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_EVERY: tl.constexpr):
    """out[i, j] (float64) = the sequential dot product of docs/semantics.md §4-5 of row
    i of a (given transposed: at is (K, M)) and column j of b (K, N), both float32
    holding values of the input formats: chunks of CHUNK terms (CHUNK >= K without
    chunking) accumulated from +0 in the A format, chunk results added in order into
    the O format."""
    rm = tl.cast(tl.program_id(0), tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.cast(tl.program_id(1), tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    if NARROW:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    for k0 in range(0, K, CHUNK):
        k1 = tl.minimum(k0 + CHUNK, K)
        if NARROW:
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for kb in range(k0, k1, CHECK_EVERY):
                ke = tl.minimum(kb + CHECK_EVERY, k1)
                start = acc
                rare = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
                for k in range(kb, ke):
                    kk = tl.cast(k, tl.int64)
                    av = tl.load(at_ptr + kk * M + rm, mask=mm, other=0.0)
                    bw = tl.load(b_ptr + kk * N + rn, mask=mn, other=0.0)
                    acc, flag = _fast_step32(acc, av[:, None], bw[None, :], A_MAN, A_EMIN,
                                             A_SUB, A_NE, A_MAX32, A_MINN32, A_RARE32)
                    rare = rare | flag
                if tl.max(tl.max(rare, axis=1), axis=0) != 0:  # redo the run exactly
                    wide = start.to(tl.float64)
                    for k in range(kb, ke):
                        wide = _general_step(wide, at_ptr, b_ptr, k, M, N, rm, rn, mm, mn,
                                             False, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF,
                                             A_INF, A_MINN, A_MINS, A_HALFS, A_FTZUP, A_NAN,
                                             P_MAN, P_EMIN, P_SUB, P_NE, P_MAX, P_OVF, P_INF,
                                             P_MINN, P_MINS, P_HALFS, P_FTZUP, P_NAN)
                    acc = wide.to(tl.float32)  # exact: narrow values are float32 numbers
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
            for k in range(k0, k1):
                acc = _general_step(acc, at_ptr, b_ptr, k, M, N, rm, rn, mm, mn, HAS_PRODUCT,
                                    A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF, A_INF, A_MINN,
                                    A_MINS, A_HALFS, A_FTZUP, A_NAN, P_MAN, P_EMIN, P_SUB,
                                    P_NE, P_MAX, P_OVF, P_INF, P_MINN, P_MINS, P_HALFS,
                                    P_FTZUP, P_NAN)
        if CHUNKED:
            outer = _two_sum_round(outer, acc.to(tl.float64), O_MAN, O_EMIN, O_SUB, O_NE,
                                   O_MAX, O_OVF, O_INF, O_MINN, O_MINS, O_HALFS, O_FTZUP,
                                   O_NAN)
    if CHUNKED:
        result = outer
    else:
        result = acc.to(tl.float64)
    offs = rm[:, None] * N + rn[None, :]
    tl.store(out_ptr + offs, result, mask=mm[:, None] & mn[None, :])


@triton.jit
def _int_fit(v, BITS: tl.constexpr, SAT: tl.constexpr):
    """v (int64) into a BITS-bit two's-complement accumulator: clamped, or its low BITS
    bits sign-extended."""
    if SAT:
        return tl.minimum(tl.maximum(v, -(1 << (BITS - 1))), (1 << (BITS - 1)) - 1)
    else:
        return (v << (64 - BITS)) >> (64 - BITS)


@triton.jit
def _int_matmul_kernel(at_ptr, b_ptr, out_ptr, M, N, K, CHUNK,
                       BITS: tl.constexpr, SAT: tl.constexpr, OUTER_BITS: tl.constexpr,
                       OUTER_SAT: tl.constexpr, CHUNKED: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[i, j] (int64): acc = fit(acc + a[i,k] * b[k,j]) for k in order, operands
    int32 (so products are exact in int64; wrapping sums are computed modulo 2^64
    first, which is exact; saturating accumulators are at most 62 bits, so their sums
    never overflow); chunk results fitted into the outer accumulator."""
    rm = tl.cast(tl.program_id(0), tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.cast(tl.program_id(1), tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
    for k0 in range(0, K, CHUNK):
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
        for k in range(k0, tl.minimum(k0 + CHUNK, K)):
            kk = tl.cast(k, tl.int64)
            av = tl.load(at_ptr + kk * M + rm, mask=mm, other=0).to(tl.int64)
            bw = tl.load(b_ptr + kk * N + rn, mask=mn, other=0).to(tl.int64)
            acc = _int_fit(acc + av[:, None] * bw[None, :], BITS, SAT)
        if CHUNKED:
            outer = _int_fit(outer + acc, OUTER_BITS, OUTER_SAT)
    if CHUNKED:
        result = outer
    else:
        result = acc
    offs = rm[:, None] * N + rn[None, :]
    tl.store(out_ptr + offs, result, mask=mm[:, None] & mn[None, :])


# -- Python side ---------------------------------------------------------------------------


class BlockConfig:
    """Launch shape of the matmul kernels: a BLOCK_M x BLOCK_N output tile per program,
    ``num_warps`` warps, and (narrow float kernel) ``check_every`` fast steps between
    checks for rare cases. Changes speed only, never results."""

    def __init__(self, block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                 check_every: int = 16):
        for name, value in (("block_m", block_m), ("block_n", block_n),
                            ("num_warps", num_warps)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value}")
        if check_every < 1:
            raise ValueError(f"check_every must be positive, not {check_every}")
        self.block_m, self.block_n = block_m, block_n
        self.num_warps, self.check_every = num_warps, check_every

    def __repr__(self) -> str:
        return (f"BlockConfig(block_m={self.block_m}, block_n={self.block_n}, "
                f"num_warps={self.num_warps}, check_every={self.check_every})")


_ROUNDING_NAMES = ("MAN", "EMIN", "SUB", "NE", "MAX", "OVF", "INF", "MINN", "MINS", "HALFS",
                   "FTZUP", "NAN")
_ROUNDING_FIELDS = ("man_bits", "emin", "subnormals", "nearest_even", "max_abs",
                    "overflow_abs", "inf_abs", "min_normal_abs", "min_sub_abs",
                    "half_min_sub_abs", "ftz_up_abs", "nan_result")


def format_constants(fmt: FloatFormat, prefix: str) -> dict[str, int]:
    """The kernels' compile-time description of ``fmt`` (the CPU kernel's ``psum_fmt``):
    mode flags and float64 patterns, named ``{prefix}_MAN``, ``{prefix}_MAX``, ..."""
    params = _native.format_params(fmt)
    return {f"{prefix}_{name}": int(getattr(params, field))
            for name, field in zip(_ROUNDING_NAMES, _ROUNDING_FIELDS)}


def _narrow_constants(fmt: FloatFormat) -> dict[str, int]:
    """Float32 patterns the fast step compares against (the CPU kernel's psum_fmt32)."""
    pattern = lambda value: int(torch.tensor(float(value)).view(torch.int32))  # noqa: E731
    max_abs = pattern(fmt.max_finite)
    min_normal = pattern(2.0 ** fmt.emin)
    below = pattern(2.0 ** (fmt.emin - fmt.man_bits)) if fmt.subnormals else 0
    return {"A_MAX32": max_abs, "A_MINN32": min_normal, "A_RARE32": max(below, 1 << 23)}


def _check_tensor(t: torch.Tensor, dtypes: tuple, what: str) -> None:
    if t.dtype not in dtypes:
        raise TypeError(f"{what} must be one of {dtypes}, not {t.dtype}")


def triton_quantize(t: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """:func:`emulator.quantize` in Triton: ``t`` (float32/float64) rounded into ``fmt``."""
    _check_tensor(t, (torch.float32, torch.float64), "t")
    _native.check_fits(fmt, str(t.dtype).removeprefix("torch."))
    src = t.detach().contiguous()
    out = torch.empty_like(src)
    n = src.numel()
    if n:
        block = 1024
        _quantize_kernel[(triton.cdiv(n, block),)](
            src, out, n, **format_constants(fmt, "F"), BLOCK=block,
            enable_fp_fusion=False)
    return out


def _launch_shape(m: int, n: int, blocks: BlockConfig) -> tuple[int, int]:
    return triton.cdiv(m, blocks.block_m), triton.cdiv(n, blocks.block_n)


def triton_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig,
                  blocks: BlockConfig | None = None) -> torch.Tensor:
    """The float backend (see :func:`emulator.matmul.register_backend`): ``a`` (M, K) and
    ``b`` (K, N) float32 holding values of the input formats; (M, N) float64 results."""
    blocks = blocks or BlockConfig()
    _check_tensor(a, (torch.float32,), "a")
    _check_tensor(b, (torch.float32,), "b")
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=torch.float64, device=a.device)
    if m == 0 or n == 0:
        return out
    narrow = narrow_lanes(cfg)
    unused = cfg.acc  # the product and outer constants are compiled out when not used
    constants = {**format_constants(cfg.acc, "A"),
                 **format_constants(cfg.product or unused, "P"),
                 **format_constants(cfg.chunk_acc if cfg.chunk else unused, "O"),
                 **(_narrow_constants(cfg.acc) if narrow else
                    {"A_MAX32": 0, "A_MINN32": 0, "A_RARE32": 0})}
    _float_matmul_kernel[_launch_shape(m, n, blocks)](
        a.t().contiguous(), b.contiguous(), out, m, n, k, cfg.chunk or max(k, 1),
        NARROW=narrow, HAS_PRODUCT=cfg.product is not None, CHUNKED=cfg.chunk is not None,
        **constants, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
        CHECK_EVERY=blocks.check_every, num_warps=blocks.num_warps, enable_fp_fusion=False)
    return out


def triton_int_matmul(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig,
                      blocks: BlockConfig | None = None) -> torch.Tensor:
    """The integer backend: ``a`` (M, K) and ``b`` (K, N) int32; (M, N) int64 results."""
    blocks = blocks or BlockConfig()
    _check_tensor(a, (torch.int32,), "a")
    _check_tensor(b, (torch.int32,), "b")
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=torch.int64, device=a.device)
    if m == 0 or n == 0:
        return out
    _int_matmul_kernel[_launch_shape(m, n, blocks)](
        a.t().contiguous(), b.contiguous(), out, m, n, k, cfg.chunk or max(k, 1),
        BITS=cfg.acc.bits, SAT=cfg.acc.overflow == "saturate", OUTER_BITS=cfg.chunk_acc.bits,
        OUTER_SAT=cfg.chunk_acc.overflow == "saturate", CHUNKED=cfg.chunk is not None,
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, num_warps=blocks.num_warps)
    return out


register_backend("cuda", triton_matmul, triton_int_matmul)
