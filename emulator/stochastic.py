"""Stochastic rounding of the accumulator, vectorized (docs/semantics.md §13).

The generators are the golden model's (:func:`psum.golden.stochastic_state`,
``stochastic_step``, ``stochastic_random``) on int64 tensors that hold 32-bit words;
:func:`sr_round_sum` is the rounding of one MAC step written with float64 tensor
operations (floor, frexp, ldexp), a second derivation of §2's stochastic rule beside
the kernels' bit-pattern one. The matmul reference runs it step by step.
"""

from __future__ import annotations

import math

import torch

from psum.formats import FloatFormat

__all__ = ["stochastic_states", "step", "draw", "sr_round_sum", "row_indices"]

_MASK32 = (1 << 32) - 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for 32-bit words in int64 without overflowing int64: the
    constant taken in two 16-bit halves."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def stochastic_states(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The start states of the generators of outputs ``(rows[i], cols[j])``: an int64
    (len(rows), len(cols)) tensor of nonzero 32-bit words, as
    :func:`psum.golden.stochastic_state` gives them one by one."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MASK32:
        raise ValueError(f"seed must be an integer in [0, 2^32), not {seed!r}")
    base = (0x6A09E667 + seed * 0x9E3779B1) & _MASK32
    x = (base + _mul32(rows.to(torch.int64), 0x85EBCA77)[:, None]
         + _mul32(cols.to(torch.int64), 0xC2B2AE3D)[None, :]) & _MASK32
    x = _mix32(x)
    return torch.where(x == 0, torch.ones_like(x), x)


def row_indices(shape: torch.Size) -> torch.Tensor:
    """The §13 row of each flattened leading index of an ``a`` of ``shape`` (..., K):
    its index along the second-to-last dimension (0 for a 1-D ``a``)."""
    lead = shape[:-1]
    return torch.arange(math.prod(lead)) % max(lead[-1] if lead else 1, 1)


def step(states: torch.Tensor) -> torch.Tensor:
    """xorshift32, one step, on int64 tensors of 32-bit words."""
    x = states ^ ((states << 13) & _MASK32)
    x = x ^ (x >> 17)
    return x ^ ((x << 5) & _MASK32)


def draw(states: torch.Tensor, bits: int) -> torch.Tensor:
    """The ``bits`` random bits a rounding takes: the top bits of each state."""
    return states >> (32 - bits)


def sr_round_sum(x: torch.Tensor, y: torch.Tensor, fmt: FloatFormat, random: torch.Tensor) -> torch.Tensor:
    """``round_fmt(x + y)`` of the exact sum of two float64 tensors, stochastically with
    the integers ``random`` in ``[0, 2^R)`` (docs/semantics.md §2, §13).

    The sum is the TwoSum pair (hi, lo). Its magnitude in units of ``2^(q - R)``, ``q``
    the quantum of the exact sum's binade, is ``|hi| * 2^(R - q)`` (a power-of-two
    scaling, exact) plus the scaled ``lo``, which is less than half a unit of the
    former's last place; so its floor is ``floor`` of the scaled ``|hi|``, one less
    where that is an integer and ``lo`` points toward zero. Needs M + R <= 50 and
    finite accumulator values of at most 2^1000 (:func:`emulator.matmul.check_config`)."""
    bits, man = fmt.random_bits, fmt.man_bits
    hi = x + y
    back = hi - x
    lo = (x - (hi - back)) + (y - back)
    mag = hi.abs()
    inward = (lo != 0) & ((lo < 0) != (hi < 0))  # the exact magnitude is below |hi|
    _, exponent = torch.frexp(mag)
    lead = exponent.to(torch.int64) - 1
    power_of_two = torch.ldexp(torch.ones_like(mag), lead.to(mag.dtype)) == mag
    lead = lead - (power_of_two & inward).to(torch.int64)
    quantum = (lead.clamp(min=fmt.emin) if fmt.subnormals else lead) - man
    scale = bits - quantum  # up to about 1100: applied in two halves, each a double
    scaled = torch.ldexp(torch.ldexp(mag, (scale // 2).to(mag.dtype)), (scale - scale // 2).to(mag.dtype))
    floor = torch.floor(scaled)
    truncated = floor - ((floor == scaled) & inward).to(torch.float64)
    n = torch.floor((truncated + random.to(torch.float64)) / float(1 << bits))
    r = torch.ldexp(n, quantum.to(torch.float64))
    if not fmt.subnormals:
        r = torch.where(r >= float(fmt.min_normal), r, 0.0)
    over = float("inf") if fmt.has_inf else float(fmt.max_finite)
    r = torch.where(r > float(fmt.max_finite), over, r)
    out = torch.where(hi < 0, -r, r)
    out = torch.where(torch.signbit(hi) & (r == 0), -0.0, out)  # a negative sum rounded to zero
    out = torch.where(mag == 0, hi, out)  # an exact zero sum: the float64 zero's sign
    out = torch.where(torch.isinf(hi), hi if fmt.has_inf else torch.sign(hi) * float(fmt.max_finite), out)
    nan = torch.full_like(out, float("nan") if fmt.has_nan else (float("inf") if fmt.has_inf else
                                                                 float(fmt.max_finite)))
    return torch.where(torch.isnan(hi), nan, out)
