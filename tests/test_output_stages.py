"""Output stages (hwgen.output) against the golden model, the golden requantizer against
exact rational arithmetic, and the split of a unit's area and energy by part
(synth.components) against the flat figures."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from hwgen import FloatConverter, FloatMAC, IntMAC, Requantizer
from psum import golden
from psum.formats import parse
from synth.components import component_of, instance_path, synthesize_components
from synth.liberty import embedded
from synth.power import estimate_energy, estimate_output_energy, finite_patterns, uniform_streams


def registered(dut, cases, drive, read):
    """Apply each case, clock once, read the registered output."""
    out = []

    async def bench(ctx):
        for case in cases:
            drive(ctx, case)
            await ctx.tick()
            out.append(read(ctx))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def _as_signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


@settings(max_examples=300, deadline=None)
@given(st.integers(-2**40, 2**40), st.integers(0, 2**16 - 1), st.integers(0, 56), st.integers(2, 16))
def test_golden_requantize_is_the_rounded_exact_product(value, multiplier, shift, out_bits):
    exact = Fraction(value * multiplier, 2 ** shift)
    nearest = math.floor(exact + Fraction(1, 2)) if shift else int(exact)  # ties toward +Inf
    top = 2 ** (out_bits - 1) - 1
    assert golden.requantize(value, multiplier, shift, out_bits) == max(-top - 1, min(top, nearest))


def test_golden_requantize_ties_and_refusals():
    assert [golden.requantize(v, 1, 1) for v in (-3, -1, 1, 3, 5)] == [-1, 0, 1, 2, 3]
    assert golden.requantize(1000, 1, 0) == 127 and golden.requantize(-1000, 1, 0) == -128
    for bad in ((1.5, 1, 1), (1, -1, 1), (1, 1, -1), (True, 1, 1)):
        with pytest.raises(ValueError):
            golden.requantize(*bad)


@pytest.mark.parametrize("acc, mbits, out_bits", [("int18", 16, 8), ("int32", 16, 8), ("int12:sat", 8, 4)])
def test_requantizer_matches_golden(acc, mbits, out_bits):
    rq = Requantizer(acc, multiplier_bits=mbits, out_bits=out_bits)
    bits = rq.acc_format.bits
    rng = random.Random(bits)
    cases = [(rng.randrange(-2 ** (bits - 1), 2 ** (bits - 1)), rng.randrange(2 ** mbits),
              rng.randrange(rq.max_shift + 1)) for _ in range(300)]
    lo, hi, mmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1, 2 ** mbits - 1
    cases += [(lo, mmax, 0), (hi, mmax, 0), (lo, mmax, rq.max_shift), (hi, mmax, rq.max_shift), (0, mmax, 3),
              (-3, 1, 1), (-1, 1, 1), (1, 1, 1), (3, 1, 1), (5, 2, 2), (-5, 2, 2), (hi, 1, 1), (lo, 1, 1)]

    def drive(ctx, case):
        value, multiplier, shift = case
        ctx.set(rq.value, value & ((1 << bits) - 1))
        ctx.set(rq.multiplier, multiplier)
        ctx.set(rq.shift, shift)

    got = registered(rq, cases, drive, lambda ctx: _as_signed(ctx.get(rq.out), out_bits))
    assert got == [golden.requantize(*c, out_bits) for c in cases]


def test_requantizer_fixed_point_scale():
    rq = Requantizer("int18")
    for scale in (1.0, 0.5, 1e-3, 3.7e-6, 0.999, 2 - 2 ** -20, 2 ** -10 * (2 - 2 ** -18)):
        m, s = rq.fixed_point(scale)
        assert 2 ** 15 <= m < 2 ** 16 and abs(m / 2 ** s - scale) <= 2 ** -s / 2
    with pytest.raises(ValueError):
        rq.fixed_point(0.0)


@pytest.mark.parametrize("src, dst", [("e4m5", "bf16"), ("e5m2:sat", "e4m3"), ("e3m4:ftz", "bf16"),
                                      ("e6m9", "e4m3:sat:rz")])
def test_float_converter_matches_golden_exhaustively(src, dst):
    fc = FloatConverter(src, dst)
    cases = list(range(1 << parse(src).bits))
    got = registered(fc, cases, lambda ctx, v: ctx.set(fc.value, v), lambda ctx: ctx.get(fc.out))
    assert got == [golden.convert(src, dst, v) for v in cases]


def test_float_converter_from_fp32_on_random_and_special_patterns():
    fc = FloatConverter("fp32", "bf16")
    rng = random.Random(1)
    cases = [rng.getrandbits(32) for _ in range(1500)]
    cases += [0x7F800000, 0xFF800000, 0x7FC00001, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x3F808000, 0x3F818000,
              0x80000000, 0x7F7F8000]  # Inf, NaN, subnormals, max, ties to even both ways, -0, overflow by rounding
    got = registered(fc, cases, lambda ctx, v: ctx.set(fc.value, v), lambda ctx: ctx.get(fc.out))
    assert got == [golden.convert("fp32", "bf16", v) for v in cases]


def test_output_stages_refuse_bad_parameters():
    for bad in (lambda: Requantizer("e4m3"), lambda: Requantizer("int16", multiplier_bits=0),
                lambda: Requantizer("int16", out_bits=1), lambda: FloatConverter("int8", "bf16"),
                lambda: FloatConverter("fp32", "e9m2")):
        with pytest.raises(ValueError):
            bad()


def test_instance_paths_and_parts_of_flattened_cells():
    assert instance_path("$flatten\\add.\\round.\\denorm.$abc$7$blif$7$0") == "add.round.denorm"
    assert instance_path("$abc$7$blif$7$1") == "" and instance_path("$auto$ff.cc:337:slice$641") == ""
    part = component_of({"": "register", "add": "add", "add.round": "round"})
    assert part("$flatten\\add.\\round.\\denorm.$abc$1") == "round"
    assert part("$flatten\\add.$abc$2") == "add" and part("$abc$3") == "register"
    with pytest.raises(KeyError, match="multiply"):
        part("$flatten\\multiply.$abc$4")  # an instance the table does not name is never the top's


@pytest.mark.parametrize("mac", [FloatMAC("bf16", "e4m5"), IntMAC(8, 8, "int18"),
                                 FloatMAC("bf16", "e5m4", chunk=4, chunk_acc="e6m9", product="e5m6"),
                                 Requantizer("int18"), FloatConverter("e4m5", "bf16")],
                         ids=lambda m: m.describe())
def test_parts_cover_every_cell_and_add_up(mac):
    split = synthesize_components(mac)
    table = mac.components()
    assert set(split.parts) == set(table.values())  # every named part holds cells
    assert all(p["cells"] > 0 and p["area_um2"] > 0 for p in split.parts.values())
    assert split.area_um2 == pytest.approx(sum(p["area_um2"] for p in split.parts.values()), abs=1e-3)


def test_energy_by_part_adds_up_to_the_total():
    mac = FloatMAC("bf16", "e4m4")
    split = synthesize_components(mac)
    finite = finite_patterns(mac.inputs)
    a = uniform_streams(16, finite, 64, 24, seed=3)
    b = uniform_streams(16, finite, 64, 24, seed=4)
    e = estimate_energy(split.netlist, embedded(), a, b, unit="", operands="",
                        components=component_of(mac.components()))
    assert set(e.components_pj) == set(mac.components().values()) | {"inputs"}
    assert sum(e.components_pj.values()) == pytest.approx(e.energy_per_mac_pj, abs=5e-5 * len(e.components_pj))
    assert all(v > 0 for v in e.components_pj.values())
    plain = estimate_energy(split.netlist, embedded(), a, b, unit="", operands="")
    assert plain.energy_per_mac_pj == e.energy_per_mac_pj and plain.components_pj is None


def test_output_energy_grows_with_activity_and_refuses_ragged_inputs():
    stage = Requantizer("int18")
    r = synthesize_components(stage)
    rng = np.random.default_rng(0)
    busy = rng.integers(0, 1 << 18, 512).astype(np.uint64)
    quiet = np.full(512, 5, dtype=np.uint64)
    m, s = stage.fixed_point(1e-3)
    e_busy = estimate_output_energy(r.netlist, embedded(), {"value": busy, "multiplier": m, "shift": s},
                                    unit="", operands="")
    e_quiet = estimate_output_energy(r.netlist, embedded(), {"value": quiet, "multiplier": m, "shift": s},
                                     unit="", operands="")
    assert e_busy.energy_per_mac_pj > 10 * e_quiet.energy_per_mac_pj > 0
    with pytest.raises(ValueError, match="one length"):
        estimate_output_energy(r.netlist, embedded(), {"value": busy, "multiplier": busy[:10]}, unit="", operands="")


@pytest.mark.parametrize("acc, chunk, chunk_acc", [("e4m5", None, None), ("e5m7", 4, "e6m9"), ("e3m4:sat", None, None),
                                                   ("fp32", None, None)])
def test_stream_results_are_the_golden_dot_products(acc, chunk, chunk_acc):
    import torch

    from emulator.streams import stream_results

    gen = torch.Generator().manual_seed(0)
    patterns = lambda: ((torch.randn(70 * 29, generator=gen) * 4).to(torch.bfloat16).view(torch.int16)  # noqa: E731
                        .numpy().astype(np.int64) & 0xFFFF).astype(np.uint64).reshape(70, 29)
    a, b = patterns(), patterns()
    got = stream_results(a, b, acc=acc, chunk=chunk, chunk_acc=chunk_acc, block=32)
    kw = {"chunk": chunk, "chunk_acc": chunk_acc} if chunk else {}
    assert [int(g) for g in got] == [golden.dot([int(v) for v in a[s]], [int(v) for v in b[s]], acc=acc, **kw)
                                     for s in range(len(a))]


@pytest.mark.parametrize("acc", ["int12", "int12:sat", "int32"])
def test_integer_stream_results_are_the_golden_dot_products(acc):
    from emulator.streams import stream_results

    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (70, 29)).astype(np.uint64) for _ in range(2))
    got = stream_results(a, b, acc=acc, int_bits=8, block=32)
    fmt = parse(acc)
    signed = lambda v: int(v) - 256 if v >= 128 else int(v)  # noqa: E731
    assert [int(g) for g in got] == [fmt.encode(golden.int_dot([signed(v) for v in a[s]], [signed(v) for v in b[s]],
                                                               acc=acc)) for s in range(len(a))]
    with pytest.raises(ValueError, match="integer accumulator"):
        stream_results(a, b, acc="e4m5", int_bits=8)
