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

__all__ = ["FloatMAC", "IntMAC", "HWGEN_VERSION", "add_and_round"]

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


def _decoded(dec: FloatDecoder) -> dict:
    """A decoder's outputs as an operand: sign, zero, inf, nan, exp, sig."""
    return {"sign": dec.sign, "zero": dec.zero, "inf": dec.inf, "nan": dec.nan, "exp": dec.exp, "sig": dec.sig}


def add_and_round(m: Module, name: str, x: dict, y: dict, fmt: FloatFormat, es) -> Signal:
    """The adder: ``round_fmt(x + y)`` of two exact operands, as a bit pattern of ``fmt``.

    Operands are dicts (sign, zero, inf, nan, exp, sig) as :class:`FloatDecoder` gives
    them; ``sig`` may have any width (its top bit is the leading 1 of a nonzero finite
    value, ``exp`` that bit's exponent). Order by magnitude -> align the smaller with a
    sticky bit in a window of p + 3 bits (p the widest significand, at least M + 1) ->
    add, or subtract the aligned addend and the sticky bit -> normalize -> round once ->
    special values (NaN, Inf or max, signed zeros: (-0) + (-0) = -0, exact cancellation
    +0). With shift d >= 2 a subtraction cancels at most one leading bit, so the rounding
    position stays two bits above the sticky position; with d <= 1 nothing is shifted out.
    """
    p = max(len(x["sig"]), len(y["sig"]), fmt.man_bits + 1)
    window = p + 3
    xs, ys = Signal(p, name=f"{name}_x_sig"), Signal(p, name=f"{name}_y_sig")
    m.d.comb += [xs.eq(Mux(x["zero"], 0, x["sig"] << (p - len(x["sig"])))),
                 ys.eq(Mux(y["zero"], 0, y["sig"] << (p - len(y["sig"]))))]
    x_first = Signal(name=f"{name}_x_first")  # x is the larger magnitude
    with m.If(x["zero"]):
        m.d.comb += x_first.eq(0)
    with m.Elif(y["zero"]):
        m.d.comb += x_first.eq(1)
    with m.Else():
        m.d.comb += x_first.eq((x["exp"] > y["exp"]) | ((x["exp"] == y["exp"]) & (xs >= ys)))
    big_sig, small_sig = Mux(x_first, xs, ys), Mux(x_first, ys, xs)
    big_exp, small_exp = Mux(x_first, x["exp"], y["exp"]), Mux(x_first, y["exp"], x["exp"])
    big_sign = Mux(x_first, x["sign"], y["sign"])
    small_zero = Mux(x_first, y["zero"], x["zero"])

    align = Aligner(window, (window + 1).bit_length())
    m.submodules[f"{name}_align"] = align
    distance = big_exp - small_exp
    m.d.comb += [align.value.eq(Cat(Const(0, 3), small_sig)),
                 align.shift.eq(Mux(small_zero | (distance > window), window, distance))]
    big_w = Cat(Const(0, 3), big_sig)
    total = Signal(window + 1, name=f"{name}_sum")
    subtract = x["sign"] ^ y["sign"]
    m.d.comb += total.eq(Mux(subtract, big_w - align.result - align.sticky, big_w + align.result))

    norm = Normalizer(window + 1)
    rnd = Rounder(fmt, window + 1, es)
    m.submodules[f"{name}_norm"], m.submodules[f"{name}_round"] = norm, rnd
    exact_zero = total == 0
    m.d.comb += [norm.value.eq(total), rnd.sig.eq(norm.result), rnd.sticky.eq(align.sticky),
                 rnd.exp.eq(big_exp + 1 - norm.count), rnd.zero.eq(exact_zero),
                 rnd.sign.eq(big_sign & ~exact_zero)]

    nan = x["nan"] | y["nan"] | (x["inf"] & y["inf"] & (x["sign"] != y["sign"]))
    inf = (x["inf"] | y["inf"]) & ~nan
    inf_sign = Mux(x["inf"], x["sign"], y["sign"])
    inf_bits = golden.round_to(fmt, float("inf"))  # Inf, or max when the format has none
    result = Signal(fmt.bits, name=f"{name}_result")
    with m.If(nan):
        m.d.comb += result.eq(golden.nan_pattern(fmt))
    with m.Elif(inf):
        m.d.comb += result.eq(Cat(Const(inf_bits, fmt.bits - 1), inf_sign))
    with m.Elif(x["zero"] & y["zero"]):
        m.d.comb += result.eq((x["sign"] & y["sign"]) << (fmt.bits - 1))
    with m.Else():
        m.d.comb += result.eq(rnd.bits)
    return result


class FloatMAC(wiring.Component):
    """A floating-point MAC: ``acc' = round_acc(acc + a * b)`` (docs/semantics.md §4).

    Parameters
    ----------
    inputs : format of ``a`` (default bf16).
    acc : the accumulator's format (any mode).
    weights : format of ``b``; default: ``inputs``.
    product : round each product to this format before the add (unfused); default
        exact (fused).
    pipeline : a register between the multiplier and the adder.
    chunk, chunk_acc : chunked accumulation (docs/semantics.md §5): the ``acc`` register
        accumulates runs of ``chunk`` terms from +0; each full run is added into an outer
        register in ``chunk_acc``. The output ``acc`` is then ``round_chunk_acc(outer +
        inner)``, a ``chunk_acc`` pattern: the chunked dot product of all terms so far.
        One outer adder serves both: a full run is spilled at the next ``en``.

    Datapath: decode (normalizing subnormals) -> exact significand product -> [product
    rounding] -> :func:`add_and_round` into the accumulator format.
    """

    def __init__(self, inputs="bf16", acc="fp32", *, weights=None, product=None, pipeline=False,
                 chunk=None, chunk_acc="fp32"):
        self.inputs = _float_format(inputs, "inputs")
        self.weights = self.inputs if weights is None else _float_format(weights, "weights")
        self.acc_format = _float_format(acc, "acc")
        self.product = None if product is None else _float_format(product, "product")
        self.pipeline = bool(pipeline)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive integer or None, not {chunk!r}")
        self.chunk = chunk
        self.chunk_acc = _float_format(chunk_acc, "chunk_acc") if chunk else None
        out_fmt = self.chunk_acc or self.acc_format
        super().__init__({"a": In(self.inputs.bits), "b": In(self.weights.bits), "en": In(1),
                          "clear": In(1), "acc": Out(out_fmt.bits)})

    @property
    def result_format(self) -> FloatFormat:
        """The format of the ``acc`` output."""
        return self.chunk_acc or self.acc_format

    def describe(self) -> str:
        text = f"FloatMAC inputs={self.inputs} weights={self.weights} acc={self.acc_format}"
        if self.product is not None:
            text += f" product={self.product}"
        if self.chunk:
            text += f" chunk={self.chunk} chunk_acc={self.chunk_acc}"
        return text + (" pipeline" if self.pipeline else "")

    def elaborate(self, platform):
        m = Module()
        fa, fb, fc = self.inputs, self.weights, self.acc_format
        formats = [f for f in (fa, fb, fc, self.product, self.chunk_acc) if f is not None]
        window = max(f.man_bits for f in formats) + fa.man_bits + fb.man_bits + 8
        es = exponent_shape(*formats, fa, extra=2 * window)

        prod, en, clear = self._multiply(m, es)
        m.submodules.dec_c = dc = FloatDecoder(fc, es)
        inner = Signal(fc.bits, name="acc_reg")
        restart = clear
        if self.chunk:
            count = Signal(range(self.chunk + 1), name="count")
            restart = clear | (count == self.chunk)  # a full run starts over at +0
        m.d.comb += dc.bits.eq(Mux(restart, 0, inner))
        result = add_and_round(m, "add", prod, _decoded(dc), fc, es)

        if not self.chunk:
            m.d.comb += self.acc.eq(inner)
            with m.If(en):
                m.d.sync += inner.eq(result)
            with m.Elif(clear):
                m.d.sync += inner.eq(0)
            return m

        fo = self.chunk_acc
        outer = Signal(fo.bits, name="outer_reg")
        m.submodules.dec_inner = di = FloatDecoder(fc, es)
        m.submodules.dec_outer = do = FloatDecoder(fo, es)
        m.d.comb += [di.bits.eq(inner), do.bits.eq(outer)]
        spilled = add_and_round(m, "spill", _decoded(do), _decoded(di), fo, es)
        m.d.comb += self.acc.eq(spilled)  # the dot product so far: outer + the open run
        with m.If(en):
            m.d.sync += [inner.eq(result), count.eq(Mux(restart, 1, count + 1))]
            with m.If(clear):
                m.d.sync += outer.eq(0)
            with m.Elif(count == self.chunk):
                m.d.sync += outer.eq(spilled)
        with m.Elif(clear):
            m.d.sync += [inner.eq(0), outer.eq(0), count.eq(0)]
        return m

    def _multiply(self, m: Module, es) -> tuple[dict, object, object]:
        """The exact product as an operand (rounded to ``product`` when unfused, behind
        the pipeline register when pipelined), and the ``en``/``clear`` that go with it."""
        fa, fb = self.inputs, self.weights
        wp = fa.man_bits + fb.man_bits + 2
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
        return prod, en, clear

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
        return _decoded(dp)


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
