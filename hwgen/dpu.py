"""A fused multi-term dot-product unit (docs/semantics.md §11) as an Amaranth component.

Port contract: the MAC's (docs/hardware.md) with W operand pairs a cycle. ``a`` holds W
patterns of ``inputs`` (term i in bits ``[i * bits, (i + 1) * bits)``), ``b`` W of
``weights``; on a rising edge with ``en``: ``acc <= DPU(base, a[i] * b[i])`` with
``base = clear ? +0 : acc``; ``clear`` alone: ``acc <= +0``; ``rst``: ``acc <= 0``.

Datapath: W decoders and exact multipliers -> the largest exponent among the nonzero
terms (products, and the accumulator with ``include_acc``) -> each term's significand
placed at that exponent in a field of ``align_bits + 1`` bits (+1 with ``sticky``) and
shifted right by its distance, the shifted-out bits dropped (or OR-ed into the field's
last bit) -> an adder tree of the signed kept terms (exact) -> normalize and round
once into ``acc`` (with the accumulator apart: :func:`hwgen.mac.add_and_round` of the
kept sum and the accumulator) -> special values.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwgen.mac import _decoded, _float_format, add_and_round, exact_product
from hwgen.pieces import Aligner, FloatDecoder, Normalizer, Rounder, exponent_shape
from psum import golden
from psum.formats import not_stochastic

__all__ = ["DotProductUnit"]


class DotProductUnit(wiring.Component):
    """``acc' = DPU(acc, a[0..W-1] * b[0..W-1])``: a W-term fused dot-product unit.

    Parameters
    ----------
    inputs, weights : formats of ``a`` and ``b`` terms (weights default: inputs).
    acc : the accumulator's format.
    width : W, terms a cycle.
    align_bits : L, bits each aligned term keeps below the largest exponent's leading bit.
    include_acc : the accumulator takes part in the alignment (else it is added whole).
    sticky : each term keeps one more bit, set when anything below it was dropped.

    >>> unit = DotProductUnit("e4m3", "fp32", width=4, align_bits=13)
    >>> unit.describe(), len(unit.a), len(unit.acc)
    ('DotProductUnit inputs=e4m3 weights=e4m3 acc=fp32 W=4 L=13', 32, 32)
    """

    pipeline = False  # the port contract's latency: results the cycle after the edge

    def __init__(self, inputs="bf16", acc="fp32", *, width: int, align_bits: int, include_acc: bool = True,
                 sticky: bool = False, weights=None):
        self.inputs = not_stochastic(_float_format(inputs, "inputs"), "inputs")
        self.weights = self.inputs if weights is None else not_stochastic(_float_format(weights, "weights"), "weights")
        self.acc_format = not_stochastic(_float_format(acc, "acc"), "a dot-product unit's acc")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 64:
            raise ValueError(f"width must be an integer from 1 to 64, not {width!r}")
        if isinstance(align_bits, bool) or not isinstance(align_bits, int) or not 0 <= align_bits <= 64:
            raise ValueError(f"align_bits must be an integer from 0 to 64, not {align_bits!r}")
        self.width, self.align_bits = width, align_bits
        self.include_acc, self.sticky = bool(include_acc), bool(sticky)
        super().__init__({"a": In(width * self.inputs.bits), "b": In(width * self.weights.bits), "en": In(1),
                          "clear": In(1), "acc": Out(self.acc_format.bits)})

    @property
    def result_format(self):
        return self.acc_format

    @property
    def macs_per_cycle(self) -> int:
        """Terms a cycle (energy per cycle over this is energy per MAC)."""
        return self.width

    def describe(self) -> str:
        text = (f"DotProductUnit inputs={self.inputs} weights={self.weights} acc={self.acc_format} "
                f"W={self.width} L={self.align_bits}")
        return text + ("" if self.include_acc else " acc-apart") + (" sticky" if self.sticky else "")

    def components(self) -> dict[str, str]:
        """Parts by instance path (synth.components)."""
        table = {"": "register", "dec_c": "decode", "tree": "add", "norm": "normalize", "round": "round",
                 "add": "add", "add.align": "align", "add.norm": "normalize", "add.round": "round"}
        for i in range(self.width):
            table |= {f"dec_a{i}": "decode", f"dec_b{i}": "decode", f"multiply{i}": "multiplier"}
        for i in range(self.width + 1):
            table[f"align{i}"] = "align"
        return table

    def elaborate(self, platform):
        m = Module()
        fa, fb, fc = self.inputs, self.weights, self.acc_format
        field = self.align_bits + 1 + int(self.sticky)  # kept bits of a term: n < 2^field
        wp = fa.man_bits + fb.man_bits + 2
        es = exponent_shape(fa, fb, fc, fa, extra=4 * (field + wp + fc.man_bits + self.width + 8))

        products = []
        for i in range(self.width):
            da, db = FloatDecoder(fa, es), FloatDecoder(fb, es)
            m.submodules[f"dec_a{i}"], m.submodules[f"dec_b{i}"] = da, db
            m.d.comb += [da.bits.eq(self.a[i * fa.bits:(i + 1) * fa.bits]),
                         db.bits.eq(self.b[i * fb.bits:(i + 1) * fb.bits])]
            products.append(exact_product(m, f"multiply{i}", f"product{i}", da, db, es))
        inner = Signal(fc.bits, name="acc_reg")
        m.submodules.dec_c = dc = FloatDecoder(fc, es)
        m.d.comb += dc.bits.eq(Mux(self.clear, 0, inner))
        acc = _decoded(dc)
        aligned = products + ([acc] if self.include_acc else [])

        top = self._largest_exponent(m, aligned, es)
        kept = [self._kept(m, i, t, top, field) for i, t in enumerate(aligned)]
        total_width = field + 1 + (len(kept) - 1).bit_length() + 1
        m.submodules.tree = tree = Module()
        total = Signal(signed(total_width), name="kept_sum")
        tree.d.comb += total.eq(_tree_sum(kept))
        negative = total < 0
        magnitude = Signal(total_width, name="kept_magnitude")
        tree.d.comb += magnitude.eq(Mux(negative, -total, total))

        m.submodules.norm = norm = Normalizer(total_width)
        m.d.comb += norm.value.eq(magnitude)
        exact_zero = magnitude == 0
        addends = products + [acc] if self.include_acc else products
        every_negative_zero = _all([t["zero"] & t["sign"] for t in addends])
        sum_sign = Mux(exact_zero, every_negative_zero, negative)
        sum_exp = Signal(es, name="kept_exp")  # exponent of the normalized sum's top bit
        m.d.comb += sum_exp.eq(top - field + total_width - norm.count)
        if self.include_acc:
            m.submodules["round"] = rnd = Rounder(fc, total_width, es)
            m.d.comb += [rnd.sign.eq(sum_sign), rnd.zero.eq(exact_zero), rnd.exp.eq(sum_exp),
                         rnd.sig.eq(norm.result), rnd.sticky.eq(0)]
            rounded = rnd.bits
        else:
            kept_sum = {"sign": sum_sign, "zero": exact_zero, "inf": Const(0, 1), "nan": Const(0, 1),
                        "exp": sum_exp, "sig": norm.result}
            rounded = add_and_round(m, "add", kept_sum, acc, fc, es)

        every = products + [acc]  # specials: the exact sum's rules whatever is aligned
        positive_inf = _any([t["inf"] & ~t["sign"] for t in every])
        negative_inf = _any([t["inf"] & t["sign"] for t in every])
        nan = _any([t["nan"] for t in every]) | (positive_inf & negative_inf)
        inf_bits = golden.round_to(fc, float("inf"))
        result = Signal(fc.bits, name="result")
        with m.If(nan):
            m.d.comb += result.eq(golden.nan_pattern(fc))
        with m.Elif(positive_inf | negative_inf):
            m.d.comb += result.eq(Cat(Const(inf_bits, fc.bits - 1), negative_inf))
        with m.Else():
            m.d.comb += result.eq(rounded)

        m.d.comb += self.acc.eq(inner)
        with m.If(self.en):
            m.d.sync += inner.eq(result)
        with m.Elif(self.clear):
            m.d.sync += inner.eq(0)
        return m

    @staticmethod
    def _largest_exponent(m: Module, terms: list[dict], es) -> Signal:
        """The largest exponent among the nonzero terms (a tree of comparisons); an
        all-zero group leaves it meaningless (every kept term is then 0)."""
        level = [(Mux(t["zero"], 0, t["exp"]), ~t["zero"]) for t in terms]
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                (ex, vx), (ey, vy) = level[i], level[i + 1]
                take_x = vx & (~vy | (ex >= ey))
                nxt.append((Mux(take_x, ex, ey), vx | vy))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        top = Signal(es, name="top_exp")
        m.d.comb += top.eq(level[0][0])
        return top

    def _kept(self, m: Module, i: int, term: dict, top: Signal, field: int):
        """Term ``i`` aligned to ``top``: its magnitude in units of 2^(top - field + 1),
        truncated toward zero (sticky: the last bit ORed with anything dropped), signed."""
        sig = term["sig"]
        ws = len(sig)
        if ws <= field:
            placed, dropped_before = Cat(Const(0, field - ws), sig), Const(0, 1)
        else:
            placed, dropped_before = sig[ws - field:], sig[:ws - field] != 0
        m.submodules[f"align{i}"] = align = Aligner(field, (field + 1).bit_length())
        distance = top - term["exp"]
        m.d.comb += [align.value.eq(Mux(term["zero"], 0, placed)),
                     align.shift.eq(Mux(distance > field, field, distance))]
        magnitude = align.result
        if self.sticky:
            dropped = ~term["zero"] & (align.sticky | dropped_before)
            magnitude = align.result | dropped
        kept = Signal(signed(field + 1), name=f"kept{i}")
        m.d.comb += kept.eq(Mux(term["sign"], -magnitude, magnitude))
        return kept


def _tree_sum(values: list):
    """A balanced adder tree (exact: the caller sizes the result)."""
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def _any(bits: list):
    out = Const(0, 1)
    for b in bits:
        out = out | b
    return out


def _all(bits: list):
    out = Const(1, 1)
    for b in bits:
        out = out & b
    return out
