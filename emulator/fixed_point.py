"""TensorFlow Lite's integer arithmetic on tensors: the vectorized form of
:func:`psum.golden.tflite_rescale` and :func:`psum.golden.tflite_average`
(docs/semantics.md §10), bit for bit (tested against the golden model).

Tensors are int64; values that TFLite keeps in int32 must lie in int32's range.
"""

from __future__ import annotations

import torch

__all__ = ["rescale", "average", "as_int64"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def as_int64(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64, device=like.device)


def _trunc_div_pow2(n: torch.Tensor, bits: int) -> torch.Tensor:
    """``n / 2^bits`` rounded toward zero (C++ division)."""
    return torch.where(n >= 0, n >> bits, -((-n) >> bits))


def rescale(x: torch.Tensor, multiplier, shift, *, single: bool = False) -> torch.Tensor:
    """``MultiplyByQuantizedMultiplier(x, m0, shift)`` elementwise: ``x`` shifted left by
    ``max(shift, 0)``, ``SaturatingRoundingDoublingHighMul`` by ``m0``, then
    ``RoundingDivideByPOT`` by ``2^max(-shift, 0)``; with ``single`` the one-rounding
    form ``floor(x * m0 * 2^(shift - 31) + 1/2)``. ``multiplier`` and ``shift`` are ints
    or tensors that broadcast against ``x`` (per output channel)."""
    x = x.to(torch.int64)
    m, s = as_int64(multiplier, x), as_int64(shift, x)
    if single:  # |x| < 2^31 and m0 < 2^31: the product fits int64
        total = 31 - s
        return (x * m + (torch.ones_like(total) << (total - 1))) >> total
    a = x << s.clamp(min=0)
    if a.numel() and (int(a.min()) < _INT32_MIN or int(a.max()) > _INT32_MAX):
        raise ValueError("rescale: a shifted value leaves int32")
    product = a * m  # |a|, |m| < 2^31: exact in int64
    nudge = torch.where(product >= 0, torch.full_like(product, 1 << 30), torch.full_like(product, 1 - (1 << 30)))
    high = _trunc_div_pow2(product + nudge, 31)
    high = torch.where((a == _INT32_MIN) & (m == _INT32_MIN), torch.full_like(high, _INT32_MAX), high)
    right = (-s).clamp(min=0)
    mask = (torch.ones_like(right) << right) - 1
    threshold = (mask >> 1) + (high < 0).to(torch.int64)
    return (high >> right) + ((high & mask) > threshold).to(torch.int64)


def average(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` to nearest with ties away from zero (C++: ``(total +- count/2) /
    count``, truncating)."""
    total, count = total.to(torch.int64), count.to(torch.int64)
    half = count // 2
    up = torch.div(total + half, count, rounding_mode="trunc")
    down = torch.div(total - half, count, rounding_mode="trunc")
    return torch.where(total > 0, up, down)
