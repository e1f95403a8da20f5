"""The reusable pieces of psum's floating-point datapaths (Amaranth 0.5 components).

All combinational. Each has a software twin (its ``model`` static method) that the
tests check it against:

- :class:`LeadingZeroCounter`: leading zeros of a vector (its width when zero);
- :class:`Aligner`: right shift with a sticky bit (OR of what falls off);
- :class:`Normalizer`: left shift by the leading-zero count (MSB to the top);
- :class:`FloatDecoder`: a format's bit pattern -> sign, class, normalized significand,
  exponent of its leading bit;
- :class:`Rounder`: (sign, exponent, normalized significand, sticky) -> the format's bit
  pattern, rounded as docs/semantics.md §2 says (subnormals or flush-to-zero, ties to
  even or toward zero, overflow to Inf or saturation).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psum import golden
from psum.formats import FloatFormat

__all__ = ["LeadingZeroCounter", "Aligner", "Normalizer", "FloatDecoder", "Rounder",
           "exponent_shape"]


def _bits_for(n: int) -> int:
    """Bits of an unsigned value that can hold 0..n."""
    return max(1, n.bit_length())


def exponent_shape(*formats: FloatFormat, extra: int = 0) -> signed:
    """A signed shape wide enough for every exponent the datapath meets: those of the
    formats, of products of two of them, and of shifts by up to ``extra`` positions."""
    bound = extra + 4
    for fmt in formats:
        bound += abs(fmt.emin - fmt.man_bits) + abs(fmt.emax) + 2
    return signed(_bits_for(bound) + 1)


class LeadingZeroCounter(wiring.Component):
    """``count`` = number of leading zeros of ``value`` (``width`` when it is 0).

    Members: ``value: In(width)``, ``count: Out(bits of width)``.
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, not {width!r}")
        self.width = width
        super().__init__({"value": In(width), "count": Out(_bits_for(width))})

    @staticmethod
    def model(value: int, width: int) -> int:
        return width - value.bit_length()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.count.eq(self.width)
        for i in range(self.width):  # later statements win: the highest set bit decides
            with m.If(self.value[i]):
                m.d.comb += self.count.eq(self.width - 1 - i)
        return m


class Aligner(wiring.Component):
    """``result = value >> shift``; ``sticky`` = 1 when any 1 bit was shifted out.

    Shifts of ``width`` or more give 0 (and sticky = value != 0).
    Members: ``value: In(width)``, ``shift: In(shift_bits)``, ``result: Out(width)``,
    ``sticky: Out(1)``.
    """

    def __init__(self, width: int, shift_bits: int):
        self.width, self.shift_bits = width, shift_bits
        super().__init__({"value": In(width), "shift": In(shift_bits), "result": Out(width),
                          "sticky": Out(1)})

    @staticmethod
    def model(value: int, shift: int, width: int) -> tuple[int, int]:
        if shift >= width:
            return 0, int(value != 0)
        return value >> shift, int(value & ((1 << shift) - 1) != 0)

    def elaborate(self, platform):
        m = Module()
        capped = Mux(self.shift >= self.width, self.width, self.shift)
        # a 1 falls off iff the lowest 1 sits below the shift: trailing zeros < shift (a
        # zero value has `width` of them); cheaper than shifting back and comparing
        m.submodules.tzc = tzc = LeadingZeroCounter(self.width)
        m.d.comb += [tzc.value.eq(self.value[::-1]), self.result.eq((self.value >> capped)[:self.width]),
                     self.sticky.eq(tzc.count < capped)]
        return m


class Normalizer(wiring.Component):
    """``result = value << count(value)``: the leading 1 moved to the top bit.

    Members: ``value: In(width)``, ``result: Out(width)``, ``count: Out(...)`` (the
    leading-zero count, ``width`` for a zero value).
    """

    def __init__(self, width: int):
        self.width = width
        super().__init__({"value": In(width), "result": Out(width), "count": Out(_bits_for(width))})

    @staticmethod
    def model(value: int, width: int) -> tuple[int, int]:
        count = width - value.bit_length()
        return (value << count) & ((1 << width) - 1), count

    def elaborate(self, platform):
        m = Module()
        m.submodules.lzc = lzc = LeadingZeroCounter(self.width)
        m.d.comb += [lzc.value.eq(self.value), self.count.eq(lzc.count),
                     self.result.eq((self.value << lzc.count)[:self.width])]
        return m


class FloatDecoder(wiring.Component):
    """A bit pattern of ``fmt`` taken apart.

    ``sig`` is the significand (M + 1 bits) normalized so that its top bit is 1 for any
    nonzero finite value, and ``exp`` the exponent of that top bit, so the value is
    ``(-1)^sign * sig * 2^(exp - M)``. Zeros (and, in a flush-to-zero format, subnormal
    patterns) set ``zero``; ``inf``/``nan`` only exist with ``overflow="inf"``.
    """

    def __init__(self, fmt: FloatFormat, exp_shape):
        self.fmt = fmt
        super().__init__({"bits": In(fmt.bits), "sign": Out(1), "zero": Out(1), "inf": Out(1),
                          "nan": Out(1), "exp": Out(exp_shape), "sig": Out(fmt.man_bits + 1)})

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        man = self.bits[:fmt.man_bits]
        exp_field = self.bits[fmt.man_bits:fmt.man_bits + fmt.exp_bits]
        top_code = exp_field == (1 << fmt.exp_bits) - 1
        subnormal = (exp_field == 0) & (man != 0) & fmt.subnormals
        m.d.comb += self.sign.eq(self.bits[-1])
        m.d.comb += self.zero.eq((exp_field == 0) & ((man == 0) | (not fmt.subnormals)))
        if fmt.has_inf:
            m.d.comb += [self.inf.eq(top_code & (man == 0)), self.nan.eq(top_code & (man != 0))]
        m.submodules.norm = norm = Normalizer(fmt.man_bits + 1)
        m.d.comb += norm.value.eq(Cat(man, exp_field != 0))  # (M+1)-bit significand
        exp_shape = self.exp.shape()
        with m.If(subnormal):
            m.d.comb += [self.sig.eq(norm.result),
                         self.exp.eq(Const(fmt.emin, exp_shape) - norm.count)]
        with m.Else():
            m.d.comb += [self.sig.eq(Cat(man, Const(1, 1))),
                         self.exp.eq(exp_field - Const(fmt.bias, exp_shape))]
        return m


class Rounder(wiring.Component):
    """Round ``(-1)^sign * (sig / 2^(width-1) + sticky * epsilon) * 2^exp`` into ``fmt``.

    ``sig`` (``width`` bits) has its leading 1 at the top (or is 0 with ``zero`` set);
    ``exp`` is the exponent of that top bit; ``sticky`` says that the exact value is
    slightly above ``sig`` (nonzero bits below its last position). The output is the
    pattern of docs/semantics.md §2: denormalized below ``emin`` (or flushed to zero
    after rounding), ties to even or toward zero, overflow to Inf or to max. A ``zero``
    input gives the signed zero.

    Precondition for ``sticky``: ``width >= M + 3``, so that the rounding position lies
    above the sticky position (a narrower ``sig`` must come with ``sticky = 0``).

    A stochastically rounding ``fmt`` (docs/semantics.md §13) has one more input,
    ``random`` (R bits): the R bits below the kept ones, truncated (``sig`` must be the
    floor of the exact value to R bits below the quantum; ``sticky`` is then unused),
    plus ``random``, carry into the kept bits.
    """

    def __init__(self, fmt: FloatFormat, width: int, exp_shape):
        self.fmt = fmt
        self.in_width = width
        self.exp_shape = exp_shape
        ports = {"sign": In(1), "zero": In(1), "exp": In(exp_shape), "sig": In(width), "sticky": In(1),
                 "bits": Out(fmt.bits)}
        if fmt.rounding == "stochastic":
            ports["random"] = In(fmt.random_bits)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        p = fmt.man_bits + 1
        # Only the top p + 1 bits can reach the kept bits or the round bit, however far
        # a subnormal result shifts right: below a guard bit, the rest is one sticky bit.
        # Stochastic rounding reads the R bits below the kept ones and drops the rest.
        stochastic = fmt.rounding == "stochastic"
        width = p + fmt.random_bits if stochastic else p + 2
        if self.in_width > width:
            sig = self.sig[self.in_width - width:]
            sticky = self.sticky | (self.sig[:self.in_width - width] != 0)
        else:
            sig = Cat(Const(0, width - self.in_width), self.sig)  # left-aligned, width bits
            sticky = self.sticky
        e_res = self.exp
        if fmt.subnormals:  # below emin: shift right so the quantum is 2^(emin - M)
            m.submodules.denorm = denorm = Aligner(width, _bits_for(width))
            deficit = fmt.emin - self.exp
            m.d.comb += [denorm.value.eq(sig),
                         denorm.shift.eq(Mux(deficit > 0, Mux(deficit > width, width, deficit), 0))]
            sig, sticky = denorm.result, sticky | denorm.sticky
            e_res = Mux(self.exp < fmt.emin, fmt.emin, self.exp)
        kept = sig[width - p:]  # the top p bits
        if stochastic:  # carry of (the R bits below the kept ones) + random
            up = (sig[:width - p] + self.random)[width - p]
        elif fmt.rounding == "nearest_even":
            round_bit = sig[width - p - 1]
            rest = (sig[:width - p - 1] != 0) | sticky
            up = round_bit & (rest | kept[0])
        else:
            up = Const(0, 1)
        total = kept + up  # p + 1 bits
        carry = total[p]
        significand = Mux(carry, total[1:p + 1], total[:p])  # p bits
        e_final = e_res + carry
        normal = significand[p - 1]

        sign_bit = self.sign << (fmt.bits - 1)
        max_bits = golden.round_to(fmt, fmt.max_finite, 0 if stochastic else None)  # exact: any random
        over = golden.round_to(fmt, float("inf"))  # Inf, or max when there is none
        if fmt.has_inf and fmt.rounding == "toward_zero":
            over = max_bits
        field = (e_final + fmt.bias)[:fmt.exp_bits]
        encoded = Cat(significand[:fmt.man_bits], Mux(normal, field, 0), self.sign)
        overflow = normal & (e_final > fmt.emax)
        underflow = (e_final < fmt.emin) if not fmt.subnormals else Const(0, 1)
        with m.If(self.zero | (significand == 0) | underflow):  # underflow: flush, after rounding
            m.d.comb += self.bits.eq(sign_bit)
        with m.Elif(overflow):
            m.d.comb += self.bits.eq(sign_bit | over)
        with m.Else():
            m.d.comb += self.bits.eq(encoded)
        return m
