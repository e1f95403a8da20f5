"""What one layer's MAC units compute: the accumulation configs.

:class:`AccumConfig` describes a floating-point MAC (docs/semantics.md §4-5): input
formats for activations and weights, an optional product format, the accumulator,
and optional chunking into a second, wider accumulator. :class:`IntAccumConfig` the
integer MAC (§6). Both are frozen and hashable, their format fields hold parsed
formats (strings are accepted and parsed), and they check their values on creation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from psum.formats import FloatFormat, IntFormat, parse

__all__ = ["AccumConfig", "IntAccumConfig", "ORDERS"]

#: Accumulation orders for convolutions. "im2col": input channel outermost, then kernel
#: row, then kernel column (torch's unfold order); "nhwc": kernel row, kernel column,
#: then input channel innermost (a channels-last dataflow).
ORDERS = ("im2col", "nhwc")


def _format(value, kind: type, name: str):
    fmt = parse(value)
    if not isinstance(fmt, kind):
        wanted = "a floating-point" if kind is FloatFormat else "an integer"
        raise ValueError(f"{name} must be {wanted} format, not {fmt}")
    return fmt


def _check_chunk(chunk) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer or None, not {chunk!r}")


def _check_order(order) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, not {order!r}")


@dataclass(frozen=True)
class AccumConfig:
    """A floating-point MAC: ``acc = round_acc(acc + round_product(a * w))``.

    Parameters
    ----------
    acc : accumulator format (the inner one when chunked).
    inputs : format activations are rounded to before the MAC (default bf16).
    weights : format weights are rounded to; ``None`` means the same as ``inputs``.
    product : format each product is rounded to before the add (unfused MAC); ``None``
        keeps products exact (fused).
    chunk : accumulate chunks of this many terms from +0 in ``acc``, then add the chunk
        results in order into ``chunk_acc``; ``None`` accumulates all K terms in ``acc``.
    chunk_acc : the outer accumulator's format (default fp32).
    order : accumulation order of a convolution's K terms (see :data:`ORDERS`).
    """

    acc: FloatFormat = "fp32"
    inputs: FloatFormat = "bf16"
    weights: FloatFormat | None = None
    product: FloatFormat | None = None
    chunk: int | None = None
    chunk_acc: FloatFormat = "fp32"
    order: str = "im2col"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("chunk", "order") or value is None:
                continue
            object.__setattr__(self, f.name, _format(value, FloatFormat, f.name))
        if self.weights is None:
            object.__setattr__(self, "weights", self.inputs)
        _check_chunk(self.chunk)
        _check_order(self.order)

    @property
    def result_format(self) -> FloatFormat:
        """The format of a finished dot product: ``chunk_acc`` if chunked, else ``acc``."""
        return self.chunk_acc if self.chunk is not None else self.acc

    def __str__(self) -> str:
        text = f"acc={self.acc} inputs={self.inputs}"
        if self.weights != self.inputs:
            text += f" weights={self.weights}"
        if self.product is not None:
            text += f" product={self.product}"
        if self.chunk is not None:
            text += f" chunk={self.chunk} chunk_acc={self.chunk_acc}"
        if self.order != "im2col":
            text += f" order={self.order}"
        return text


@dataclass(frozen=True)
class IntAccumConfig:
    """An integer MAC: symmetric integer operands, ``acc = fit(acc + a * w)`` per step.

    Parameters
    ----------
    acc : the accumulator IntFormat (wrap or saturate at every step).
    weight_bits, act_bits : operand widths (signed, symmetric: values in
        ``[-(2^(b-1) - 1), 2^(b-1) - 1]``), 2..16.
    chunk, chunk_acc : chunked accumulation as for :class:`AccumConfig`.
    order : accumulation order of a convolution's K terms.
    """

    acc: IntFormat = "int32"
    weight_bits: int = 8
    act_bits: int = 8
    chunk: int | None = None
    chunk_acc: IntFormat = "int32"
    order: str = "im2col"

    def __post_init__(self):
        object.__setattr__(self, "acc", _format(self.acc, IntFormat, "acc"))
        object.__setattr__(self, "chunk_acc", _format(self.chunk_acc, IntFormat, "chunk_acc"))
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
                raise ValueError(f"{name} must be an integer between 2 and 16, not {bits!r}")
        _check_chunk(self.chunk)
        _check_order(self.order)

    @property
    def result_format(self) -> IntFormat:
        return self.chunk_acc if self.chunk is not None else self.acc

    def __str__(self) -> str:
        text = f"acc={self.acc} int{self.act_bits}xint{self.weight_bits}"
        if self.chunk is not None:
            text += f" chunk={self.chunk} chunk_acc={self.chunk_acc}"
        if self.order != "im2col":
            text += f" order={self.order}"
        return text
