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


def rescale(x: torch.Tensor, multiplier, shift, *, single: bool = False) -> torch.Tensor:
    """``MultiplyByQuantizedMultiplier(x, m0, shift)`` elementwise: ``x`` shifted left by
    ``max(shift, 0)``, ``SaturatingRoundingDoublingHighMul`` by ``m0``, then
    ``RoundingDivideByPOT`` by ``2^max(-shift, 0)``; with ``single`` the one-rounding
    form ``floor(x * m0 * 2^(shift - 31) + 1/2)``. ``multiplier`` (``0 <= m0 < 2^31``)
    and ``shift`` are ints or tensors that broadcast against ``x`` (per output channel).

    Computed as ``high = (a * m0 + 2^30) >> 31`` (the high half rounded to nearest,
    ties toward +Inf, which is what the nudge of ``SaturatingRoundingDoublingHighMul``
    gives; its saturating case needs ``m0 = -2^31``) and ``(high + 2^(r-1) - [high < 0])
    >> r`` for ``r > 0`` (ties away from zero): the golden model's arithmetic, fewer
    passes over the tensor."""
    x = x.to(torch.int64)
    m, s = as_int64(multiplier, x), as_int64(shift, x)
    if m.numel() and (int(m.min()) < 0 or int(m.max()) > _INT32_MAX):
        raise ValueError("rescale: multipliers must lie in [0, 2^31)")
    if single:  # |x| < 2^31 and m0 < 2^31: the product fits int64
        total = 31 - s
        return (x * m + (torch.ones_like(total) << (total - 1))) >> total
    if s.numel() and int(s.max()) > 0:
        x = x << s.clamp(min=0)
        if x.numel() and (int(x.min()) < _INT32_MIN or int(x.max()) > _INT32_MAX):
            raise ValueError("rescale: a shifted value leaves int32")
    high = (x * m + (1 << 30)) >> 31
    right = (-s).clamp(min=0)
    nudge = (torch.ones_like(right) << right) >> 1  # 2^(r-1), 0 when r = 0
    return (high + nudge - ((high < 0) & (right > 0)).to(torch.int64)) >> right


def average(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` to nearest with ties away from zero (C++: ``(total +- count/2) /
    count``, truncating)."""
    total, count = total.to(torch.int64), count.to(torch.int64)
    half = count // 2
    up = torch.div(total + half, count, rounding_mode="trunc")
    down = torch.div(total - half, count, rounding_mode="trunc")
    return torch.where(total > 0, up, down)
