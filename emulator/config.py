"""What one layer's MAC units compute: the accumulation configs.

:class:`AccumConfig` describes a floating-point MAC (docs/semantics.md §4-5): input
formats for activations and weights, an optional product format, the accumulator,
and optional chunking into a second, wider accumulator. :class:`IntAccumConfig` the
integer MAC (§6). Both are frozen and hashable, their format fields hold parsed
formats (strings are accepted and parsed), and they check their values on creation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from psum.formats import FloatFormat, IntFormat, not_stochastic, parse

__all__ = ["AccumConfig", "IntAccumConfig", "DotUnit", "ORDERS"]

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
class DotUnit:
    """A fused dot-product unit (docs/semantics.md §11): ``width`` products a step,
    aligned with (``include_acc``) or without the accumulator to the largest exponent,
    each keeping ``align_bits`` bits below its leading bit (truncated toward zero;
    ``sticky``: one more bit, set when anything was dropped; ``None``: every bit), the
    kept terms added exactly and rounded once into the accumulator."""

    width: int
    align_bits: int | None
    include_acc: bool = True
    sticky: bool = False

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"a dot-product unit's width must be a positive integer, not {self.width!r}")
        bits = self.align_bits
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or bits < 0):
            raise ValueError(f"align_bits must be a non-negative integer or None, not {bits!r}")
        for name in ("include_acc", "sticky"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")

    def __str__(self) -> str:
        text = f"W{self.width} L{'all' if self.align_bits is None else self.align_bits}"
        return text + ("" if self.include_acc else " acc-apart") + (" sticky" if self.sticky else "")


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
    unit : a :class:`DotUnit` (fused W-term dot products, one rounding per group;
        ``chunk`` then promotes every ``chunk`` terms, a multiple of its width); ``None``:
        the sequential MAC.
    seed : the seed (0..2^32-1) of the generators of a stochastically rounding ``acc``
        (docs/semantics.md §13); it takes part in equality, and prints, only then.
    """

    acc: FloatFormat = "fp32"
    inputs: FloatFormat = "bf16"
    weights: FloatFormat | None = None
    product: FloatFormat | None = None
    chunk: int | None = None
    chunk_acc: FloatFormat = "fp32"
    order: str = "im2col"
    unit: DotUnit | None = None
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("chunk", "order", "unit", "seed") or value is None:
                continue
            object.__setattr__(self, f.name, _format(value, FloatFormat, f.name))
        if self.weights is None:
            object.__setattr__(self, "weights", self.inputs)
        _check_stochastic(self)
        _check_chunk(self.chunk)
        _check_order(self.order)
        if self.unit is not None:
            if not isinstance(self.unit, DotUnit):
                raise ValueError(f"unit must be a DotUnit or None, not {self.unit!r}")
            if self.product is not None:
                raise ValueError("a dot-product unit keeps its products exact: give no product format")
            if self.chunk is not None and self.chunk % self.unit.width:
                raise ValueError(f"chunk {self.chunk} must be a multiple of the unit's width {self.unit.width}")

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
        if self.unit is not None:
            text += f" unit={self.unit}"
        if self.acc.rounding == "stochastic":
            text += f" seed={self.seed}"
        return text


def _check_stochastic(cfg: AccumConfig) -> None:
    """Only the accumulator rounds stochastically, and only in the sequential MAC; a
    seed is a 32-bit word, normalized to 0 where nothing draws from it (so that configs
    that compute the same compare equal)."""
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2^32), not {seed!r}")
    for name in ("inputs", "weights", "product", "chunk_acc"):
        not_stochastic(getattr(cfg, name), name)
    if cfg.acc.rounding != "stochastic":
        object.__setattr__(cfg, "seed", 0)
    elif cfg.unit is not None:
        raise ValueError(f"acc {cfg.acc}: a dot-product unit rounds to nearest or toward zero; "
                         "stochastic rounding is for the sequential MAC")


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
