"""Driving a MAC unit and predicting it: stimulus generation, the golden model's
expected outputs, and simulation with Amaranth's simulator.

A *program* is a list of ``(a, b, en, clear)`` tuples, one per clock cycle (a, b as bit
patterns); a MAC whose accumulator rounds stochastically takes ``(a, b, en, clear,
seed)``, ``seed`` its generator's start state (docs/semantics.md §13).
:func:`expected` gives, for each cycle, the ``acc`` the port contract promises after
that cycle's rising edge; :func:`simulate` gives what the unit does.
"""

from __future__ import annotations

import random

from psum import golden
from psum.formats import FloatFormat

__all__ = ["expected", "simulate", "random_program"]


def unpack(value: int, bits: int, count: int) -> list[int]:
    """The ``count`` patterns of ``bits`` bits packed in ``value``, term 0 lowest."""
    return [(value >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


def _step(mac, acc: int, a: int, b: int, en: int, clear: int, random: int | None = None) -> int:
    from hwgen.dpu import DotProductUnit
    from hwgen.mac import FloatMAC

    if not en:
        return 0 if clear else acc
    base = 0 if clear else acc
    if isinstance(mac, DotProductUnit):
        w = mac.width
        return golden.dpu_step(mac.acc_format, base, unpack(a, mac.inputs.bits, w), unpack(b, mac.weights.bits, w),
                               align_bits=mac.align_bits, include_acc=mac.include_acc, sticky=mac.sticky,
                               inputs=mac.inputs, weights=mac.weights)
    if isinstance(mac, FloatMAC):
        return golden.mac_step(mac.acc_format, base, a, b, mac.inputs, mac.weights, mac.product, random)
    fmt = mac.acc_format
    sa = a - (1 << mac.a_bits) if a >> (mac.a_bits - 1) else a
    sb = b - (1 << mac.b_bits) if b >> (mac.b_bits - 1) else b
    return fmt.encode(golden.int_mac_step(fmt, fmt.decode(base), sa, sb))


def expected(mac, program: list[tuple[int, int, int, int]]) -> list[int]:
    """``acc`` after each cycle's edge, per the port contract and the golden model.

    For a chunked MAC the output is the chunked dot product (docs/semantics.md §5) of
    the terms accumulated since the last clear, a pattern of ``chunk_acc``."""
    latency = 1 if mac.pipeline else 0
    stochastic = getattr(mac, "stochastic", False)
    idle = (0, 0, 0, 0, 1) if stochastic else (0, 0, 0, 0)
    stream = [idle] * latency + list(program)
    draws = _Generator() if stochastic else None
    if getattr(mac, "chunk", None):
        return _expected_chunked(mac, stream[:len(program)], draws)
    acc, out = 0, []
    for cycle in range(len(program)):
        a, b, en, clear, *seed = stream[cycle]
        random = draws.step(en, clear, seed[0], mac.acc_format.random_bits) if draws else None
        acc = _step(mac, acc, a, b, en, clear, random)
        out.append(acc)
    return out


class _Generator:
    """A MAC's stochastic-rounding generator, cycle by cycle (docs/semantics.md §13 and
    the port contract): restarts from ``seed`` when ``clear`` acts or while it holds 0
    (after reset); steps at ``en``."""

    def __init__(self):
        self.state, self.start = 0, None

    def step(self, en: int, clear: int, seed: int, bits: int) -> int | None:
        """The random bits of this cycle's rounding (None without ``en``)."""
        if not en:
            if clear:
                self.state = self.start = seed
            return None
        if clear or self.state == 0:
            self.state = self.start = seed
        self.state = golden.stochastic_step(self.state)
        return golden.stochastic_random(self.state, bits)


def _expected_chunked(mac, stream, draws: _Generator | None) -> list[int]:
    terms: list[tuple[int, int]] = []
    out = []
    for a, b, en, clear, *seed in stream:
        if clear:
            terms = []
        if en:
            terms.append((a, b))
        if draws:
            draws.step(en, clear, seed[0], mac.acc_format.random_bits)
        out.append(golden.dot([t[0] for t in terms], [t[1] for t in terms], acc=mac.acc_format,
                              inputs=mac.inputs, weights=mac.weights, product=mac.product,
                              chunk=mac.chunk, chunk_acc=mac.chunk_acc,
                              state=draws.start if draws and terms else None))
    return out


def simulate(mac, program: list[tuple[int, int, int, int]]) -> list[int]:
    """Run ``program`` through ``mac`` in Amaranth's simulator; ``acc`` after each edge."""
    from amaranth.sim import Simulator

    seen: list[int] = []

    async def bench(ctx):
        for a, b, en, clear, *seed in program:
            ctx.set(mac.a, a)
            ctx.set(mac.b, b)
            ctx.set(mac.en, en)
            ctx.set(mac.clear, clear)
            if seed:
                ctx.set(mac.seed, seed[0])
            await ctx.tick()
            seen.append(ctx.get(mac.acc))

    sim = Simulator(mac)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def _interesting(fmt: FloatFormat, rng: random.Random) -> int:
    """A pattern from the corners: zeros, extremes, subnormals, Inf/NaN, ones."""
    values = [0.0, -0.0, 1.0, -1.0, fmt.max_finite, -fmt.max_finite, fmt.min_normal, fmt.min_positive,
              -fmt.min_positive, float("inf"), float("-inf"), float("nan"), fmt.min_normal * (1 - fmt.epsilon)]
    return golden.round_to(fmt, rng.choice(values))


def random_program(mac, n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """``n`` cycles of stimulus that reach every path of a float MAC: uniform patterns
    (NaN, Inf, subnormals included), values of moderate size, products that cancel the
    running sum (massive cancellation, exact zeros), corner values, long runs without
    clear (large exponent differences) and frequent clears."""
    from hwgen.dpu import DotProductUnit
    from hwgen.mac import FloatMAC

    rng = random.Random(seed)
    program = []
    if isinstance(mac, DotProductUnit):
        return _dpu_program(mac, n, rng)
    if not isinstance(mac, FloatMAC):
        for _ in range(n):
            a = rng.choice([rng.getrandbits(mac.a_bits), (1 << (mac.a_bits - 1)), (1 << (mac.a_bits - 1)) - 1])
            b = rng.choice([rng.getrandbits(mac.b_bits), (1 << (mac.b_bits - 1)), (1 << (mac.b_bits - 1)) - 1])
            program.append((a, b, int(rng.random() < 0.9), int(rng.random() < 0.05)))
        return program
    fa, fb, fc = mac.inputs, mac.weights, mac.acc_format
    acc, seed = 0, 1
    draws = _Generator() if mac.stochastic else None
    one_b = golden.round_to(fb, 1.0)
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            a, b = rng.getrandbits(fa.bits), rng.getrandbits(fb.bits)
        elif kind < 0.6:
            scale = 2.0 ** rng.randint(-8, 8)
            a = golden.round_to(fa, rng.gauss(0, 1) * scale)
            b = golden.round_to(fb, rng.gauss(0, 1))
        elif kind < 0.85:  # cancel (most of) the running sum
            value = fc.decode(acc)
            if isinstance(value, float):
                value = rng.gauss(0, 1)
            a = golden.round_to(fa, -value * (1 + rng.choice([0, 0, 2.0 ** -rng.randint(1, 30)])))
            b = one_b
        else:
            a, b = _interesting(fa, rng), _interesting(fb, rng)
        en, clear = int(rng.random() < 0.95), int(rng.random() < 0.08)
        bits = None
        if draws:  # a nonzero seed, held for a while, changed now and then
            seed = rng.randrange(1, 1 << 32) if rng.random() < 0.1 else seed
            bits = draws.step(en, clear, seed, fc.random_bits)
        program.append((a, b, en, clear, seed) if draws else (a, b, en, clear))
        acc = _step(mac, acc, a, b, en, clear, bits)
    return program


def _dpu_program(unit, n: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """Stimulus for a dot-product unit: per cycle W terms, each drawn as a float MAC's
    (uniform patterns, moderate values over a spread of scales, corner values), some
    cycles cancelling within the group or against the running sum."""
    fa, fb, fc = unit.inputs, unit.weights, unit.acc_format
    acc, program = 0, []
    one_b = golden.round_to(fb, 1.0)
    for _ in range(n):
        terms = []
        for _ in range(unit.width):
            kind = rng.random()
            if kind < 0.25:
                terms.append((rng.getrandbits(fa.bits), rng.getrandbits(fb.bits)))
            elif kind < 0.85:
                scale = 2.0 ** rng.randint(-10, 6)
                terms.append((golden.round_to(fa, rng.gauss(0, 1) * scale), golden.round_to(fb, rng.gauss(0, 1))))
            else:
                terms.append((_interesting(fa, rng), _interesting(fb, rng)))
        if rng.random() < 0.2 and unit.width > 1:  # cancel the first term with the second
            terms[1] = (terms[0][0] ^ (1 << (fa.bits - 1)), terms[0][1])
        if rng.random() < 0.15:  # cancel (most of) the running sum
            value = fc.decode(acc)
            if not isinstance(value, float):
                terms[0] = (golden.round_to(fa, -value * (1 + rng.choice([0, 2.0 ** -rng.randint(1, 20)]))), one_b)
        a = sum(x << (i * fa.bits) for i, (x, _) in enumerate(terms))
        b = sum(y << (i * fb.bits) for i, (_, y) in enumerate(terms))
        en, clear = int(rng.random() < 0.95), int(rng.random() < 0.1)
        program.append((a, b, en, clear))
        acc = _step(unit, acc, a, b, en, clear)
    return program
