"""Output stages: what a layer's accumulator passes through before the next layer.

An integer network requantizes every output (:class:`Requantizer`: the accumulator
times the layer's fixed-point scale, rounded, saturated to int8); a float network
rounds every output into the next layer's input format (:class:`FloatConverter`, an
FP accumulator -> bf16). Each happens once per output, so per MAC it costs the stage's
energy over K, the dot product's length. Both follow docs/semantics.md §9 and are
checked against :func:`psum.golden.requantize` and :func:`psum.golden.convert`.

Port contract (both): the ``sync`` domain's ``clk`` and ``rst``; the result is
registered: ``out`` shows, one rising edge later, the stage applied to this cycle's
inputs (``rst``: ``out <= 0``).
"""

from __future__ import annotations

import math

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psum.formats import IntFormat, parse
from hwgen.mac import _decoded, _float_format, encode
from hwgen.pieces import FloatDecoder, exponent_shape

__all__ = ["Requantizer", "FloatConverter"]


def _width(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer between {lo} and {hi}, not {value!r}")
    return value


class Requantizer(wiring.Component):
    """``out' = clamp_out(floor((value * multiplier + 2^(shift-1)) / 2^shift))``.

    Members: ``value: In(acc bits)`` (signed, the accumulator's pattern), ``multiplier:
    In(multiplier_bits)`` (unsigned), ``shift: In(bits of max_shift)``, ``out:
    Out(out_bits)`` (signed, saturated). Parts: multiplier, round & shift (the rounding
    constant and the barrel shifter), saturate, register.
    """

    def __init__(self, acc="int32", *, multiplier_bits: int = 16, out_bits: int = 8):
        fmt = parse(acc)
        if not isinstance(fmt, IntFormat) or not fmt.signed:
            raise ValueError(f"acc must be a signed integer format, not {fmt}")
        self.acc_format = fmt
        self.multiplier_bits = _width("multiplier_bits", multiplier_bits, 1, 32)
        self.out_bits = _width("out_bits", out_bits, 2, 32)
        self.max_shift = fmt.bits + self.multiplier_bits
        super().__init__({"value": In(fmt.bits), "multiplier": In(self.multiplier_bits),
                          "shift": In(range(self.max_shift + 1)), "out": Out(self.out_bits)})

    def fixed_point(self, scale: float) -> tuple[int, int]:
        """(multiplier, shift) with ``multiplier / 2^shift`` nearest to the real ``scale``
        (> 0) at the most precision the ports hold: the multiplier's top bit set where
        the shift range allows."""
        if not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ValueError(f"scale must be a positive finite number, not {scale!r}")
        top = (1 << self.multiplier_bits) - 1
        shift = max(0, min(self.max_shift, self.multiplier_bits - 1 - math.floor(math.log2(scale))))
        if shift and round(scale * 2 ** shift) > top:  # rounding carried out of the top bit
            shift -= 1
        return min(top, max(1, round(scale * 2 ** shift))), shift

    def describe(self) -> str:
        return f"Requantizer acc={self.acc_format} multiplier=u{self.multiplier_bits} out=int{self.out_bits}"

    def components(self) -> dict[str, str]:
        return {"": "register", "multiply": "multiplier", "round_shift": "round & shift", "saturate": "saturate"}

    def elaborate(self, platform):
        m = Module()
        width = self.acc_format.bits + self.multiplier_bits + 1
        m.submodules.multiply = mul = Module()
        product = Signal(signed(width), name="scaled")
        mul.d.comb += product.eq(self.value.as_signed() * self.multiplier.as_unsigned())
        m.submodules.round_shift = sh = Module()  # not "shift": that is a port's name
        shifted = Signal(signed(width + 1), name="shifted")
        half = Mux(self.shift == 0, 0, (Const(1, signed(width + 1)) << self.shift) >> 1)
        sh.d.comb += shifted.eq((product + half) >> self.shift)
        m.submodules.saturate = sat = Module()
        top = (1 << (self.out_bits - 1)) - 1
        fitted = Signal(signed(self.out_bits), name="fitted")
        sat.d.comb += fitted.eq(Mux(shifted > top, top, Mux(shifted < -top - 1, -top - 1, shifted)))
        m.d.sync += self.out.eq(fitted)
        return m


class FloatConverter(wiring.Component):
    """``out' = round_dst(value)``: a ``src`` pattern rounded into ``dst`` (bf16 by
    default), as docs/semantics.md §2 rounds. Parts: decode, round, register."""

    def __init__(self, src="fp32", dst="bf16"):
        self.src, self.dst = _float_format(src, "src"), _float_format(dst, "dst")
        super().__init__({"value": In(self.src.bits), "out": Out(self.dst.bits)})

    def describe(self) -> str:
        return f"FloatConverter {self.src} -> {self.dst}"

    def components(self) -> dict[str, str]:
        return {"": "register", "dec": "decode", "out_rounder": "round"}

    def elaborate(self, platform):
        m = Module()
        es = exponent_shape(self.src, self.dst)
        m.submodules.dec = dec = FloatDecoder(self.src, es)
        m.d.comb += dec.bits.eq(self.value)
        bits = encode(m, "out", _decoded(dec), self.dst, self.src.man_bits + 1, es)
        m.d.sync += self.out.eq(bits)
        return m
