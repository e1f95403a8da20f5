"""The GPU backend: psum's rounding and emulated matmuls as Triton kernels.

The same arithmetic as the CPU kernel (``emulator/kernels/psum_cpu.c``), so that a
GPU run and a CPU run give the same bits (docs/emulator.md, "GPU"):

- rounding works on the float64 bit pattern of a value: the pattern is rounded to a
  multiple of 2^s where s is the distance between the format's quantum and float64's,
  with a "sticky direction" saying on which side of the double the exact value lies;
- an accumulator step forms the exact sum ``acc + a*b`` as a TwoSum pair (hi, lo)
  and rounds hi with lo's side as the sticky direction, which is the correct rounding
  of the exact sum (docs/semantics.md §4);
- for accumulators whose breakpoints are all float32 numbers ("narrow" configs, see
  :func:`emulator.matmul.narrow_lanes`) the step runs in float32 lanes (rounding by
  the float adder where it can, see :func:`_fast_step32`); a run of ``check_every``
  steps in which a lane meets a rare case (overflow, Inf/NaN, a product or partial
  sum near float32's underflow) is redone from its start in the general float64 step;
  nearest-even accumulators that need float64 lanes have a float64 fast step
  (:func:`_fast_step64`) with the same redo.

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
from emulator.matmul import _lanes_on_rows, narrow_lanes, register_backend
from psum.formats import FloatFormat

__all__ = ["triton_quantize", "triton_matmul", "triton_sr_matmul", "triton_int_matmul", "triton_dpu_matmul",
           "format_constants", "BlockConfig"]

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


# -- the fast steps (PSUM_FAST_STEP32(_FR) and PSUM_FAST_STEP_FR of psum_cpu.c) ------------


@triton.jit
def _fast_step32(x, av, bw, MAN: tl.constexpr, EMIN: tl.constexpr, SUB: tl.constexpr,
                 NE: tl.constexpr, FLOAT_ROUND: tl.constexpr, CHECK_X: tl.constexpr,
                 CHECK_Y: tl.constexpr, MAXF: tl.constexpr, MIN_NORMALF: tl.constexpr,
                 MIN_NORMAL32: tl.constexpr, MIN_SUB32: tl.constexpr,
                 RARE_BELOW32: tl.constexpr):
    """One MAC step ``round(x + av*bw)`` in float32 lanes. A lane where this step may
    be wrong gets NaN instead (a poison that every later step keeps), and the caller
    redoes the run in the float64 step: |sum| above the format's max, Inf, NaN, and
    (CHECK_X/CHECK_Y, compiled in only where they can occur) accumulators or products
    that are nonzero but below 2^-103, or products that underflowed.

    The exact sum hi + lo (TwoSum) lies strictly between the float32 pattern p and
    its neighbour toward zero (p = hi's pattern less one when lo points toward zero)
    and the next one up, when lo != 0. Rounding:
    - FLOAT_ROUND (nearest-even, M <= 21): jam the sticky bit into p's last bit (round
      to odd: with two or more bits to spare that keeps every tie decision), then let
      the float adder round: (v + C) - C with C = 1.5 * 2^(q + 23) rounds v to a
      multiple of 2^q, q the format's quantum at |v| (emin - M from the subnormals
      down; flush-to-zero formats round at precision M, then flush);
    - otherwise integer rounding of |p| at bit s = q - float32's quantum."""
    y = av * bw
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)  # TwoSum: hi + lo is exact
    u = hi.to(tl.int32, bitcast=True)
    sticky = (lo != 0.0).to(tl.int32)
    below = ((lo.to(tl.int32, bitcast=True) ^ u) >> 31) & sticky  # lo points toward zero
    if FLOAT_ROUND:
        p = u - below  # keeps hi's sign: the magnitude steps down
        jammed = (p | sticky).to(tl.float32, bitcast=True)
        magic = (p & 0x7F800000) + (((23 - MAN) << 23) + (1 << 22))  # 1.5 * 2^(e - M + 23)
        if SUB:  # the quantum stops at emin - M (one add-and-max instruction)
            magic = tl.maximum(magic, ((EMIN + 127) << 23) + (((23 - MAN) << 23) + (1 << 22)))
        magic = magic.to(tl.float32, bitcast=True)
        r = (jammed + magic) - magic
        if not SUB:
            r = tl.where(tl.abs(r) >= MIN_NORMALF, r, 0.0)
        r = r.to(tl.int32, bitcast=True)
    else:
        a = (u & _ABS32) - below
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
            if SUB:
                r = tl.where(a < MIN_SUB32, 0, r)  # toward zero below the smallest subnormal
        if not SUB:
            r = tl.where(r >= MIN_NORMAL32, r, 0)  # flush to zero, after rounding
        if NE:  # below the smallest subnormal: not handled here
            r = tl.where((a >= 1) & (a < RARE_BELOW32), 0x7FC00000, r)
    bad = ~(tl.abs(hi) <= MAXF)  # overflow, Inf, NaN
    if CHECK_X:
        ux = x.to(tl.int32, bitcast=True) & _ABS32
        bad = bad | ((ux >= 1) & (ux < _TINY32))
    if CHECK_Y:
        uy = y.to(tl.int32, bitcast=True) & _ABS32
        bad = bad | ((uy >= 1) & (uy < _TINY32)) | ((uy == 0) & (av != 0) & (bw != 0))
    r = tl.where(bad, 0x7FC00000, r)
    return ((u & _SIGN32) | r).to(tl.float32, bitcast=True)


@triton.jit
def _fast_step64(x, av, bw, MAN: tl.constexpr, EMIN: tl.constexpr, SUB: tl.constexpr,
                 MAX_ABS: tl.constexpr, MIN_NORMAL_ABS: tl.constexpr):
    """The float-adder rounding of :func:`_fast_step32` in float64 lanes, for
    nearest-even accumulators too wide for float32 lanes (fp32, bf16, E = 8...) with
    every breakpoint a normal double: products of float32 inputs are exact doubles,
    the TwoSum is exact, the sticky bit is jammed into the pattern and
    (v + C) - C, C = 1.5 * 2^(q + 52), rounds. |sum| above max, Inf and NaN poison
    the lane (NaN) for the caller to redo in the general step."""
    y = av * bw
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)  # TwoSum: hi + lo is exact
    u = hi.to(tl.int64, bitcast=True)
    sticky = (lo != 0.0).to(tl.int64)
    below = ((lo.to(tl.int64, bitcast=True) ^ u) >> 63) & sticky  # lo points toward zero
    p = u - below
    jammed = (p | sticky).to(tl.float64, bitcast=True)
    magic = (p & 0x7FF0000000000000) + (((52 - MAN) << 52) + (1 << 51))  # 1.5 * 2^(e - M + 52)
    if SUB:
        magic = tl.maximum(magic, ((EMIN + 1023) << 52) + (((52 - MAN) << 52) + (1 << 51)))
    magic = magic.to(tl.float64, bitcast=True)
    r = ((jammed + magic) - magic).to(tl.int64, bitcast=True) & _ABS64
    if not SUB:
        r = tl.where(r >= MIN_NORMAL_ABS, r, 0)  # flush to zero, after rounding
    r = tl.where((u & _ABS64) > MAX_ABS, 0x7FF8000000000000, r)  # overflow, Inf, NaN
    return ((u & _SIGN64) | r).to(tl.float64, bitcast=True)


# -- kernels ----------------------------------------------------------------------------


@triton.jit
def _index(i, WIDE: tl.constexpr):
    """``i`` as an offset: int64 where an operand or the output has 2^31 elements or
    more, else int32 (one instruction less per address)."""
    if WIDE:
        return tl.cast(i, tl.int64)
    else:
        return i


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
def _general_step(acc, at_ptr, b_ptr, k, MP, NP, rm, rn, WIDE: tl.constexpr,
                  HAS_PRODUCT: tl.constexpr,
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
    p = _term(at_ptr, b_ptr, k, MP, NP, rm, rn, WIDE, HAS_PRODUCT, P_MAN, P_EMIN, P_SUB, P_NE, P_MAX,
              P_OVF, P_INF, P_MINN, P_MINS, P_HALFS, P_FTZUP, P_NAN)
    return _two_sum_round(acc, p, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF, A_INF, A_MINN,
                          A_MINS, A_HALFS, A_FTZUP, A_NAN)


@triton.jit
def _term(at_ptr, b_ptr, k, MP, NP, rm, rn, WIDE: tl.constexpr, HAS_PRODUCT: tl.constexpr,
          P_MAN: tl.constexpr, P_EMIN: tl.constexpr, P_SUB: tl.constexpr, P_NE: tl.constexpr,
          P_MAX: tl.constexpr, P_OVF: tl.constexpr, P_INF: tl.constexpr, P_MINN: tl.constexpr,
          P_MINS: tl.constexpr, P_HALFS: tl.constexpr, P_FTZUP: tl.constexpr, P_NAN: tl.constexpr):
    """The tile's products of term k in float64: exact, or rounded to the product
    format when there is one."""
    kk = _index(k, WIDE)
    av = tl.load(at_ptr + kk * MP + rm).to(tl.float64)
    bw = tl.load(b_ptr + kk * NP + rn).to(tl.float64)
    p = av[:, None] * bw[None, :]
    if HAS_PRODUCT:
        p = _round_bits(p.to(tl.int64, bitcast=True), tl.zeros(p.shape, tl.int64), P_MAN,
                        P_EMIN, P_SUB, P_NE, P_MAX, P_OVF, P_INF, P_MINN, P_MINS, P_HALFS,
                        P_FTZUP, P_NAN).to(tl.float64, bitcast=True)
    return p


@triton.jit
def _float_matmul_kernel(
        at_ptr, b_ptr, out_ptr, M, N, K, MP, NP, CHUNK,
        FAST: tl.constexpr, NARROW: tl.constexpr, HAS_PRODUCT: tl.constexpr,
        CHUNKED: tl.constexpr,
        A_MAN: tl.constexpr, A_EMIN: tl.constexpr, A_SUB: tl.constexpr, A_NE: tl.constexpr,
        A_MAX: tl.constexpr, A_OVF: tl.constexpr, A_INF: tl.constexpr, A_MINN: tl.constexpr,
        A_MINS: tl.constexpr, A_HALFS: tl.constexpr, A_FTZUP: tl.constexpr,
        A_NAN: tl.constexpr,
        FLOAT_ROUND: tl.constexpr, CHECK_X: tl.constexpr, CHECK_Y: tl.constexpr,
        A_MAXF: tl.constexpr, A_MINNF: tl.constexpr, A_MINN32: tl.constexpr,
        A_MINS32: tl.constexpr, A_RARE32: tl.constexpr,
        P_MAN: tl.constexpr, P_EMIN: tl.constexpr, P_SUB: tl.constexpr, P_NE: tl.constexpr,
        P_MAX: tl.constexpr, P_OVF: tl.constexpr, P_INF: tl.constexpr, P_MINN: tl.constexpr,
        P_MINS: tl.constexpr, P_HALFS: tl.constexpr, P_FTZUP: tl.constexpr,
        P_NAN: tl.constexpr,
        O_MAN: tl.constexpr, O_EMIN: tl.constexpr, O_SUB: tl.constexpr, O_NE: tl.constexpr,
        O_MAX: tl.constexpr, O_OVF: tl.constexpr, O_INF: tl.constexpr, O_MINN: tl.constexpr,
        O_MINS: tl.constexpr, O_HALFS: tl.constexpr, O_FTZUP: tl.constexpr,
        O_NAN: tl.constexpr,
        WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CHECK_EVERY: tl.constexpr):
    """out[i, j] (float64, (M, N)) = the sequential dot product of docs/semantics.md
    §4-5 of row i of a and column j of b, both float32 holding values of the input
    formats, given as at (K, MP) = a transposed and b (K, NP), zero-padded to whole
    tiles (so loads need no masks): chunks of CHUNK terms (CHUNK >= K without chunking)
    accumulated from +0 in the A format, chunk results added in order into the O
    format."""
    rm = _index(tl.program_id(0), WIDE) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = _index(tl.program_id(1), WIDE) * BLOCK_N + tl.arange(0, BLOCK_N)
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    if NARROW:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    for k0 in range(0, K, CHUNK):
        k1 = tl.minimum(k0 + CHUNK, K)
        acc = tl.zeros_like(acc)
        if FAST:  # runs of fast steps, a run with a poisoned lane redone exactly
            for kb in range(k0, k1, CHECK_EVERY):
                ke = tl.minimum(kb + CHECK_EVERY, k1)
                start = acc
                for k in range(kb, ke):
                    kk = _index(k, WIDE)
                    av = tl.load(at_ptr + kk * MP + rm)
                    bw = tl.load(b_ptr + kk * NP + rn)
                    if NARROW:
                        acc = _fast_step32(acc, av[:, None], bw[None, :], A_MAN, A_EMIN, A_SUB,
                                           A_NE, FLOAT_ROUND, CHECK_X, CHECK_Y, A_MAXF, A_MINNF,
                                           A_MINN32, A_MINS32, A_RARE32)
                    else:
                        acc = _fast_step64(acc, av.to(tl.float64)[:, None],
                                           bw.to(tl.float64)[None, :], A_MAN, A_EMIN, A_SUB,
                                           A_MAX, A_MINN)
                poisoned = tl.where(acc != acc, 1, 0)
                if tl.max(tl.max(poisoned, axis=1), axis=0) != 0:
                    wide = start.to(tl.float64)
                    for k in range(kb, ke):
                        wide = _general_step(wide, at_ptr, b_ptr, k, MP, NP, rm, rn,
                                             WIDE, False, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX,
                                             A_OVF, A_INF, A_MINN, A_MINS, A_HALFS, A_FTZUP,
                                             A_NAN, P_MAN, P_EMIN, P_SUB, P_NE, P_MAX, P_OVF,
                                             P_INF, P_MINN, P_MINS, P_HALFS, P_FTZUP, P_NAN)
                    acc = wide.to(acc.dtype)  # exact: the values are acc.dtype numbers
        else:
            for k in range(k0, k1):
                acc = _general_step(acc, at_ptr, b_ptr, k, MP, NP, rm, rn, WIDE, HAS_PRODUCT,
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
    tl.store(out_ptr + offs, result, mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit
def _int_fit(v, BITS: tl.constexpr, SAT: tl.constexpr):
    """v (int64) into a BITS-bit two's-complement accumulator: clamped, or its low BITS
    bits sign-extended."""
    if SAT:
        return tl.minimum(tl.maximum(v, -(1 << (BITS - 1))), (1 << (BITS - 1)) - 1)
    else:
        return (v << (64 - BITS)) >> (64 - BITS)


@triton.jit
def _int_matmul_kernel(at_ptr, b_ptr, out_ptr, M, N, K, MP, NP, CHUNK,
                       BITS: tl.constexpr, SAT: tl.constexpr, OUTER_BITS: tl.constexpr,
                       OUTER_SAT: tl.constexpr, CHUNKED: tl.constexpr, WIDE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[i, j] (int64, (M, N)): acc = fit(acc + a[i,k] * b[k,j]) for k in order,
    operands int32 laid out as in the float kernel (so products are exact in int64;
    wrapping sums are computed modulo 2^64 first, which is exact; saturating
    accumulators are at most 62 bits, so their sums never overflow); chunk results
    fitted into the outer accumulator."""
    rm = _index(tl.program_id(0), WIDE) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = _index(tl.program_id(1), WIDE) * BLOCK_N + tl.arange(0, BLOCK_N)
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
    for k0 in range(0, K, CHUNK):
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
        for k in range(k0, tl.minimum(k0 + CHUNK, K)):
            kk = _index(k, WIDE)
            av = tl.load(at_ptr + kk * MP + rm).to(tl.int64)
            bw = tl.load(b_ptr + kk * NP + rn).to(tl.int64)
            acc = _int_fit(acc + av[:, None] * bw[None, :], BITS, SAT)
        if CHUNKED:
            outer = _int_fit(outer + acc, OUTER_BITS, OUTER_SAT)
    if CHUNKED:
        result = outer
    else:
        result = acc
    offs = rm[:, None] * N + rn[None, :]
    tl.store(out_ptr + offs, result, mask=(rm < M)[:, None] & (rn < N)[None, :])


# -- fused dot-product units (psum_dpu_matmul of psum_cpu.c; docs/semantics.md §11) -------------

_NO_EXP = tl.constexpr(-(1 << 20))  # the exponent of a zero term: below every real one


@triton.jit
def _exponent(x):
    """floor(log2 |x|) of nonzero normal float64 values (products of float32 numbers and
    accumulator values always are); _NO_EXP for zeros."""
    bits = x.to(tl.int64, bitcast=True)
    e = ((bits >> 52) & 0x7FF) - 1023
    return tl.where(x == 0, _NO_EXP, e)


@triton.jit
def _pow2(e):
    """2^e as a float64, for -1022 <= e <= 1023."""
    return ((e + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _kept(x, scale, unit, STICKY: tl.constexpr):
    """``x`` truncated toward zero to a multiple of ``unit`` (= 1 / scale); with STICKY
    the multiple made odd when anything was dropped. Zeros keep their sign."""
    q = tl.abs(x) * scale  # exact: a power of two
    n = tl.floor(q)
    if STICKY:
        even = (n - 2.0 * tl.floor(n * 0.5)) == 0
        n = tl.where((n != q) & even, n + 1.0, n)
    m = n * unit
    return tl.where(x < 0, -m, tl.where(x == 0, x, m))


@triton.jit
def _dpu_kernel(at_ptr, b_ptr, out_ptr, M, N, K, MP, NP, CHUNK,
                W: tl.constexpr, L: tl.constexpr, INCLUDE: tl.constexpr, STICKY: tl.constexpr,
                CHUNKED: tl.constexpr,
                A_MAN: tl.constexpr, A_EMIN: tl.constexpr, A_SUB: tl.constexpr, A_NE: tl.constexpr,
                A_MAX: tl.constexpr, A_OVF: tl.constexpr, A_INF: tl.constexpr, A_MINN: tl.constexpr,
                A_MINS: tl.constexpr, A_HALFS: tl.constexpr, A_FTZUP: tl.constexpr, A_NAN: tl.constexpr,
                O_MAN: tl.constexpr, O_EMIN: tl.constexpr, O_SUB: tl.constexpr, O_NE: tl.constexpr,
                O_MAX: tl.constexpr, O_OVF: tl.constexpr, O_INF: tl.constexpr, O_MINN: tl.constexpr,
                O_MINS: tl.constexpr, O_HALFS: tl.constexpr, O_FTZUP: tl.constexpr, O_NAN: tl.constexpr,
                WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A BLOCK_M x BLOCK_N tile of outputs, each the dot product on a W-term unit: per
    group the largest exponent (a first pass over its terms), then the kept terms added
    exactly (a second pass), one rounding; promotion into the outer format every CHUNK
    terms when CHUNKED."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    state = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    exact = tl.zeros((BLOCK_M, BLOCK_N), tl.int64)  # sticky direction 0: the double is the exact value
    for k0 in range(0, K, CHUNK):
        state = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
        end = tl.minimum(k0 + CHUNK, K)
        for g in range(k0, end, W):
            hi = tl.minimum(g + W, end)
            special = (state != state) | (tl.abs(state) == float("inf"))
            top = tl.full((BLOCK_M, BLOCK_N), _NO_EXP, tl.int64)
            if INCLUDE:
                top = _exponent(state)
            for k in range(g, hi):
                kk = _index(k, WIDE)
                av = tl.load(at_ptr + kk * MP + rm).to(tl.float64)
                bw = tl.load(b_ptr + kk * NP + rn).to(tl.float64)
                p = av[:, None] * bw[None, :]
                special = special | (p != p) | (tl.abs(p) == float("inf"))
                top = tl.maximum(top, _exponent(p))
            e = tl.maximum(top - L - STICKY, -1000)
            scale, unit = _pow2(-e), _pow2(e)
            total = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
            raw = state
            negative_zeros = tl.full((BLOCK_M, BLOCK_N), 1, tl.int1)
            if INCLUDE:
                total = _kept(state, scale, unit, STICKY)
                negative_zeros = (state == 0) & (state.to(tl.int64, bitcast=True) < 0)
            for k in range(g, hi):
                kk = _index(k, WIDE)
                av = tl.load(at_ptr + kk * MP + rm).to(tl.float64)
                bw = tl.load(b_ptr + kk * NP + rn).to(tl.float64)
                p = av[:, None] * bw[None, :]
                raw = raw + p
                total = total + _kept(p, scale, unit, STICKY)  # exact (the caller's bounds)
                negative_zeros = negative_zeros & (p == 0) & (p.to(tl.int64, bitcast=True) < 0)
            total = tl.where(total == 0, tl.where(negative_zeros, -0.0, 0.0), total)
            if INCLUDE:
                r = _round_bits(total.to(tl.int64, bitcast=True), exact, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF,
                                A_INF, A_MINN, A_MINS, A_HALFS, A_FTZUP, A_NAN).to(tl.float64, bitcast=True)
            else:
                r = _two_sum_round(state, total, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX, A_OVF, A_INF, A_MINN,
                                   A_MINS, A_HALFS, A_FTZUP, A_NAN)
            r_special = _round_bits(raw.to(tl.int64, bitcast=True), exact, A_MAN, A_EMIN, A_SUB, A_NE, A_MAX,
                                    A_OVF, A_INF, A_MINN, A_MINS, A_HALFS, A_FTZUP,
                                    A_NAN).to(tl.float64, bitcast=True)
            state = tl.where(special, r_special, r)
        if CHUNKED:
            outer = _two_sum_round(outer, state, O_MAN, O_EMIN, O_SUB, O_NE, O_MAX, O_OVF, O_INF, O_MINN,
                                   O_MINS, O_HALFS, O_FTZUP, O_NAN)
    if CHUNKED:
        result = outer
    else:
        result = state
    offs = rm[:, None] * N + rn[None, :]
    tl.store(out_ptr + offs, result, mask=(rm < M)[:, None] & (rn < N)[None, :])


# -- Python side ---------------------------------------------------------------------------


# -- stochastic rounding of the accumulator (sr_sum_round / psum_matmul_sr of psum_cpu.c) --


@triton.jit
def _sr_two_sum_round(x, y, rnd, R: tl.constexpr, A_MAN: tl.constexpr, A_EMIN: tl.constexpr,
                      A_SUB: tl.constexpr, A_MAX: tl.constexpr, A_OVF: tl.constexpr,
                      A_INF: tl.constexpr, A_MINN: tl.constexpr, A_NAN: tl.constexpr):
    """round(x + y) stochastically with the random integers ``rnd`` in [0, 2^R)
    (docs/semantics.md §13): the floor of the exact magnitude on the grid 2^(q - R),
    from the TwoSum pair, plus rnd, truncated at the quantum 2^q."""
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)
    u = hi.to(tl.int64, bitcast=True)
    a = u & _ABS64
    below = ((lo != 0) & ((lo < 0) != (hi < 0))).to(tl.int64)
    t = a - below  # the double below the exact magnitude (or it)
    exp_field = t >> 52
    normal = exp_field != 0
    sig = tl.where(normal, (t & ((1 << 52) - 1)) | (1 << 52), t)
    qd = tl.where(normal, exp_field - 1075, -1074)
    lead = tl.where(normal, exp_field - 1023, (t.to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 2097)
    if A_SUB:
        q = tl.maximum(lead, A_EMIN) - A_MAN
    else:
        q = lead - A_MAN
    d = tl.minimum(tl.maximum(q - R - qd, 0), 63)
    n = ((sig >> d) + rnd) >> R
    qc = tl.maximum(q, -1074)
    tiny = qc < -1022
    scale = ((qc + 1023 + tl.where(tiny, 64, 0)) << 52).to(tl.float64, bitcast=True)
    r = (n.to(tl.float64) * scale * tl.where(tiny, 2.0 ** -64, 1.0)).to(tl.int64, bitcast=True)
    if not A_SUB:
        r = tl.where(r >= A_MINN, r, 0)  # flush, after rounding
    r = tl.where(r > A_MAX, A_OVF, r)
    r = (u & _SIGN64) | r
    r = tl.where(a == 0, u, r)
    r = tl.where(a == 0x7FF0000000000000, (u & _SIGN64) | A_INF, r)
    r = tl.where(a > 0x7FF0000000000000, A_NAN, r)
    return r.to(tl.float64, bitcast=True)


@triton.jit
def _sr_matmul_kernel(
        at_ptr, b_ptr, st_ptr, out_ptr, M, N, K, MP, NP, CHUNK,
        R: tl.constexpr, HAS_PRODUCT: tl.constexpr, CHUNKED: tl.constexpr,
        A_MAN: tl.constexpr, A_EMIN: tl.constexpr, A_SUB: tl.constexpr, A_NE: tl.constexpr,
        A_MAX: tl.constexpr, A_OVF: tl.constexpr, A_INF: tl.constexpr, A_MINN: tl.constexpr,
        A_MINS: tl.constexpr, A_HALFS: tl.constexpr, A_FTZUP: tl.constexpr,
        A_NAN: tl.constexpr,
        P_MAN: tl.constexpr, P_EMIN: tl.constexpr, P_SUB: tl.constexpr, P_NE: tl.constexpr,
        P_MAX: tl.constexpr, P_OVF: tl.constexpr, P_INF: tl.constexpr, P_MINN: tl.constexpr,
        P_MINS: tl.constexpr, P_HALFS: tl.constexpr, P_FTZUP: tl.constexpr,
        P_NAN: tl.constexpr,
        O_MAN: tl.constexpr, O_EMIN: tl.constexpr, O_SUB: tl.constexpr, O_NE: tl.constexpr,
        O_MAX: tl.constexpr, O_OVF: tl.constexpr, O_INF: tl.constexpr, O_MINN: tl.constexpr,
        O_MINS: tl.constexpr, O_HALFS: tl.constexpr, O_FTZUP: tl.constexpr,
        O_NAN: tl.constexpr,
        WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[i, j] as :func:`_float_matmul_kernel` computes it, with the accumulator
    rounding stochastically: the xorshift32 generator of output (i, j) starts at
    st[i, j] ((M, N) int64 words) and steps once per term, across chunks."""
    rm = _index(tl.program_id(0), WIDE) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = _index(tl.program_id(1), WIDE) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rm < M)[:, None] & (rn < N)[None, :]
    offs = rm[:, None] * N + rn[None, :]
    state = tl.load(st_ptr + offs, mask=inside, other=1)
    outer = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    for k0 in range(0, K, CHUNK):
        k1 = tl.minimum(k0 + CHUNK, K)
        acc = tl.zeros_like(acc)
        for k in range(k0, k1):
            p = _term(at_ptr, b_ptr, k, MP, NP, rm, rn, WIDE, HAS_PRODUCT, P_MAN, P_EMIN, P_SUB, P_NE,
                      P_MAX, P_OVF, P_INF, P_MINN, P_MINS, P_HALFS, P_FTZUP, P_NAN)
            state = state ^ ((state << 13) & 0xFFFFFFFF)
            state = state ^ (state >> 17)
            state = state ^ ((state << 5) & 0xFFFFFFFF)
            acc = _sr_two_sum_round(acc, p, state >> (32 - R), R, A_MAN, A_EMIN, A_SUB, A_MAX,
                                    A_OVF, A_INF, A_MINN, A_NAN)
        if CHUNKED:
            outer = _two_sum_round(outer, acc, O_MAN, O_EMIN, O_SUB, O_NE, O_MAX, O_OVF, O_INF,
                                   O_MINN, O_MINS, O_HALFS, O_FTZUP, O_NAN)
    if CHUNKED:
        result = outer
    else:
        result = acc
    tl.store(out_ptr + offs, result, mask=inside)


class BlockConfig:
    """Launch shape of the matmul kernels: a BLOCK_M x BLOCK_N output tile per program,
    ``num_warps`` warps, and ``check_every`` fast float steps between checks for rare
    cases. Changes speed only, never results.

    The default, 16 x 128 with 4 warps, gives each thread 4 rows x 4 columns of
    accumulators: the sm_90 code of the float32 fast step is then 22.8 instructions
    per MAC including 5 loads per 16 MACs, in 91 registers (64 x 64 with 4 warps gives
    a thread 16 rows of one column: 16 + 1 loads per 16 MACs, and spills)."""

    def __init__(self, block_m: int = 16, block_n: int = 128, num_warps: int = 4,
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


# Short names of the fields of _native.FormatParams, in its order (its last field,
# rare_below_abs, belongs to the C fast step only).
_ROUNDING_NAMES = ("MAN", "EMIN", "SUB", "NE", "MAX", "OVF", "INF", "MINN", "MINS", "HALFS",
                   "FTZUP", "NAN")


def format_constants(fmt: FloatFormat, prefix: str) -> dict[str, int]:
    """The kernels' compile-time description of ``fmt`` (the CPU kernel's ``psum_fmt``):
    mode flags and float64 patterns, named ``{prefix}_MAN``, ``{prefix}_MAX``, ..."""
    params = _native.format_params(fmt)
    return {f"{prefix}_{name}": int(getattr(params, field))
            for name, (field, _) in zip(_ROUNDING_NAMES, _native.FormatParams._fields_)}


def _narrow_constants(fmt: FloatFormat, tiny_inputs: bool) -> dict:
    """What the float32 fast step needs (the CPU kernel's psum_fmt32 and more): patterns
    it compares against, whether the float adder can round (nearest-even, M <= 21, and
    the constant C = 1.5 * 2^(q + 23) finite up to the format's max), and whether
    accumulator values (CHECK_X) or products (CHECK_Y: some input is nonzero and below
    2^-51) can be nonzero and below 2^-103."""
    pattern = lambda value: int(torch.tensor(float(value)).view(torch.int32))  # noqa: E731
    below = pattern(2.0 ** (fmt.emin - fmt.man_bits)) if fmt.subnormals else 0
    smallest = fmt.emin - fmt.man_bits if fmt.subnormals else fmt.emin
    return {"FLOAT_ROUND": fmt.rounding == "nearest_even" and fmt.man_bits <= 21
            and fmt.emax - fmt.man_bits + 23 <= 127,
            "CHECK_X": smallest < -103, "CHECK_Y": tiny_inputs,
            "A_MAXF": float(fmt.max_finite), "A_MINNF": 2.0 ** fmt.emin,
            "A_MINN32": pattern(2.0 ** fmt.emin),
            "A_MINS32": pattern(2.0 ** (fmt.emin - fmt.man_bits)),
            "A_RARE32": max(below, 1 << 23)}


_NOT_NARROW = {"FLOAT_ROUND": False, "CHECK_X": False, "CHECK_Y": False, "A_MAXF": 0.0,
               "A_MINNF": 0.0, "A_MINN32": 0, "A_MINS32": 0, "A_RARE32": 0}


def _fast64(cfg: AccumConfig) -> bool:
    """Whether the float64 fast step applies: nearest-even, exact products, every
    breakpoint of the accumulator a normal double, and C = 1.5 * 2^(q + 52) finite."""
    acc = cfg.acc
    return (cfg.product is None and acc.rounding == "nearest_even"
            and acc.emin - acc.man_bits - 2 >= -1022 and acc.emax - acc.man_bits + 52 <= 1022)


def _has_tiny(t: torch.Tensor) -> bool:
    """Whether ``t`` holds a value with 0 < |v| < 2^-51 (then products of two inputs
    can be nonzero and below 2^-103)."""
    mag = t.abs()
    return bool(((mag > 0) & (mag < 2.0 ** -51)).any())


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


class _Operands:
    """``a`` (M, K) and ``b`` (K, N) laid out for a kernel: ``at`` = a transposed,
    (K, MP), and ``b`` (K, NP), zero-padded to whole tiles so that every load is
    unmasked and contiguous; the launch grid; whether offsets need 64 bits."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, blocks: BlockConfig):
        (self.m, self.k), self.n = a.shape, b.shape[1]
        self.grid = (triton.cdiv(self.m, blocks.block_m), triton.cdiv(self.n, blocks.block_n))
        self.mp, self.np = self.grid[0] * blocks.block_m, self.grid[1] * blocks.block_n
        self.at = a.new_zeros(self.k, self.mp)
        self.at[:, :self.m] = a.t()
        if self.np == self.n and b.is_contiguous():
            self.b = b
        else:
            self.b = b.new_zeros(self.k, self.np)
            self.b[:, :self.n] = b
        kk = max(self.k, 1)
        self.wide = max(self.mp * kk, kk * self.np, self.mp * self.np) >= 2 ** 31

    def args(self, out: torch.Tensor, chunk: int | None) -> tuple:
        return (self.at, self.b, out, self.m, self.n, self.k, self.mp, self.np,
                chunk or max(self.k, 1))


def _run(a: torch.Tensor, b: torch.Tensor, blocks: BlockConfig | None,
         operands: torch.dtype, result: torch.dtype, launch) -> torch.Tensor:
    """What both matmul backends do around their kernel: check the operand dtype, run
    products with few output columns transposed, skip empty outputs, pad the operands
    to whole tiles, then ``launch(ops, out, blocks)`` fills the (M, N) ``out``."""
    blocks = blocks or BlockConfig()
    _check_tensor(a, (operands,), "a")
    _check_tensor(b, (operands,), "b")
    m, n = a.shape[0], b.shape[1]
    if _lanes_on_rows(m, n, blocks.block_n):
        return _run(b.t(), a.t(), blocks, operands, result, launch).t()
    out = torch.empty(m, n, dtype=result, device=a.device)
    if m and n:
        launch(_Operands(a, b, blocks), out, blocks)
    return out


def triton_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig,
                  blocks: BlockConfig | None = None) -> torch.Tensor:
    """The float backend (see :func:`emulator.matmul.register_backend`): ``a`` (M, K) and
    ``b`` (K, N) float32 holding values of the input formats; (M, N) float64 results."""
    if cfg.unit is not None:  # a fused dot-product unit
        return triton_dpu_matmul(a, b, cfg, blocks)
    narrow = narrow_lanes(cfg)
    unused = cfg.acc  # the product and outer constants are compiled out when not used
    constants = {**format_constants(cfg.acc, "A"),
                 **format_constants(cfg.product or unused, "P"),
                 **format_constants(cfg.chunk_acc if cfg.chunk else unused, "O")}

    def launch(ops: _Operands, out: torch.Tensor, blocks: BlockConfig) -> None:
        lanes = (_narrow_constants(cfg.acc, _has_tiny(ops.at) or _has_tiny(ops.b)) if narrow
                 else _NOT_NARROW)
        _float_matmul_kernel[ops.grid](
            *ops.args(out, cfg.chunk), FAST=narrow or _fast64(cfg), NARROW=narrow,
            HAS_PRODUCT=cfg.product is not None, CHUNKED=cfg.chunk is not None, **constants,
            **lanes, WIDE=ops.wide, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
            CHECK_EVERY=blocks.check_every, num_warps=blocks.num_warps, enable_fp_fusion=False)

    return _run(a, b, blocks, torch.float32, torch.float64, launch)


def triton_sr_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig, states: torch.Tensor,
                     blocks: BlockConfig | None = None) -> torch.Tensor:
    """The float backend for a stochastically rounding accumulator: ``a`` (M, K) and
    ``b`` (K, N) float32 holding values of the input formats, ``states`` (M, N) the
    generators' start states; (M, N) float64 results, the CPU kernel's bits."""
    blocks = blocks or BlockConfig()
    if _lanes_on_rows(a.shape[0], b.shape[1], blocks.block_n):  # few columns: rows in the lanes
        return triton_sr_matmul(b.t(), a.t(), cfg, states.t(), blocks).t()
    words = states.to(device=a.device, dtype=torch.int64).contiguous()
    unused = cfg.acc
    constants = {**format_constants(cfg.acc, "A"), **format_constants(cfg.product or unused, "P"),
                 **format_constants(cfg.chunk_acc if cfg.chunk else unused, "O")}

    def launch(ops: _Operands, out: torch.Tensor, blocks: BlockConfig) -> None:
        at, bb, out_, *sizes = ops.args(out, cfg.chunk)
        _sr_matmul_kernel[ops.grid](
            at, bb, words, out_, *sizes, R=cfg.acc.random_bits, HAS_PRODUCT=cfg.product is not None,
            CHUNKED=cfg.chunk is not None, **constants, WIDE=ops.wide, BLOCK_M=blocks.block_m,
            BLOCK_N=blocks.block_n, num_warps=blocks.num_warps, enable_fp_fusion=False)

    return _run(a, b, blocks, torch.float32, torch.float64, launch)


def _float_backend(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig,
                   states: torch.Tensor | None = None) -> torch.Tensor:
    """The registered float backend: the stochastic kernel where ``states`` are given."""
    if states is not None:
        return triton_sr_matmul(a, b, cfg, states)
    return triton_matmul(a, b, cfg)


def triton_int_matmul(a: torch.Tensor, b: torch.Tensor, cfg: IntAccumConfig,
                      blocks: BlockConfig | None = None) -> torch.Tensor:
    """The integer backend: ``a`` (M, K) and ``b`` (K, N) int32; (M, N) int64 results."""

    def launch(ops: _Operands, out: torch.Tensor, blocks: BlockConfig) -> None:
        _int_matmul_kernel[ops.grid](
            *ops.args(out, cfg.chunk), BITS=cfg.acc.bits, SAT=cfg.acc.overflow == "saturate",
            OUTER_BITS=cfg.chunk_acc.bits, OUTER_SAT=cfg.chunk_acc.overflow == "saturate",
            CHUNKED=cfg.chunk is not None, WIDE=ops.wide, BLOCK_M=blocks.block_m,
            BLOCK_N=blocks.block_n, num_warps=blocks.num_warps)

    return _run(a, b, blocks, torch.int32, torch.int64, launch)


def triton_dpu_matmul(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig,
                      blocks: BlockConfig | None = None) -> torch.Tensor:
    """:func:`emulator.dpu.dpu_matmul` in Triton, for ``cfg.unit``: ``a`` (M, K) and
    ``b`` (K, N) float32 holding values of the input formats; (M, N) float64 results."""
    from emulator.dpu import check_dpu

    unit = cfg.unit
    check_dpu(unit.width, unit.align_bits, cfg.inputs, cfg.weights, cfg.chunk)
    if unit.align_bits is None:
        raise ValueError("the Triton unit kernel takes a bounded align_bits")
    constants = {**format_constants(cfg.acc, "A"), **format_constants(cfg.chunk_acc if cfg.chunk else cfg.acc, "O")}

    def launch(ops: _Operands, out: torch.Tensor, blocks: BlockConfig) -> None:
        _dpu_kernel[ops.grid](
            *ops.args(out, cfg.chunk), W=unit.width, L=unit.align_bits, INCLUDE=unit.include_acc,
            STICKY=int(unit.sticky), CHUNKED=cfg.chunk is not None, **constants, WIDE=ops.wide,
            BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, num_warps=blocks.num_warps, enable_fp_fusion=False)

    return _run(a, b, blocks or BlockConfig(16, 32), torch.float32, torch.float64, launch)


register_backend("cuda", _float_backend, triton_int_matmul)
