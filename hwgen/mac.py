"""MAC units: :class:`FloatMAC` and :class:`IntMAC` (Amaranth 0.5 components).

Port contract (every MAC, see docs/hardware.md): the ``sync`` domain's ``clk`` and
synchronous ``rst``; inputs ``a``, ``b`` (bit patterns), ``en`` and ``clear``; output
``acc``, the accumulator register's bit pattern. On a rising edge:

- ``rst``: ``acc <= 0``;
- ``en``: ``acc <= round(base + a * b)`` with ``base = clear ? +0 : acc``;
- ``clear`` without ``en``: ``acc <= +0``;
- otherwise ``acc`` holds.

With ``pipeline=True`` a register sits between the multiplier and the adder: ``a``,
``b``, ``en`` and ``clear`` of one cycle act on ``acc`` one cycle later.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psum import golden
from psum.formats import FloatFormat, IntFormat, parse
from hwgen.pieces import Aligner, FloatDecoder, Normalizer, Rounder, exponent_shape

__all__ = ["FloatMAC", "IntMAC", "HWGEN_VERSION"]

#: Bumped whenever generated hardware changes; part of synthesis cache keys.
HWGEN_VERSION = "1"

# The formats hwgen supports: the range every part of psum supports.
_EXP_RANGE, _MAN_RANGE = (2, 8), (0, 23)


def _float_format(value, role: str) -> FloatFormat:
    fmt = parse(value)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"{role} must be a floating-point format, not {fmt}")
    if not (_EXP_RANGE[0] <= fmt.exp_bits <= _EXP_RANGE[1] and _MAN_RANGE[0] <= fmt.man_bits <= _MAN_RANGE[1]):
        raise ValueError(f"{role} {fmt}: hwgen supports 2 <= E <= 8 and 0 <= M <= 23")
    return fmt


class FloatMAC(wiring.Component):
    """A floating-point MAC: ``acc' = round_acc(acc + a * b)`` (docs/semantics.md §4).

    Parameters
    ----------
    inputs : format of ``a`` (default bf16).
    acc : the accumulator register's format (any mode).
    weights : format of ``b``; default: ``inputs``.
    product : round each product to this format before the add (unfused); default
        exact (fused).
    pipeline : a register between the multiplier and the adder.

    Datapath: decode (normalizing subnormals) -> exact significand product -> [product
    rounding] -> swap so the larger operand comes first -> align the smaller with a
    sticky bit (window of p + 3 bits, p the wider significand) -> add or subtract
    (subtracting the sticky too) -> normalize (leading-zero count) -> round once into
    the accumulator format -> special values (NaN, Inf, signed zeros).
    """

    def __init__(self, inputs="bf16", acc="fp32", *, weights=None, product=None, pipeline=False):
        self.inputs = _float_format(inputs, "inputs")
        self.weights = self.inputs if weights is None else _float_format(weights, "weights")
        self.acc_format = _float_format(acc, "acc")
        self.product = None if product is None else _float_format(product, "product")
        self.pipeline = bool(pipeline)
        super().__init__({"a": In(self.inputs.bits), "b": In(self.weights.bits), "en": In(1),
                          "clear": In(1), "acc": Out(self.acc_format.bits)})

    def describe(self) -> str:
        text = f"FloatMAC inputs={self.inputs} weights={self.weights} acc={self.acc_format}"
        if self.product is not None:
            text += f" product={self.product}"
        return text + (" pipeline" if self.pipeline else "")

    def elaborate(self, platform):
        m = Module()
        fa, fb, fc = self.inputs, self.weights, self.acc_format
        formats = [fa, fb, fc] + ([self.product] if self.product else [])
        wp = fa.man_bits + fb.man_bits + 2  # exact product significand
        p = max(wp if self.product is None else self.product.man_bits + 1, fc.man_bits + 1)
        window = p + 3  # guard, round and sticky positions below the wider significand
        es = exponent_shape(*formats, fa, extra=2 * window)

        # -- multiply: exact significand product, exponent of its top bit --------------
        m.submodules.dec_a = da = FloatDecoder(fa, es)
        m.submodules.dec_b = db = FloatDecoder(fb, es)
        m.d.comb += [da.bits.eq(self.a), db.bits.eq(self.b)]
        raw = Signal(wp)
        m.d.comb += raw.eq(da.sig * db.sig)
        top = raw[wp - 1]
        prod = {
            "sign": da.sign ^ db.sign,
            "nan": da.nan | db.nan | (da.inf & db.zero) | (da.zero & db.inf),
            "sig": Mux(top, raw, raw << 1)[:wp],
            "exp": da.exp + db.exp + top,
        }
        prod["inf"] = (da.inf | db.inf) & ~prod["nan"]
        prod["zero"] = (da.zero | db.zero) & ~prod["nan"] & ~prod["inf"]
        en, clear = self.en, self.clear
        if self.pipeline:  # register the product and the controls
            staged = {}
            for name, value in prod.items():
                staged[name] = Signal(es if name == "exp" else len(value), name=f"stage_{name}")
                m.d.sync += staged[name].eq(value)
            en, clear = Signal(name="stage_en"), Signal(name="stage_clear")
            m.d.sync += [en.eq(self.en), clear.eq(self.clear)]
            prod = staged
        if self.product is not None:
            prod = self._round_product(m, prod, wp, es)
        prod_width = len(prod["sig"])

        # -- the accumulator operand: +0 when clearing ---------------------------------
        m.submodules.dec_c = dc = FloatDecoder(fc, es)
        acc_reg = Signal(fc.bits, name="acc_reg")
        m.d.comb += [dc.bits.eq(Mux(clear, 0, acc_reg)), self.acc.eq(acc_reg)]

        # -- order the operands: X the larger magnitude, Y the other -------------------
        p_sig = Signal(p, name="p_sig")
        c_sig = Signal(p, name="c_sig")
        m.d.comb += [p_sig.eq(Mux(prod["zero"], 0, prod["sig"] << (p - prod_width))),
                     c_sig.eq(Mux(dc.zero, 0, dc.sig << (p - fc.man_bits - 1)))]
        prod_first = Signal(name="prod_first")
        with m.If(prod["zero"]):
            m.d.comb += prod_first.eq(0)
        with m.Elif(dc.zero):
            m.d.comb += prod_first.eq(1)
        with m.Else():
            m.d.comb += prod_first.eq((prod["exp"] > dc.exp) | ((prod["exp"] == dc.exp) & (p_sig >= c_sig)))
        x_sig, y_sig = Mux(prod_first, p_sig, c_sig), Mux(prod_first, c_sig, p_sig)
        x_exp, y_exp = Mux(prod_first, prod["exp"], dc.exp), Mux(prod_first, dc.exp, prod["exp"])
        x_sign, y_sign = Mux(prod_first, prod["sign"], dc.sign), Mux(prod_first, dc.sign, prod["sign"])
        y_zero = Mux(prod_first, dc.zero, prod["zero"])

        # -- align Y to X, add or subtract ------------------------------------------
        m.submodules.align = align = Aligner(window, (window + 1).bit_length())
        distance = x_exp - y_exp
        m.d.comb += [align.value.eq(Cat(Const(0, 3), y_sig)),
                     align.shift.eq(Mux(y_zero | (distance > window), window, distance))]
        x_w = Cat(Const(0, 3), x_sig)
        total = Signal(window + 1, name="sum")
        subtract = x_sign ^ y_sign
        m.d.comb += total.eq(Mux(subtract, x_w - align.result - align.sticky, x_w + align.result))

        # -- normalize and round once -----------------------------------------------
        m.submodules.norm = norm = Normalizer(window + 1)
        m.submodules.rounder = rnd = Rounder(fc, window + 1, es)
        exact_zero = total == 0
        m.d.comb += [norm.value.eq(total),
                     rnd.sig.eq(norm.result), rnd.sticky.eq(align.sticky),
                     rnd.exp.eq(x_exp + 1 - norm.count),
                     rnd.zero.eq(exact_zero), rnd.sign.eq(x_sign & ~exact_zero)]

        # -- special values ---------------------------------------------------------
        nan = prod["nan"] | dc.nan | (prod["inf"] & dc.inf & (prod["sign"] != dc.sign))
        inf = (prod["inf"] | dc.inf) & ~nan
        inf_sign = Mux(prod["inf"], prod["sign"], dc.sign)
        inf_bits = golden.round_to(fc, float("inf"))  # Inf, or max when the format has none
        result = Signal(fc.bits, name="result")
        with m.If(nan):
            m.d.comb += result.eq(golden.nan_pattern(fc))
        with m.Elif(inf):
            m.d.comb += result.eq(Cat(Const(inf_bits, fc.bits - 1), inf_sign))
        with m.Elif(prod["zero"] & dc.zero):  # (-0) + (-0) = -0, else +0
            m.d.comb += result.eq((prod["sign"] & dc.sign) << (fc.bits - 1))
        with m.Else():
            m.d.comb += result.eq(rnd.bits)

        with m.If(en):
            m.d.sync += acc_reg.eq(result)
        with m.Elif(clear):
            m.d.sync += acc_reg.eq(0)
        return m

    def _round_product(self, m: Module, prod: dict, wp: int, es) -> dict:
        """Round the exact product into the product format and read it back (unfused)."""
        fp = self.product
        m.submodules.product_rounder = rnd = Rounder(fp, wp, es)
        m.d.comb += [rnd.sign.eq(prod["sign"]), rnd.zero.eq(prod["zero"]), rnd.exp.eq(prod["exp"]),
                     rnd.sig.eq(prod["sig"]), rnd.sticky.eq(0)]
        bits = Signal(fp.bits, name="product_bits")
        inf_bits = golden.round_to(fp, float("inf"))
        with m.If(prod["nan"]):
            m.d.comb += bits.eq(golden.nan_pattern(fp))
        with m.Elif(prod["inf"]):
            m.d.comb += bits.eq(Cat(Const(inf_bits, fp.bits - 1), prod["sign"]))
        with m.Else():
            m.d.comb += bits.eq(rnd.bits)
        m.submodules.dec_p = dp = FloatDecoder(fp, es)
        m.d.comb += dp.bits.eq(bits)
        return {"sign": dp.sign, "nan": dp.nan, "inf": dp.inf, "zero": dp.zero, "sig": dp.sig, "exp": dp.exp}


class IntMAC(wiring.Component):
    """An integer MAC: signed ``a`` (a_bits) and ``b`` (b_bits), exact product,
    ``acc' = fit(acc + a * b)`` with the accumulator's wrap or saturate rule."""

    def __init__(self, a_bits: int = 8, b_bits: int = 8, acc="int32", *, pipeline=False):
        for name, bits in (("a_bits", a_bits), ("b_bits", b_bits)):
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
                raise ValueError(f"{name} must be an integer between 2 and 32, not {bits!r}")
        fmt = parse(acc)
        if not isinstance(fmt, IntFormat) or not fmt.signed:
            raise ValueError(f"acc must be a signed integer format, not {fmt}")
        self.a_bits, self.b_bits, self.acc_format, self.pipeline = a_bits, b_bits, fmt, bool(pipeline)
        super().__init__({"a": In(a_bits), "b": In(b_bits), "en": In(1), "clear": In(1),
                          "acc": Out(fmt.bits)})

    def describe(self) -> str:
        return f"IntMAC a=int{self.a_bits} b=int{self.b_bits} acc={self.acc_format}" + (
            " pipeline" if self.pipeline else "")

    def elaborate(self, platform):
        m = Module()
        fmt = self.acc_format
        product = Signal(signed(self.a_bits + self.b_bits), name="product")
        m.d.comb += product.eq(self.a.as_signed() * self.b.as_signed())
        en, clear = self.en, self.clear
        if self.pipeline:
            staged = Signal.like(product, name="stage_product")
            en, clear = Signal(name="stage_en"), Signal(name="stage_clear")
            m.d.sync += [staged.eq(product), en.eq(self.en), clear.eq(self.clear)]
            product = staged
        acc_reg = Signal(signed(fmt.bits), name="acc_reg")
        base = Mux(clear, 0, acc_reg)
        total = Signal(signed(max(fmt.bits, len(product)) + 1), name="sum")
        m.d.comb += [total.eq(base + product), self.acc.eq(acc_reg)]
        if fmt.overflow == "saturate":
            nxt = Mux(total > fmt.max_value, fmt.max_value, Mux(total < fmt.min_value, fmt.min_value, total))
        else:
            nxt = total[:fmt.bits]
        with m.If(en):
            m.d.sync += acc_reg.eq(nxt)
        with m.Elif(clear):
            m.d.sync += acc_reg.eq(0)
        return m
