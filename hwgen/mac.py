"""MAC units: :class:`FloatMAC` and :class:`IntMAC` (Amaranth 0.5 components).

Port contract (every MAC, see docs/hardware.md): the ``sync`` domain's ``clk`` and
synchronous ``rst``; inputs ``a``, ``b`` (bit patterns), ``en`` and ``clear``; output
``acc``, the accumulator register's bit pattern. On a rising edge:

- ``rst``: ``acc <= 0``;
- ``en``: ``acc <= round(base + a * b)`` with ``base = clear ? +0 : acc``;
- ``clear`` without ``en``: ``acc <= +0``;
- otherwise ``acc`` holds.

A stochastically rounding accumulator (docs/semantics.md §13) adds an input ``seed``
(32 bits): its generator restarts from ``seed`` when ``clear`` acts and steps at every
``en``, the rounding taking the stepped state's top R bits.

With ``pipeline=True`` a register sits between the multiplier and the adder: ``a``,
``b``, ``en`` and ``clear`` of one cycle act on ``acc`` one cycle later.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psum import golden
from psum.formats import FloatFormat, IntFormat, not_stochastic, parse
from hwgen.pieces import Aligner, FloatDecoder, Normalizer, Rounder, exponent_shape

__all__ = ["FloatMAC", "IntMAC", "HWGEN_VERSION", "add_and_round", "encode", "exact_product", "xorshift32"]

#: Bumped whenever generated hardware changes; part of synthesis cache keys.
HWGEN_VERSION = "3"

# The formats hwgen supports: the range every part of psum supports.
_EXP_RANGE, _MAN_RANGE = (2, 8), (0, 23)


def _float_format(value, role: str) -> FloatFormat:
    fmt = parse(value)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"{role} must be a floating-point format, not {fmt}")
    if not (_EXP_RANGE[0] <= fmt.exp_bits <= _EXP_RANGE[1] and _MAN_RANGE[0] <= fmt.man_bits <= _MAN_RANGE[1]):
        raise ValueError(f"{role} {fmt}: hwgen supports 2 <= E <= 8 and 0 <= M <= 23")
    return fmt


def xorshift32(value):
    """One step of the xorshift32 generator (docs/semantics.md §13) on a 32-bit value:
    three shift-and-XOR stages, a network of XOR gates."""
    value = value ^ (value << 13)[:32]
    value = value ^ (value >> 17)
    return value ^ (value << 5)[:32]


def _decoded(dec: FloatDecoder) -> dict:
    """A decoder's outputs as an operand: sign, zero, inf, nan, exp, sig."""
    return {"sign": dec.sign, "zero": dec.zero, "inf": dec.inf, "nan": dec.nan, "exp": dec.exp, "sig": dec.sig}


def add_and_round(m: Module, name: str, x: dict, y: dict, fmt: FloatFormat, es, random=None) -> Signal:
    """The adder: ``round_fmt(x + y)`` of two exact operands, as a bit pattern of ``fmt``.

    Operands are dicts (sign, zero, inf, nan, exp, sig) as :class:`FloatDecoder` gives
    them; ``sig`` may have any width (its top bit is the leading 1 of a nonzero finite
    value, ``exp`` that bit's exponent). Order by magnitude -> align the smaller with a
    sticky bit in a window of p + 3 bits (p the widest significand, at least M + 1) ->
    add, or subtract the aligned addend and the sticky bit -> normalize -> round once ->
    special values (NaN, Inf or max, signed zeros: (-0) + (-0) = -0, exact cancellation
    +0). With shift d >= 2 a subtraction cancels at most one leading bit, so the rounding
    position stays two bits above the sticky position; with d <= 1 nothing is shifted out.

    A stochastically rounding ``fmt`` takes ``random`` (R bits, docs/semantics.md §13);
    the window then holds R more bits below the kept ones. The sum with the sticky bit
    subtracted at the window's last place (or added as nothing) lies within one unit of
    that place below the exact sum, so its truncation to any coarser place is the
    exact sum's: the R bits the rounder reads are exact.
    """
    a = Module()  # the adder as one level of the hierarchy (docs/hardware.md, components)
    m.submodules[name] = a
    extra = fmt.random_bits if fmt.rounding == "stochastic" else 0
    p = max(len(x["sig"]), len(y["sig"]), fmt.man_bits + 1 + extra)
    window = p + 3
    xs, ys = Signal(p, name=f"{name}_x_sig"), Signal(p, name=f"{name}_y_sig")
    a.d.comb += [xs.eq(Mux(x["zero"], 0, x["sig"] << (p - len(x["sig"])))),
                 ys.eq(Mux(y["zero"], 0, y["sig"] << (p - len(y["sig"]))))]
    x_first = Signal(name=f"{name}_x_first")  # x is the larger magnitude
    with a.If(x["zero"]):
        a.d.comb += x_first.eq(0)
    with a.Elif(y["zero"]):
        a.d.comb += x_first.eq(1)
    with a.Else():
        a.d.comb += x_first.eq((x["exp"] > y["exp"]) | ((x["exp"] == y["exp"]) & (xs >= ys)))
    big_sig, small_sig = Mux(x_first, xs, ys), Mux(x_first, ys, xs)
    big_exp, small_exp = Mux(x_first, x["exp"], y["exp"]), Mux(x_first, y["exp"], x["exp"])
    big_sign = Mux(x_first, x["sign"], y["sign"])
    small_zero = Mux(x_first, y["zero"], x["zero"])

    a.submodules.align = align = Aligner(window, (window + 1).bit_length())
    distance = big_exp - small_exp
    a.d.comb += [align.value.eq(Cat(Const(0, 3), small_sig)),
                 align.shift.eq(Mux(small_zero | (distance > window), window, distance))]
    big_w = Cat(Const(0, 3), big_sig)
    total = Signal(window + 1, name=f"{name}_sum")
    subtract = x["sign"] ^ y["sign"]
    # one adder: big - small - sticky is big + ~small + (1 - sticky) - 2^window, and its
    # carry into bit `window` is always 1 (big >= small + sticky)
    raw = Signal(window + 1, name=f"{name}_raw")
    a.d.comb += [raw.eq(big_w + (align.result ^ subtract.replicate(window)) + (subtract & ~align.sticky)),
                 total.eq(Cat(raw[:window], raw[window] ^ subtract))]

    norm = Normalizer(window + 1)
    rnd = Rounder(fmt, window + 1, es)
    a.submodules.norm, a.submodules.round = norm, rnd
    exact_zero = total == 0
    a.d.comb += [norm.value.eq(total), rnd.sig.eq(norm.result), rnd.sticky.eq(align.sticky),
                 rnd.exp.eq(big_exp + 1 - norm.count), rnd.zero.eq(exact_zero),
                 rnd.sign.eq(big_sign & ~exact_zero)]
    if extra:
        a.d.comb += rnd.random.eq(random)

    nan = x["nan"] | y["nan"] | (x["inf"] & y["inf"] & (x["sign"] != y["sign"]))
    inf = (x["inf"] | y["inf"]) & ~nan
    inf_sign = Mux(x["inf"], x["sign"], y["sign"])
    inf_bits = golden.round_to(fmt, float("inf"))  # Inf, or max when the format has none
    result = Signal(fmt.bits, name=f"{name}_result")
    with a.If(nan):
        a.d.comb += result.eq(golden.nan_pattern(fmt))
    with a.Elif(inf):
        a.d.comb += result.eq(Cat(Const(inf_bits, fmt.bits - 1), inf_sign))
    with a.Elif(x["zero"] & y["zero"]):
        a.d.comb += result.eq((x["sign"] & y["sign"]) << (fmt.bits - 1))
    with a.Else():
        a.d.comb += result.eq(rnd.bits)
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

    >>> mac = FloatMAC("bf16", "e4m5")
    >>> mac.describe(), str(mac.result_format), len(mac.acc)
    ('FloatMAC inputs=bf16 weights=bf16 acc=e4m5', 'e4m5', 10)
    >>> from hwgen.verilog import to_verilog
    >>> to_verilog(mac).splitlines()[0]
    '// psum_mac: FloatMAC inputs=bf16 weights=bf16 acc=e4m5'
    """

    def __init__(self, inputs="bf16", acc="fp32", *, weights=None, product=None, pipeline=False,
                 chunk=None, chunk_acc="fp32"):
        self.inputs = not_stochastic(_float_format(inputs, "inputs"), "inputs")
        self.weights = self.inputs if weights is None else not_stochastic(_float_format(weights, "weights"), "weights")
        self.acc_format = _float_format(acc, "acc")
        self.product = None if product is None else not_stochastic(_float_format(product, "product"), "product")
        self.pipeline = bool(pipeline)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive integer or None, not {chunk!r}")
        self.chunk = chunk
        self.chunk_acc = not_stochastic(_float_format(chunk_acc, "chunk_acc"), "chunk_acc") if chunk else None
        out_fmt = self.chunk_acc or self.acc_format
        ports = {"a": In(self.inputs.bits), "b": In(self.weights.bits), "en": In(1), "clear": In(1),
                 "acc": Out(out_fmt.bits)}
        if self.stochastic:
            ports["seed"] = In(32)  # the generator's start state, loaded when clear acts
        super().__init__(ports)

    @property
    def stochastic(self) -> bool:
        """Whether the accumulator rounds stochastically (a ``seed`` port, a generator)."""
        return self.acc_format.rounding == "stochastic"

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

    def components(self) -> dict[str, str]:
        """The unit's parts by instance path (synth.components): "" is the top's own
        logic, the accumulator (and chunk) registers with their enable, clear and counter."""
        table = {"": "register", "dec_a": "decode", "dec_b": "decode", "dec_c": "decode",
                 "multiply": "multiplier", "add": "add", "add.align": "align",
                 "add.norm": "normalize", "add.round": "round"}
        if self.product is not None:
            table |= {"product_rounder": "product rounding", "dec_p": "product rounding"}
        if self.stochastic:
            table |= {"generator": "random generator"}
        if self.chunk:
            table |= {"dec_inner": "decode", "dec_outer": "decode", "spill": "outer adder"}
        return table

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
        random = self._generator(m, en, clear) if self.stochastic else None
        result = add_and_round(m, "add", prod, _decoded(dc), fc, es, random)

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

    def _generator(self, m: Module, en, clear):
        """The stochastic rounding's random bits for this step (docs/semantics.md §13):
        the xorshift32 register restarts from ``seed`` when ``clear`` acts (or while it
        holds 0, after reset), each ``en`` steps it, and the rounding takes the top R
        bits of the stepped state. ``seed`` goes with ``clear`` through the pipeline."""
        seed = self.seed
        if self.pipeline:
            seed = Signal(32, name="stage_seed")
            m.d.sync += seed.eq(self.seed)
        m.submodules.generator = gen = Module()
        state = Signal(32, name="generator_state")
        start = Signal(32, name="generator_start")
        stepped = Signal(32, name="generator_next")
        gen.d.comb += [start.eq(Mux(clear | (state == 0), seed, state)), stepped.eq(xorshift32(start))]
        with gen.If(en):  # the register belongs to the generator part too
            gen.d.sync += state.eq(stepped)
        with gen.Elif(clear):
            gen.d.sync += state.eq(seed)
        return stepped[32 - self.acc_format.random_bits:]

    def _multiply(self, m: Module, es) -> tuple[dict, object, object]:
        """The exact product as an operand (rounded to ``product`` when unfused, behind
        the pipeline register when pipelined), and the ``en``/``clear`` that go with it."""
        fa, fb = self.inputs, self.weights
        wp = fa.man_bits + fb.man_bits + 2
        m.submodules.dec_a = da = FloatDecoder(fa, es)
        m.submodules.dec_b = db = FloatDecoder(fb, es)
        m.d.comb += [da.bits.eq(self.a), db.bits.eq(self.b)]
        prod = exact_product(m, "multiply", "product", da, db, es)
        en, clear = self.en, self.clear
        if self.pipeline:  # register the product and the controls
            staged = {}
            for name, value in prod.items():
                staged[name] = Signal.like(value, name=f"stage_{name}")
                m.d.sync += staged[name].eq(value)
            en, clear = Signal(name="stage_en"), Signal(name="stage_clear")
            m.d.sync += [en.eq(self.en), clear.eq(self.clear)]
            prod = staged
        if self.product is not None:
            prod = self._round_product(m, prod, wp, es)
        return prod, en, clear

    def _round_product(self, m: Module, prod: dict, wp: int, es) -> dict:
        """Round the exact product into the product format and read it back (unfused)."""
        bits = encode(m, "product", prod, self.product, wp, es)
        m.submodules.dec_p = dp = FloatDecoder(self.product, es)
        m.d.comb += dp.bits.eq(bits)
        return _decoded(dp)


def exact_product(m: Module, name: str, prefix: str, da: FloatDecoder, db: FloatDecoder, es) -> dict:
    """The exact product of two decoded operands as an operand dict (sign, nan, inf,
    zero, exp, sig: ``M_a + M_b + 2`` bits, its top bit the leading 1 of a nonzero
    finite product), built in submodule ``name`` (the multiplier, one level of the
    hierarchy), its signals named ``{prefix}_*``. IEEE rules: NaN for NaN or Inf x 0,
    Inf for Inf x nonzero, the sign the XOR of the operands'."""
    wp = len(da.sig) + len(db.sig)
    m.submodules[name] = mul = Module()
    raw = Signal(wp, name=f"{prefix}_raw")
    mul.d.comb += raw.eq(da.sig * db.sig)
    top = raw[wp - 1]
    prod = {key: Signal(es if key == "exp" else width, name=f"{prefix}_{key}")
            for key, width in (("sign", 1), ("nan", 1), ("inf", 1), ("zero", 1), ("sig", wp), ("exp", 0))}
    mul.d.comb += [
        prod["sign"].eq(da.sign ^ db.sign),
        prod["nan"].eq(da.nan | db.nan | (da.inf & db.zero) | (da.zero & db.inf)),
        prod["sig"].eq(Mux(top, raw, raw << 1)[:wp]),
        prod["exp"].eq(da.exp + db.exp + top),
        prod["inf"].eq((da.inf | db.inf) & ~prod["nan"]),
        prod["zero"].eq((da.zero | db.zero) & ~prod["nan"] & ~prod["inf"]),
    ]
    return prod


def encode(m: Module, name: str, x: dict, fmt: FloatFormat, width: int, es) -> Signal:
    """``round_fmt(x)`` of one exact operand (a dict as :class:`FloatDecoder` gives it,
    ``sig`` ``width`` bits wide and exact, so no sticky bit), as a bit pattern of
    ``fmt``: NaN -> ``fmt``'s NaN, Inf -> Inf or max; the rounder is ``{name}_rounder``."""
    m.submodules[f"{name}_rounder"] = rnd = Rounder(fmt, width, es)
    m.d.comb += [rnd.sign.eq(x["sign"]), rnd.zero.eq(x["zero"]), rnd.exp.eq(x["exp"]),
                 rnd.sig.eq(x["sig"]), rnd.sticky.eq(0)]
    bits = Signal(fmt.bits, name=f"{name}_bits")
    inf_bits = golden.round_to(fmt, float("inf"))
    with m.If(x["nan"]):
        m.d.comb += bits.eq(golden.nan_pattern(fmt))
    with m.Elif(x["inf"]):
        m.d.comb += bits.eq(Cat(Const(inf_bits, fmt.bits - 1), x["sign"]))
    with m.Else():
        m.d.comb += bits.eq(rnd.bits)
    return bits


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

    def components(self) -> dict[str, str]:
        """The unit's parts by instance path (synth.components); "" is the register."""
        return {"": "register", "multiply": "multiplier", "add": "add"}

    def elaborate(self, platform):
        m = Module()
        fmt = self.acc_format
        m.submodules.multiply = mul = Module()  # the hierarchy's components: multiply, add
        product = Signal(signed(self.a_bits + self.b_bits), name="product")
        mul.d.comb += product.eq(self.a.as_signed() * self.b.as_signed())
        en, clear = self.en, self.clear
        if self.pipeline:
            staged = Signal.like(product, name="stage_product")
            en, clear = Signal(name="stage_en"), Signal(name="stage_clear")
            m.d.sync += [staged.eq(product), en.eq(self.en), clear.eq(self.clear)]
            product = staged
        acc_reg = Signal(signed(fmt.bits), name="acc_reg")
        base = Signal.like(acc_reg, name="base")  # clear ? 0 : acc, with the register (as FloatMAC)
        m.d.comb += base.eq(Mux(clear, 0, acc_reg))
        m.submodules.add = add = Module()
        total = Signal(signed(max(fmt.bits, len(product)) + 1), name="sum")
        nxt = Signal(signed(fmt.bits), name="sum_fitted")
        add.d.comb += total.eq(base + product)
        m.d.comb += self.acc.eq(acc_reg)
        if fmt.overflow == "saturate":
            add.d.comb += nxt.eq(Mux(total > fmt.max_value, fmt.max_value,
                                     Mux(total < fmt.min_value, fmt.min_value, total)))
        else:
            add.d.comb += nxt.eq(total[:fmt.bits])
        with m.If(en):
            m.d.sync += acc_reg.eq(nxt)
        with m.Elif(clear):
            m.d.sync += acc_reg.eq(0)
        return m
