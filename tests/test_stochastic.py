"""Stochastic rounding of the accumulator (docs/semantics.md §13): the format, the golden
model against MPFR's directed roundings, the generator against an independent numpy
implementation, the CPU kernel and the tensor reference against the golden model, the
layers' generator rows, and the RTL (Amaranth's simulator and Icarus Verilog) against
the golden model. The Triton kernel's test is in test_triton.py."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import gmpy2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import AccumConfig, EmulatedConv2d, EmulatedLinear, quantize
from emulator.matmul import _cpu_matmul, check_config, emulated_matmul, matmul_reference
from emulator.stochastic import stochastic_states
from oracles import FORMATS
from psum import golden
from psum.formats import DEFAULT_RANDOM_BITS, FloatFormat, parse
from test_matmul import identical, values

# Accumulators over the modes stochastic rounding meets: subnormals and flush to zero,
# Inf and saturation, a custom bias, M = 0, one random bit and many.
SR_ACCS = ["e4m3:sr", "e5m2:sr4", "e4m4:sr:ftz", "e3m2:sr3:sat", "e4m3:sr12", "bf16:sr", "e2m0:sr2:sat",
           "e5m6b20:sr1", "e4m7:sr16:sat:ftz", "fp32:sr20"]


def stochastic(fmt: FloatFormat, bits: int) -> FloatFormat:
    return FloatFormat(fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.subnormals, fmt.overflow, "stochastic",
                       random_bits=bits)


# -- the format ---------------------------------------------------------------------------


def test_spec_strings_round_trip_and_name_the_random_bits():
    fmt = parse("e4m4:sr")
    assert (fmt.rounding, fmt.random_bits, str(fmt)) == ("stochastic", DEFAULT_RANDOM_BITS, "e4m4:sr")
    assert parse("E5M2:SR12:sat").random_bits == 12 and str(parse("e5m2:sr12:sat")) == "e5m2:sat:sr12"
    assert parse("e4m4:sr8") == fmt and "random_bits=8" in repr(fmt)
    assert parse("e4m4").random_bits is None and "random_bits" not in repr(parse("e4m4"))
    for f in (parse("bf16:sr3"), parse("e3m4b-2:sr32:ftz"), stochastic(parse("e4m3"), 1)):
        assert parse(str(f)) == f
    assert parse("e4m4:sr") != parse("e4m4:sr9") and parse("e4m4:sr") != parse("e4m4")


@pytest.mark.parametrize("spec, message", [
    ("e4m4:sr0", "random_bits must be between 1 and 32, not 0"),
    ("e4m4:sr33", "random_bits must be between 1 and 32"),
    ("e4m4:sr:rz", "conflicting modes for rounding"),
    ("e4m4:sr4:sr5", "conflicting modes for random_bits"),
    ("int8:sr", "unknown mode 'sr'"),
    ("e4m4:srx", "unknown mode 'srx'"),
])
def test_malformed_stochastic_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse(spec)
    assert "\n" not in str(info.value)


def test_random_bits_belong_to_stochastic_rounding_only():
    with pytest.raises(ValueError, match="random_bits is for stochastic rounding, not 'nearest_even'"):
        FloatFormat(4, 4, random_bits=8)
    with pytest.raises(TypeError, match="random_bits must be an integer"):
        FloatFormat(4, 4, rounding="stochastic", random_bits=True)


# -- the golden model -----------------------------------------------------------------------


def mpfr_directed(fmt: FloatFormat, x: Fraction) -> tuple[Fraction, Fraction]:
    """|x| rounded toward zero and away from zero to fmt's precision and quantum by MPFR
    (an unbounded exponent above; with subnormals, gradual underflow; without, the
    binade's own quantum: the flush comes after)."""
    contexts = {}
    for name, mode in (("down", gmpy2.RoundToZero), ("up", gmpy2.RoundAwayZero)):
        if fmt.subnormals:
            contexts[name] = gmpy2.context(precision=fmt.man_bits + 1, round=mode, subnormalize=True,
                                           emin=fmt.emin - fmt.man_bits + 1, emax=gmpy2.get_emax_max())
        else:
            contexts[name] = gmpy2.context(precision=fmt.man_bits + 1, round=mode,
                                           emin=gmpy2.get_emin_min(), emax=gmpy2.get_emax_max())
    mag = abs(x)
    out = []
    for name in ("down", "up"):
        with contexts[name]:
            r = gmpy2.mpfr(gmpy2.mpq(mag.numerator, mag.denominator))
        out.append(Fraction(*r.as_integer_ratio()))
    return out[0], out[1]


def oracle(fmt: FloatFormat, x: Fraction, u: int) -> Fraction | float:
    """§2's stochastic rounding from MPFR's two neighbours: up when the discarded
    fraction, read to R bits, plus u / 2^R reaches 1; then flush and overflow."""
    down, up = mpfr_directed(fmt, x)
    if down != up:
        fraction = (abs(x) - down) / (up - down)
        read = math.floor(fraction * 2 ** fmt.random_bits)
        down = up if read + u >= 2 ** fmt.random_bits else down
    if not fmt.subnormals and down < fmt.min_normal:
        down = Fraction(0)
    negative = x < 0
    if down > fmt.max_finite:
        return (-math.inf if negative else math.inf) if fmt.has_inf else (-fmt.max_finite if negative
                                                                          else fmt.max_finite)
    if down == 0:
        return -0.0 if negative else 0.0
    return -down if negative else down


def same(value, want) -> bool:
    if isinstance(want, float) or isinstance(value, float):
        return isinstance(value, float) and isinstance(want, float) and math.copysign(1, value) == math.copysign(
            1, want) and (value == want or (math.isnan(value) and math.isnan(want)))
    return value == want


SR_FORMATS = [stochastic(f, bits) for f, bits in zip(FORMATS, [1, 2, 3, 5, 8, 13, 20, 32] * 4)]


@given(data=st.data())
@settings(max_examples=300)
def test_round_to_matches_mpfr_directed_roundings(data):
    fmt = data.draw(st.sampled_from(SR_FORMATS), label="fmt")
    scale = data.draw(st.integers(fmt.emin - fmt.man_bits - 3, fmt.emax + 2), label="scale")
    mantissa = data.draw(st.integers(1, 2**40), label="mantissa")
    x = Fraction(mantissa, 2**40) * Fraction(2) ** scale * data.draw(st.sampled_from([1, -1]))
    u = data.draw(st.integers(0, 2**fmt.random_bits - 1), label="u")
    got = golden.decode(fmt, golden.round_to(fmt, x, u))
    assert same(got, oracle(fmt, x, u)), (str(fmt), x, u, got)


@pytest.mark.parametrize("spec", ["e4m3:sr4", "e3m2:sr5:ftz", "e2m1:sr3:sat", "e5m2:sr6"])
def test_mean_over_every_random_value_is_the_value_truncated_to_r_bits(spec):
    """Unbiased up to the truncation: the average of the 2^R results is |x| truncated to
    R bits below the quantum, exactly, for values inside the finite range."""
    fmt = parse(spec)
    rng = random.Random(0)
    for _ in range(200):
        x = Fraction(rng.randrange(1, 2**30), 2**30) * Fraction(2) ** rng.randint(fmt.emin - fmt.man_bits - 1,
                                                                                 fmt.emax - 1)
        down, up = mpfr_directed(fmt, x)
        if up > fmt.max_finite or (not fmt.subnormals and down < fmt.min_normal):
            continue
        results = [golden.decode(fmt, golden.round_to(fmt, x, u)) for u in range(2**fmt.random_bits)]
        mean = sum(Fraction(r) for r in results) / len(results)
        quantum = up - down if up != down else 1
        truncated = down + Fraction(math.floor((x - down) / quantum * 2**fmt.random_bits), 2**fmt.random_bits) \
            * quantum if up != down else x
        assert mean == truncated, (spec, x)


def test_sixty_four_ones_do_not_stagnate():
    """RNE stops at 16 (docs/semantics.md §5's example); stochastic rounding keeps
    adding, and its generator makes the bits reproducible."""
    ones = [0x3F80] * 64
    state = golden.stochastic_state(0, 0, 0)
    result = golden.decode("e4m3", golden.dot(ones, ones, acc="e4m3:sr", state=state))
    assert result == 56 and golden.dot(ones, ones, acc="e4m3:sr", state=state) == golden.dot(
        ones, ones, acc="e4m3:sr", state=state)
    assert golden.decode("e4m3", golden.dot(ones, ones, acc="e4m3")) == 16


def test_golden_errors():
    with pytest.raises(ValueError, match=r"rounds stochastically: give random, an integer in \[0, 2\^8\)"):
        golden.round_to("e4m3:sr", Fraction(1, 3))
    with pytest.raises(ValueError, match=r"random must be an integer in \[0, 2\^4\), not 16"):
        golden.round_to("e4m3:sr4", 1, 16)
    with pytest.raises(ValueError, match="does not round stochastically"):
        golden.round_to("e4m3", 1, 0)
    with pytest.raises(ValueError, match="needs its generator's state"):
        golden.dot([0x3F80], [0x3F80], acc="e4m3:sr")
    with pytest.raises(ValueError, match="state is for a stochastically rounding accumulator"):
        golden.dot([0x3F80], [0x3F80], acc="e4m3", state=5)
    with pytest.raises(ValueError, match="row must be an integer"):
        golden.stochastic_state(0, -1, 0)
    # specials and zeros need no random bits
    assert golden.round_to("e4m3:sr", math.inf) == golden.round_to("e4m3", math.inf)
    assert golden.round_to("e4m3:sr", -0.0) == 0x80


# -- the generator ------------------------------------------------------------------------


def numpy_states(seed: int, rows, cols) -> np.ndarray:
    """§13's start states in numpy uint32 arithmetic (wrapping): an independent reading."""
    with np.errstate(over="ignore"):
        r = np.asarray(rows, dtype=np.uint32)[:, None]
        c = np.asarray(cols, dtype=np.uint32)[None, :]
        x = np.uint32(0x6A09E667) + np.uint32(seed) * np.uint32(0x9E3779B1) + r * np.uint32(0x85EBCA77) \
            + c * np.uint32(0xC2B2AE3D)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x85EBCA6B)
        x ^= x >> np.uint32(13)
        x *= np.uint32(0xC2B2AE35)
        x ^= x >> np.uint32(16)
    return np.where(x == 0, np.uint32(1), x)


def numpy_step(x: np.ndarray) -> np.ndarray:
    x = x ^ (x << np.uint32(13))
    x = x ^ (x >> np.uint32(17))
    return x ^ (x << np.uint32(5))


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 123456789])
def test_start_states_and_steps_match_an_independent_numpy_generator(seed):
    rows, cols = [0, 1, 2, 65535, 2**31, 2**32 - 1], [0, 3, 7, 4095, 2**32 - 1]
    want = numpy_states(seed, rows, cols)
    torch_states = stochastic_states(seed, torch.tensor(rows), torch.tensor(cols))
    assert (torch_states.numpy().astype(np.uint32) == want).all()
    assert [[golden.stochastic_state(seed, r, c) for c in cols] for r in rows] == want.tolist()
    state = want
    for _ in range(5):
        stepped = numpy_step(state)
        assert [[golden.stochastic_step(int(v)) for v in row] for row in state] == stepped.tolist()
        state = stepped
    assert (state != 0).all()


def test_generator_period_covers_many_distinct_draws():
    state, seen = golden.stochastic_state(0, 0, 0), set()
    for _ in range(4096):
        state = golden.stochastic_step(state)
        seen.add(golden.stochastic_random(state, 12))
    assert len(seen) > 2500  # 4096 draws of 12 bits: about 2590 distinct from a uniform source


# -- the kernels -----------------------------------------------------------------------------


def golden_sr(a: torch.Tensor, b: torch.Tensor, cfg: AccumConfig, rows) -> list[list]:
    """Every output from golden.dot on the inputs' patterns, generator (rows[i], j)."""
    aq = [[golden.round_to(cfg.inputs, float(v)) for v in row] for row in a.double().tolist()]
    bq = [[golden.round_to(cfg.weights, float(v)) for v in row] for row in b.double().tolist()]
    out = cfg.result_format
    return [[out.decode(golden.dot(row, [bq[k][j] for k in range(len(bq))], acc=cfg.acc, inputs=cfg.inputs,
                                   weights=cfg.weights, product=cfg.product, chunk=cfg.chunk,
                                   chunk_acc=cfg.chunk_acc, state=golden.stochastic_state(cfg.seed, r, j)))
             for j in range(b.shape[1])] for r, row in zip(rows, aq)]


configs = st.builds(
    AccumConfig, acc=st.sampled_from(SR_ACCS), inputs=st.sampled_from(["bf16", "e4m3", "e5m2", "fp16"]),
    product=st.sampled_from([None, None, "e5m4", "bf16:rz"]), chunk=st.sampled_from([None, None, 1, 3, 7]),
    chunk_acc=st.sampled_from(["fp32", "e5m7:sat"]), seed=st.sampled_from([0, 1, 2**32 - 1, 99]))


@given(cfg=configs, m=st.integers(1, 4), n=st.integers(1, 5), k=st.integers(0, 30),
       data_seed=st.integers(0, 2**32 - 1), specials=st.booleans())
@settings(max_examples=60, deadline=None)
def test_cpu_kernel_and_tensor_reference_equal_the_golden_model(cfg, m, n, k, data_seed, specials):
    rng = np.random.default_rng(data_seed)
    a, b = values(rng, (m, k), specials).float(), values(rng, (k, n), specials).float()
    got = emulated_matmul(a, b, cfg).double()
    want = golden_sr(a, b, cfg, range(m))
    for i in range(m):
        for j in range(n):
            g = got[i, j].item()
            value = g if (g == 0 or not math.isfinite(g)) else Fraction(g)
            assert same(value, want[i][j]), (str(cfg), i, j, g, want[i][j])
    assert identical(matmul_reference(a, b, cfg), emulated_matmul(a.double(), b.double(), cfg))


def below_a_double_operands() -> tuple[torch.Tensor, torch.Tensor, AccumConfig]:
    """Exact sums just below a double on the truncation grid: 1 - 2^-60 (and its
    negative) is held by float64 as 1 with a TwoSum error of -2^-60; in e4m3's binade
    [1/2, 1) (quantum 1/16) its magnitude truncated to one bit more is 31/32, which
    rounds down to 15/16 when the random bit is 0: 64 generators draw both cases."""
    a = torch.tensor([[1.0, -2.0**-60], [-1.0, 2.0**-60], [2.0**-60, 1.0]])
    return a, torch.ones(2, 64), AccumConfig(acc="e4m3:sr1", inputs="fp32", seed=3)


def test_exact_sums_just_below_a_double_truncate_below_it():
    a, b, cfg = below_a_double_operands()
    got = emulated_matmul(a, b, cfg)
    assert sorted(set(got[0].tolist())) == [0.9375, 1.0] and sorted(set(got[1].tolist())) == [-1.0, -0.9375]
    assert (got[2] == 1.0).all()  # 1 + 2^-60 truncates to 1: never 9/8
    want = golden_sr(a, b, cfg, range(3))
    assert got.tolist() == [[float(v) for v in row] for row in want]
    assert identical(matmul_reference(a, b, cfg), got.double())


@pytest.mark.parametrize("spec", ["e4m4:sr", "e5m3:sr3:ftz", "e4m7:sr16:sat"])
@pytest.mark.parametrize("shape", [(70, 40, 9), (9, 40, 70), (130, 300, 65)])  # lanes on rows, on columns
def test_cpu_kernel_equals_the_tensor_reference_at_size(spec, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * n)
    cfg = AccumConfig(acc=spec, inputs="e4m3", seed=7)
    a, b = values(rng, (m, k), False).float(), values(rng, (k, n), False).float()
    assert identical(_cpu_matmul(quantize(a, "e4m3"), quantize(b, "e4m3"), cfg,
                                 stochastic_states(7, torch.arange(m), torch.arange(n))),
                     matmul_reference(a, b, cfg))


def test_rows_are_counted_along_the_second_to_last_dimension():
    """§13: output (..., i, j) uses generator (i, j), whatever the leading dimensions."""
    rng = np.random.default_rng(3)
    cfg = AccumConfig(acc="e4m3:sr4", inputs="bf16", seed=11)
    a, b = values(rng, (3, 5, 24), False).float(), values(rng, (24, 6), False).float()
    batched = emulated_matmul(a, b, cfg)
    for s in range(3):
        assert identical(batched[s].double(), emulated_matmul(a[s], b, cfg).double())
    assert not identical(batched[0].double(), emulated_matmul(a[0], b, AccumConfig(acc="e4m3:sr4", seed=12)).double())
    vector = emulated_matmul(a[1, 0], b, cfg)  # a 1-D a: row 0
    assert identical(vector.double(), batched[1, 0].double())


def test_layers_give_each_image_the_same_generators_whatever_the_batch():
    torch.manual_seed(0)
    cfg = AccumConfig(acc="e4m3:sr", inputs="e4m3", seed=5)
    conv = EmulatedConv2d(3, 4, 3, padding=1, config=cfg)
    linear = EmulatedLinear(12, 5, config=cfg)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(linear.weight)
    x, v = torch.randn(4, 3, 6, 6), torch.randn(4, 12)
    with torch.no_grad():
        for layer, inputs in ((conv, x), (linear, v)):
            whole = layer(inputs)
            for i in range(4):
                assert torch.equal(layer(inputs[i:i + 1])[0], whole[i])
        # a conv output (image n, channel c, pixel p) is the dot product with generator (p, c)
        cols = torch.nn.functional.unfold(x, 3, padding=1)[0].t()  # (L, K)
        want = emulated_matmul(cols, conv.weight.reshape(4, -1).t(), cfg) + conv.bias
        assert torch.equal(conv(x)[0].reshape(4, -1).t(), want)


@pytest.mark.parametrize("kwargs, message", [
    ({"acc": "e4m4", "inputs": "e4m3:sr"}, "inputs e4m3:sr: stochastic rounding is an accumulator mode"),
    ({"acc": "e4m4", "product": "bf16:sr"}, "product bf16:sr: stochastic rounding is an accumulator mode"),
    ({"acc": "e4m4", "chunk": 4, "chunk_acc": "fp32:sr"}, "chunk_acc fp32:sr: stochastic rounding"),
    ({"acc": "e4m4:sr", "seed": -1}, r"seed must be an integer in \[0, 2\^32\)"),
    ({"acc": "e4m4:sr", "seed": 2**32}, r"seed must be an integer in \[0, 2\^32\)"),
])
def test_configs_refuse_stochastic_rounding_outside_the_accumulator(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AccumConfig(**kwargs)


def test_unit_quantize_and_wide_formats_refuse_stochastic_rounding():
    from emulator.config import DotUnit

    with pytest.raises(ValueError, match="a dot-product unit rounds to nearest or toward zero"):
        AccumConfig(acc="fp32:sr", inputs="e4m3", unit=DotUnit(8, 7))
    with pytest.raises(ValueError, match="quantize's format e4m3:sr: stochastic rounding is an accumulator mode"):
        quantize(torch.ones(3), "e4m3:sr")
    with pytest.raises(ValueError, match=r"M \+ R <= 50 \(here 23 \+ 32\)"):
        check_config(AccumConfig(acc="fp32:sr32"))
    assert AccumConfig(acc="e4m4", seed=9) == AccumConfig(acc="e4m4")  # no generator: the seed means nothing
    assert str(AccumConfig(acc="e4m4:sr", seed=9)).endswith("seed=9")


# -- the hardware -------------------------------------------------------------------------


@pytest.mark.parametrize("acc, kwargs", [
    ("e4m4:sr", {}), ("e5m3:sr4:ftz", {}), ("e4m3:sr12:sat", {}), ("e4m4:sr", {"pipeline": True}),
    ("e4m4:sr3", {"chunk": 4, "chunk_acc": "fp16"}), ("e3m2:sr1", {"product": "e5m3"}),
    ("e2m0:sr2:sat", {}), ("bf16:sr", {"inputs": "bf16"}),
])
def test_rtl_equals_the_golden_model_cycle_by_cycle(acc, kwargs):
    from hwgen.mac import FloatMAC
    from hwgen.verify import expected, random_program, simulate

    kwargs = dict(kwargs)
    mac = FloatMAC(kwargs.pop("inputs", "e4m3"), acc, **kwargs)
    program = random_program(mac, 600, seed=len(acc))
    assert all(len(cycle) == 5 and cycle[4] for cycle in program)
    assert simulate(mac, program) == expected(mac, program)


def test_rtl_restarts_its_generator_at_clear_and_after_reset():
    """Directed: two dot products of the same terms from the same seed give the same
    bits, started by reset or by clear; another seed gives other bits."""
    from hwgen.mac import FloatMAC
    from hwgen.verify import expected, simulate

    mac = FloatMAC("bf16", "e4m3:sr")
    terms = [(0x3F80, 0x3F80, 1, 0, 77)] * 40
    program = terms + [(0x3F80, 0x3F80, 1, 1, 77)] + terms[1:] + [(0x3F80, 0x3F80, 1, 1, 78)] + terms[1:]
    got = simulate(mac, program)
    assert got == expected(mac, program)
    assert got[39] == got[79] != got[119]
    ones = [0x3F80] * 40
    assert got[39] == golden.dot(ones, ones, acc="e4m3:sr", state=77)


def test_hardware_refuses_stochastic_rounding_outside_the_accumulator():
    from hwgen.dpu import DotProductUnit
    from hwgen.mac import FloatMAC

    with pytest.raises(ValueError, match="product bf16:sr: stochastic rounding is an accumulator mode"):
        FloatMAC("e4m3", "e4m4", product="bf16:sr")
    with pytest.raises(ValueError, match="chunk_acc fp32:sr: stochastic rounding"):
        FloatMAC("e4m3", "e4m4", chunk=4, chunk_acc="fp32:sr")
    with pytest.raises(ValueError, match="a dot-product unit's acc fp32:sr: stochastic rounding"):
        DotProductUnit("e4m3", "fp32:sr", width=4, align_bits=7)


# -- the command line ---------------------------------------------------------------------


def test_eval_runs_a_stochastic_accumulator_reproducibly_and_records_its_seed(tmp_path_factory, capsys):
    import json

    from conftest import tiny_lenet5
    from psum.cli import main

    root, ckpt = tiny_lenet5(tmp_path_factory.mktemp("sr"), 48, 3)
    results = {}
    for seed in ("1", "1", "2"):
        args = ["eval", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), "--quiet", "--json",
                "--no-baselines", "--acc", "e3m2:sr2", "--inputs", "e4m3", "--sr-seed", seed]
        assert main(args) == 0
        (row,) = json.loads(capsys.readouterr().out)["results"]
        results.setdefault(seed, []).append(row)
    first, again = results["1"]
    assert first["policy"] == "acc=e3m2:sr2 inputs=e4m3 seed=1" and results["2"][0]["policy"].endswith("seed=2")
    assert first["correct"] == again["correct"] and first["total"] == 48


def test_gate_level_netlist_computes_the_golden_model_and_its_generator_switches(monkeypatch):
    """The synthesized stochastic MAC (Yosys, the embedded library) runs a program with
    seeds bit for bit as the golden model; the power simulation drives each lane's
    seed, so the generator toggles (with seed 0 it would sit still)."""
    from hwgen.mac import FloatMAC
    from hwgen.verify import expected, random_program
    from synth import power
    from synth.flow import synthesize
    from synth.liberty import embedded
    from synth.netlist import GateSimulator, Netlist
    from synth.power import pack_lanes

    mac = FloatMAC("e4m3", "e3m2:sr3")
    result = synthesize(mac)
    program = random_program(mac, 300, seed=8)
    sim = GateSimulator(Netlist(result.netlist, embedded()), 1)
    seen = []
    for a, b, en, clear, seed in program + [(0, 0, 0, 0, 1)]:
        ports = {name: pack_lanes(np.full((64, 1), value, dtype=np.uint64), len(sim.net.ports[name][1]))[0]
                 for name, value in (("a", a), ("b", b), ("seed", seed))}
        ports |= {"en": [sim.ones if en else sim.zero], "clear": [sim.ones if clear else sim.zero]}
        sim.step(ports, sim.ones)
        seen.append(sum(int(bit) << i for i, bit in enumerate(sim.read("acc")[:, 0] & np.uint64(1))))
    assert seen[1:] == expected(mac, program)

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (128, 16), dtype=np.uint64), rng.integers(0, 256, (128, 16), dtype=np.uint64)
    driven = power.estimate_energy(result.netlist, embedded(), a, b, unit=mac.describe(), operands="uniform")
    monkeypatch.setattr(power, "_lane_seeds", lambda lanes: np.zeros(lanes, dtype=np.uint64))
    still = power.estimate_energy(result.netlist, embedded(), a, b, unit=mac.describe(), operands="uniform")
    assert driven.switching_pj > still.switching_pj


def test_training_sees_the_stochastic_bits_and_the_float_gradient():
    """docs/semantics.md §12 with §13: the training forward is inference's bits (same
    generators), the backward the float layer's gradient."""
    torch.manual_seed(1)
    cfg = AccumConfig(acc="e4m3:sr3", inputs="bf16", seed=4)
    for layer, x in ((EmulatedConv2d(2, 3, 3, config=cfg), torch.randn(2, 2, 5, 5)),
                     (EmulatedLinear(10, 4, config=cfg), torch.randn(3, 10))):
        torch.nn.init.normal_(layer.weight, std=0.5)
        with torch.no_grad():
            want = layer(x)
        x = x.clone().requires_grad_(True)
        y = layer(x)
        assert torch.equal(y.detach(), want)
        y.square().sum().backward()  # dL/dy = 2y, through the float layer
        float_x = x.detach().clone().requires_grad_(True)
        (layer._float(float_x, layer.weight.detach(), layer.bias.detach()) * (2 * y.detach())).sum().backward()
        assert torch.allclose(x.grad, float_x.grad)
