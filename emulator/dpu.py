"""Fused multi-term dot-product units (docs/semantics.md §11) on tensors.

A dot-product unit of width W takes W products a cycle: the products and (with
``include_acc``) the accumulator are aligned to the largest exponent among them, each
keeps ``align_bits`` bits below that exponent's leading bit (truncated toward zero;
``sticky``: one more bit, set when anything was dropped), the kept terms are added
exactly and the sum is rounded once into the accumulator format. With ``chunk`` the
accumulator is promoted into an outer one every ``chunk`` terms (DeepSeek-V3's fix of
Hopper's FP8 accumulation). Bit-exact with :func:`psum.golden.dpu_dot`.

The arithmetic runs in doubles, in the CPU kernel (``psum_dpu_matmul``, psum_cpu.c; one
dot product per thread's row, in order) and, as a second implementation the tests hold
against both, in float64 tensors (:func:`dpu_matmul_reference`): operands are float32
numbers (their products are exact), alignment truncates each term to a multiple of a
power of two (the kernel scales by a power of two and converts to int64, eight output
columns to a vector, or masks the double's pattern; the reference scales and floors),
and the W + 1 kept terms, integers times one unit below ``2^(align_bits + 2)``,
add exactly while ``align_bits + 2 + log2(W + 1) <= 53`` and W <= 64 (checked). The
rounding into the accumulator is of the exact sum, or, with the accumulator outside the
alignment, of acc + sum through TwoSum (one rounding of the exact value).
"""

from __future__ import annotations

import math

import torch

from emulator.matmul import round_sum
from emulator.quantize import as_float_format, quantize

__all__ = ["dpu_matmul", "cpu_dpu_matmul", "dpu_matmul_reference", "check_dpu", "MAX_WIDTH"]

#: The widest unit emulated (the kernel's group buffer).
MAX_WIDTH = 64

#: float64's significand bits: the kept terms' sum must fit them to be exact.
_FLOAT64_BITS = 53


def check_dpu(width: int, align_bits: int | None, inputs, weights, chunk: int | None) -> None:
    """ValueError unless the unit can be emulated exactly here (see the module)."""
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be an integer from 1 to {MAX_WIDTH}, not {width!r}")
    if align_bits is None:
        if width > 1:
            raise ValueError("align_bits=None (every bit kept) is emulated for width 1 only; the golden model "
                             "(psum.golden.dpu_dot) takes any width")
    elif isinstance(align_bits, bool) or not isinstance(align_bits, int) or align_bits < 0:
        raise ValueError(f"align_bits must be a non-negative integer or None, not {align_bits!r}")
    elif align_bits + 2 + math.ceil(math.log2(width + 1)) > _FLOAT64_BITS:
        raise ValueError(f"align_bits {align_bits} with width {width}: the kept terms' sum would not be exact in "
                         f"float64 (align_bits + 2 + log2(width + 1) must be at most {_FLOAT64_BITS})")
    from emulator import _native

    for role, fmt in (("inputs", inputs), ("weights", weights)):
        problems = _native.fit_problems(fmt, "float32")  # float32 operands: exact products in float64
        if problems:
            raise ValueError(f"{role} {fmt} is not exact in float32, so its products are not exact in float64: "
                             f"{'; '.join(problems)}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk % width):
        raise ValueError(f"chunk must be a positive multiple of width {width}, not {chunk!r}")


def dpu_matmul(a: torch.Tensor, b: torch.Tensor, acc="fp32", *, width: int, align_bits: int | None,
               include_acc: bool = True, sticky: bool = False, inputs="bf16", weights=None,
               chunk: int | None = None, chunk_acc="fp32", threads: int | None = None) -> torch.Tensor:
    """``a @ b`` (M, K) x (K, N) with every output a dot product on a ``width``-term
    unit (the CPU kernel): operands rounded into ``inputs``/``weights``, groups of
    ``width`` consecutive k in order (the last may be shorter), each a
    :func:`psum.golden.dpu_step`. Returns the (M, N) values (float64) in ``acc``, or in
    ``chunk_acc`` with ``chunk``.

    Sixty-four ones in e4m3: one at a time the sum stops at 16 (16 + 1 is a tie, to
    even); four at a time it adds 4 per step and reaches 64.

    >>> ones = torch.ones(1, 64)
    >>> dpu_matmul(ones, ones.T, "e4m3", width=1, align_bits=13).item()
    16.0
    >>> dpu_matmul(ones, ones.T, "e4m3", width=4, align_bits=13).item()
    64.0
    """
    from emulator import _native
    from emulator.config import AccumConfig, DotUnit

    acc_fmt, in_fmt, w_fmt, outer_fmt = _formats(acc, inputs, weights, chunk_acc)
    check_dpu(width, align_bits, in_fmt, w_fmt, chunk)
    _check_shapes(a, b)
    for fmt in (acc_fmt, outer_fmt):
        _native.check_fits(fmt, "float64")
    cfg = AccumConfig(acc=acc_fmt, inputs=in_fmt, weights=w_fmt, chunk=chunk, chunk_acc=outer_fmt,
                      unit=DotUnit(width, align_bits, include_acc, sticky))
    return cpu_dpu_matmul(quantize(a.detach().double().cpu(), in_fmt).float(),
                          quantize(b.detach().double().cpu(), w_fmt).float(), cfg, threads)


def cpu_dpu_matmul(a: torch.Tensor, b: torch.Tensor, cfg, threads: int | None = None) -> torch.Tensor:
    """The CPU kernel ``psum_dpu_matmul`` for ``cfg.unit``: ``a`` (M, K) and ``b`` (K, N)
    float32 already rounded to the input formats; (M, N) float64 results."""
    from emulator import _native

    u = cfg.unit
    aq, bt = a.contiguous(), b.t().contiguous()  # bt: (N, K), each dot product's terms in a row
    (m, k), n = aq.shape, bt.shape[0]
    out = torch.empty(m, n, dtype=torch.float64)
    _native.library().psum_dpu_matmul(
        aq.data_ptr(), bt.data_ptr(), out.data_ptr(), m, n, k, _native.format_params(cfg.acc),
        _native.format_params(cfg.chunk_acc), u.width, -1 if u.align_bits is None else u.align_bits,
        int(u.include_acc), int(u.sticky), cfg.chunk or 0, threads or torch.get_num_threads())
    return out


def _formats(acc, inputs, weights, chunk_acc):
    in_fmt = as_float_format(inputs, "inputs")
    return (as_float_format(acc, "acc"), in_fmt, in_fmt if weights is None else as_float_format(weights, "weights"),
            as_float_format(chunk_acc, "chunk_acc"))


def _check_shapes(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"dpu_matmul takes (M, K) and (K, N) tensors, not {tuple(a.shape)} and {tuple(b.shape)}")


def dpu_matmul_reference(a: torch.Tensor, b: torch.Tensor, acc="fp32", *, width: int, align_bits: int | None,
                         include_acc: bool = True, sticky: bool = False, inputs="bf16", weights=None,
                         chunk: int | None = None, chunk_acc="fp32") -> torch.Tensor:
    """:func:`dpu_matmul` in float64 tensors, a group at a time over blocks of rows: the
    second implementation the tests hold the kernel and the golden model against."""
    acc_fmt, in_fmt, w_fmt, outer_fmt = _formats(acc, inputs, weights, chunk_acc)
    check_dpu(width, align_bits, in_fmt, w_fmt, chunk)
    _check_shapes(a, b)
    aq = quantize(a.detach().double().cpu(), in_fmt)
    bq = quantize(b.detach().double().cpu(), w_fmt)
    m, n = aq.shape[0], bq.shape[1]
    rows = max(1, BLOCK_ELEMENTS // max(1, width * n))  # rows per block: bounded memory
    out = torch.empty(m, n, dtype=torch.float64)
    for r in range(0, m, rows):
        out[r:r + rows] = _rows(aq[r:r + rows], bq, acc_fmt, width, align_bits, include_acc, sticky, chunk,
                                outer_fmt)
    return out


#: Product terms (rows x width x N) evaluated at once.
BLOCK_ELEMENTS = 1 << 22


def _rows(aq: torch.Tensor, bq: torch.Tensor, acc_fmt, width: int, align_bits, include_acc: bool, sticky: bool,
          chunk: int | None, chunk_acc) -> torch.Tensor:
    """The dot products of a block of rows (module docstring; :func:`dpu_matmul`)."""
    (m, k), n = aq.shape, bq.shape[1]
    step = chunk or max(k, 1)
    outer = torch.zeros(m, n, dtype=torch.float64)
    state = outer
    for lo in range(0, k, step):
        state = torch.zeros(m, n, dtype=torch.float64)
        for g in range(lo, min(lo + step, k), width):
            end = min(g + width, lo + step, k)
            products = aq[:, g:end, None] * bq[None, g:end, :]  # (M, w, N), exact
            state = _group(state, products, acc_fmt, align_bits, include_acc, sticky)
        if chunk:
            outer = round_sum(outer, state, chunk_acc)
    return outer if chunk else state


def _group(state: torch.Tensor, products: torch.Tensor, fmt, align_bits: int | None, include_acc: bool,
           sticky: bool) -> torch.Tensor:
    """One step of the unit on every output at once: the accumulators ``state`` (M, N)
    and the group's exact products (M, w, N) -> the new accumulators."""
    every = torch.cat([products, state[:, None, :]], dim=1)
    special = ~torch.isfinite(every).all(dim=1)
    if align_bits is None:  # every bit kept (width 1): acc + p, one rounding of the exact sum
        return round_sum(state, products[:, 0, :], fmt)
    aligned = every if include_acc else products
    if align_bits is not None:
        aligned = _truncate(aligned, align_bits, sticky)
    total = aligned.sum(dim=1)  # exact (check_dpu)
    addends = every if include_acc else products  # before truncation: -0 only if every addend is -0
    negative_zeros = (torch.signbit(addends) & (addends == 0)).all(dim=1)
    total = torch.where(total == 0, torch.where(negative_zeros, -0.0, 0.0).to(total.dtype), total)
    result = quantize(total, fmt) if include_acc else round_sum(state, total, fmt)
    if special.any():  # NaN or Inf among the terms: the exact sum's rules, then rounding
        result = torch.where(special, quantize(every.sum(dim=1), fmt), result)
    return result


def _truncate(terms: torch.Tensor, align_bits: int, sticky: bool) -> torch.Tensor:
    """Each term truncated toward zero to ``align_bits`` bits below the leading bit of
    the largest (by exponent) nonzero term on its dimension 1; with ``sticky`` to one
    more bit, set when anything below it was dropped. Zeros and specials pass through."""
    mag = terms.abs()
    finite = torch.isfinite(mag)
    _, exp = torch.frexp(torch.where(finite, mag, torch.zeros_like(mag)))  # mag = f * 2^exp, f in [0.5, 1)
    lead = torch.where((mag > 0) & finite, exp - 1, torch.full_like(exp, -(1 << 20)))
    top = lead.max(dim=1, keepdim=True).values
    step_exp = top - align_bits - (1 if sticky else 0)
    step = torch.ldexp(torch.ones_like(mag[:, :1]), step_exp.to(torch.float64))
    scaled = mag / step  # exact: a power of two
    n = torch.floor(scaled)
    if sticky:
        n = torch.where((n != scaled) & (torch.remainder(n, 2) == 0), n + 1, n)
    kept = torch.copysign(n * step, terms)
    return torch.where((mag > 0) & finite, kept, terms)
