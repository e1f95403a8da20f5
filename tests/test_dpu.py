"""Fused multi-term dot-product units (docs/semantics.md §11): the golden model's
definition on hand-made cases, its reduction to the sequential MAC, and the tensor
emulation (emulator.dpu) bit for bit against it."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.dpu import dpu_matmul, dpu_matmul_reference
from oracles import same_value
from test_matmul import values  # operands over several scales, zeros, optional specials
from psum import golden
from psum.formats import parse

ONE, TWO, HALF = 0x3F80, 0x4000, 0x3F00  # bf16 1, 2, 1/2


def bf16(x) -> int:
    return golden.round_to("bf16", Fraction(x))


def value(acc: str, bits: int):
    return golden.decode(acc, bits)


# -- the definition on cases worked by hand --------------------------------------------------


def test_terms_below_the_kept_bits_are_truncated_toward_zero():
    # Products 1, 2^-6, -2^-6 - 2^-8 with 4 align bits below 2^0: units of 2^-4; 2^-6 -> 0,
    # -(2^-6 + 2^-8) -> -0 (toward zero, not -2^-4 as two's complement truncation would).
    a = [ONE, ONE, ONE]
    b = [ONE, bf16(Fraction(1, 64)), bf16(-Fraction(5, 256))]
    assert value("fp32", golden.dpu_step("fp32", 0, a, b, align_bits=4)) == 1
    exact = 1 + Fraction(1, 64) - Fraction(5, 256)
    assert value("fp32", golden.dpu_step("fp32", 0, a, b, align_bits=None)) == exact
    # Sticky: one more bit (2^-5) set when anything was dropped: 2^-6 -> 2^-5, -(5/256) -> -2^-5.
    assert value("fp32", golden.dpu_step("fp32", 0, a, b, align_bits=4, sticky=True)) == 1


def test_the_accumulator_inside_or_outside_the_alignment():
    # acc = 2^10, products 1 + 2^-7: inside, aligned to 2^10 with 8 bits (units of 4) the
    # products vanish; outside, the products are aligned among themselves and added in full.
    acc = golden.round_to("fp32", 1024)
    a, b = [ONE, ONE], [ONE, bf16(Fraction(1, 128))]
    inside = golden.dpu_step("fp32", acc, a, b, align_bits=8, include_acc=True)
    outside = golden.dpu_step("fp32", acc, a, b, align_bits=8, include_acc=False)
    assert value("fp32", inside) == 1024
    assert value("fp32", outside) == 1024 + 1 + Fraction(1, 128)


def test_one_rounding_of_the_kept_sum():
    # bf16 accumulator: 1 + 3 * 2^-9 kept exactly (8 align bits + sticky) rounds once, to nearest
    # 1 + 2^-7 (the spacing at 1 is 2^-7; 3 * 2^-9 = 0.75 of it).
    a, b = [ONE] * 4, [ONE] + [bf16(Fraction(1, 512))] * 3
    assert value("bf16", golden.dpu_step("bf16", 0, a, b, align_bits=9)) == 1 + Fraction(1, 128)
    # Sequentially each 2^-9 is a quarter of the spacing and vanishes.
    assert value("bf16", golden.dot(a, b, acc="bf16")) == 1


def test_zero_signs_and_specials():
    neg0, inf, ninf = 0x8000, 0x7F80, 0xFF80
    acc_neg0 = golden.round_to("fp32", -0.0)
    assert golden.dpu_step("fp32", acc_neg0, [neg0, ONE], [ONE, neg0], align_bits=3) == acc_neg0  # all -0
    assert golden.dpu_step("fp32", 0, [neg0, ONE], [ONE, neg0], align_bits=3) == 0  # +0 among them
    # 1 - 1 + 2^-8 with 4 align bits: 2^-8 is dropped and the kept sum is exactly zero: +0
    cancel = golden.dpu_step("fp32", acc_neg0, [ONE] * 3, [ONE, bf16(-1), bf16(Fraction(1, 256))], align_bits=4)
    assert cancel == 0
    assert golden.dpu_step("fp32", 0, [inf, ONE], [ONE, ONE], align_bits=3) == golden.round_to("fp32", math.inf)
    assert math.isnan(value("fp32", golden.dpu_step("fp32", 0, [inf, ninf], [ONE, ONE], align_bits=3)))
    assert golden.dpu_step("e4m3:sat", 0, [inf], [ONE], align_bits=3) == golden.round_to("e4m3:sat", math.inf)


def test_promotion_every_chunk():
    # 4096 products of 1 into e5m7 on a 4-wide unit: from 512 on the spacing is 4 and each
    # step's +4 ties to even, so the sum stalls below 4096; promoted into fp32 every 128 terms
    # (each chunk's 128 exact) it reaches 4096.
    ones = [ONE] * 4096
    plain = golden.dpu_dot(ones, ones, acc="e5m7", width=4, align_bits=13)
    promoted = golden.dpu_dot(ones, ones, acc="e5m7", width=4, align_bits=13, chunk=128, chunk_acc="fp32")
    assert value("e5m7", plain) < 4096 and value("fp32", promoted) == 4096
    with pytest.raises(ValueError, match="multiple of width 4"):
        golden.dpu_dot(ones, ones, acc="e5m7", width=4, align_bits=13, chunk=6)


# -- reduction to the sequential MAC ----------------------------------------------------------

patterns = st.integers(0, 0xFFFF).filter(lambda p: (p >> 7) & 0xFF != 0xFF)  # finite bf16


@settings(max_examples=150, deadline=None)
@given(a=st.lists(patterns, min_size=0, max_size=12), data=st.data(),
       acc=st.sampled_from(["fp32", "bf16", "e4m3", "e5m10:rz", "e4m7:sat", "e3m2:ftz"]),
       chunk=st.sampled_from([None, 1, 3]))
def test_width_one_with_every_bit_is_the_mac(a, data, acc, chunk):
    b = data.draw(st.lists(patterns, min_size=len(a), max_size=len(a)))
    want = golden.dot(a, b, acc=acc, chunk=chunk)
    for align_bits in (None, 600):  # 600 bits cover every bf16 product and accumulator
        got = golden.dpu_dot(a, b, acc=acc, width=1, align_bits=align_bits, chunk=chunk)
        assert got == want, (align_bits, hex(got), hex(want))


# -- the tensor emulation against the golden model -------------------------------------------

#: (width, align_bits, include_acc, sticky, acc, inputs): 10 units, Hopper-like ones included.
CONFIGS = [(1, None, True, False, "bf16", "bf16"), (4, 13, True, False, "fp32", "e4m3"),
           (4, 13, False, False, "fp32", "e5m2"), (8, 10, True, True, "e5m10", "bf16"),
           (16, 14, True, False, "fp32", "e4m3"), (32, 20, False, True, "bf16", "bf16"),
           (4, 3, True, False, "e4m3", "bf16"), (8, 0, False, False, "e4m7:rz", "bf16"),
           (2, 6, True, True, "e3m2:sat:ftz", "e4m3"), (3, 25, True, False, "fp16", "fp16")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 3), n=st.integers(1, 3), k=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       specials=st.booleans(), promote=st.booleans())
def test_kernel_equals_reference_equals_golden(cfg, m, n, k, seed, specials, promote):
    width, align_bits, include_acc, sticky, acc, inputs = cfg
    rng = np.random.default_rng(seed)
    a, b = values(rng, (m, k), specials), values(rng, (k, n), specials)
    chunk = 2 * width if promote else None
    kw = dict(width=width, align_bits=align_bits, include_acc=include_acc, sticky=sticky, inputs=inputs, chunk=chunk)
    got = dpu_matmul(a, b, acc, **kw)
    reference = dpu_matmul_reference(a, b, acc, **kw)
    same = (got.view(torch.int64) == reference.view(torch.int64)) | (got.isnan() & reference.isnan())
    assert bool(same.all()), (cfg, got, reference)
    out = parse("fp32" if chunk else acc)
    aq = [[golden.round_to(inputs, float(v)) for v in row] for row in a.tolist()]
    bq = [[golden.round_to(inputs, float(v)) for v in row] for row in b.tolist()]
    for i in range(m):
        for j in range(n):
            want = out.decode(golden.dpu_dot(aq[i], [bq[kk][j] for kk in range(k)], acc=acc, width=width,
                                             align_bits=align_bits, include_acc=include_acc, sticky=sticky,
                                             inputs=inputs, chunk=chunk))
            g = got[i, j].item()
            assert same_value(g if (g == 0 or not math.isfinite(g)) else Fraction(g), want), (cfg, i, j, g, want)


def test_emulation_refuses_what_float64_cannot_carry_exactly():
    x = torch.ones(2, 8)
    with pytest.raises(ValueError, match="not be exact in float64"):
        dpu_matmul(x, x.T, "fp32", width=32, align_bits=48)
    with pytest.raises(ValueError, match="width 1 only"):
        dpu_matmul(x, x.T, "fp32", width=4, align_bits=None)
    with pytest.raises(ValueError, match="multiple of width 4"):
        dpu_matmul(x, x.T, "fp32", width=4, align_bits=13, chunk=6)
    with pytest.raises(ValueError, match="not exact in float32"):
        dpu_matmul(x, x.T, "fp32", width=4, align_bits=13, inputs="e8m26")
    with pytest.raises(ValueError, match="from 1 to 64"):
        dpu_matmul(x, x.T, "fp32", width=65, align_bits=13)


def test_kernel_on_large_blocks_and_threads():
    """Many rows (the kernel's threads, the reference's row blocks): the same bits."""
    rng = np.random.default_rng(5)
    a, b = values(rng, (3000, 96), False), values(rng, (96, 7), False)
    kw = dict(width=16, align_bits=13, include_acc=True, inputs="e4m3", chunk=32)
    got = dpu_matmul(a, b, "fp32", threads=2, **kw)
    reference = dpu_matmul_reference(a, b, "fp32", **kw)
    assert torch.equal(got.view(torch.int64), reference.view(torch.int64))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_kernel_lanes_mixed_with_specials_equal_the_reference(cfg):
    """Nineteen columns (the kernel's blocks of eight, the last partial), NaN and Inf in
    some dot products only: each lane that leaves the fast route is recomputed alone and
    the others keep their fast results, bit for bit the reference's."""
    width, align_bits, include_acc, sticky, acc, inputs = cfg
    rng = np.random.default_rng(sum(map(ord, str(cfg))))
    a, b = values(rng, (5, 37), False), values(rng, (37, 19), False)
    a[1, 3], b[5, 2], b[8, 11], b[9, 11] = math.inf, math.nan, math.inf, -math.inf
    b[:, 17] = -0.0  # a column of -0 products: the signs of zero sums
    for chunk in (None, 2 * width):
        kw = dict(width=width, align_bits=align_bits, include_acc=include_acc, sticky=sticky, inputs=inputs,
                  chunk=chunk)
        got, reference = dpu_matmul(a, b, acc, **kw), dpu_matmul_reference(a, b, acc, **kw)
        same = (got.view(torch.int64) == reference.view(torch.int64)) | (got.isnan() & reference.isnan())
        assert bool(same.all()), (cfg, chunk, (~same).nonzero().tolist())


def test_every_bit_kept_is_one_rounding_of_the_exact_sum():
    """W = 1 with every bit kept: 2^24 + 2 then (1 - 2^-15)(1 + 2^-15) = 1 - 2^-30 in fp32.
    The exact sum 2^24 + 3 - 2^-30 lies below the tie between 2^24 + 2 and 2^24 + 4, so it
    rounds to 2^24 + 2; a double sum first would give the tie itself, and ties to even
    2^24 + 4 (golden.dot, the sequential MAC, agrees)."""
    a = torch.tensor([[2.0 ** 24 + 2, 1 - 2.0 ** -15]])
    b = torch.tensor([[1.0], [1 + 2.0 ** -15]])
    bits = [[golden.round_to("fp32", Fraction(v)) for v in col] for col in (a[0].tolist(), b[:, 0].tolist())]
    assert value("fp32", golden.dot(*bits, acc="fp32", inputs="fp32")) == 2 ** 24 + 2
    for emulation in (dpu_matmul, dpu_matmul_reference):
        for include_acc in (True, False):
            assert emulation(a, b, "fp32", width=1, align_bits=None, include_acc=include_acc,
                             inputs="fp32").item() == 2 ** 24 + 2, (emulation, include_acc)


def test_a_converted_convolution_runs_on_the_unit():
    """EmulatedConv2d with a DotUnit: every output the golden unit's dot product of its
    im2col column (channel, kernel row, kernel column order) and its filter."""
    from torch import nn

    from emulator import AccumConfig, Policy, convert
    from emulator.config import DotUnit

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    cfg = AccumConfig(acc="e5m6", inputs="e4m3", unit=DotUnit(4, 5, sticky=True))
    x = torch.randn(1, 2, 4, 4)
    y = convert(nn.Sequential(conv), Policy(cfg))(x)
    cols = torch.nn.functional.unfold(x, 3)[0].T  # (positions, K)
    w = conv.weight.detach().reshape(3, -1)  # (O, K)
    for pos in range(cols.shape[0]):
        a = [golden.round_to("e4m3", float(v)) for v in cols[pos].tolist()]
        for o in range(3):
            b = [golden.round_to("e4m3", float(v)) for v in w[o].tolist()]
            want = golden.decode("e5m6", golden.dpu_dot(a, b, acc="e5m6", width=4, align_bits=5, sticky=True,
                                                       inputs="e4m3"))
            assert y[0, o].flatten()[pos].item() == float(want)


def test_config_checks_the_unit():
    from emulator import AccumConfig
    from emulator.config import DotUnit

    with pytest.raises(ValueError, match="multiple of the unit's width 8"):
        AccumConfig(acc="fp32", unit=DotUnit(8, 13), chunk=12)
    with pytest.raises(ValueError, match="keeps its products exact"):
        AccumConfig(acc="fp32", product="bf16", unit=DotUnit(8, 13))
    with pytest.raises(ValueError, match="positive integer"):
        DotUnit(0, 13)
    assert str(AccumConfig(acc="fp32", inputs="e4m3", unit=DotUnit(32, 13), chunk=128)).endswith("unit=W32 L13")


# -- the RTL against the golden model ---------------------------------------------------------

#: (inputs, acc, width, align_bits, include_acc, sticky): 8 units for the simulations.
RTL_CONFIGS = [("e4m3", "fp32", 4, 13, True, False), ("e5m2", "fp32", 4, 13, False, False),
               ("bf16", "bf16", 2, 8, True, True), ("e4m3", "e5m6", 8, 10, True, False),
               ("bf16", "e4m7:rz", 3, 6, False, True), ("e4m3", "e3m2:sat:ftz", 2, 4, True, False),
               ("fp16", "fp16", 1, 12, True, False), ("e4m3", "bf16", 4, 0, False, False)]


@pytest.mark.parametrize("cfg", RTL_CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_rtl_equals_golden_in_simulation(cfg):
    from hwgen.dpu import DotProductUnit
    from hwgen.verify import expected, random_program, simulate

    inputs, acc, width, align_bits, include_acc, sticky = cfg
    unit = DotProductUnit(inputs, acc, width=width, align_bits=align_bits, include_acc=include_acc, sticky=sticky)
    program = random_program(unit, 250, seed=width * 31 + align_bits)
    want, got = expected(unit, program), simulate(unit, program)
    bad = [(i, hex(g), hex(w)) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, bad[:5]


# -- the RTL out of psum: Verilog under Icarus, synthesis, the CLI's checks -------------------

iverilog = pytest.mark.skipif(__import__("shutil").which("iverilog") is None, reason="iverilog is not installed")


def _cli_args(cfg) -> list[str]:
    inputs, acc, width, align_bits, include_acc, sticky = cfg
    return (["--inputs", inputs, "--acc", acc, "--width", str(width), "--align-bits", str(align_bits)]
            + ([] if include_acc else ["--acc-apart"]) + (["--sticky"] if sticky else []))


@iverilog
@pytest.mark.parametrize("args", [_cli_args(c) for c in RTL_CONFIGS] + [
    ["--inputs", "e5m2", "--weights", "e4m3", "--acc", "e5m6:sat", "--width", "2", "--align-bits", "9"]],
    ids=lambda a: "-".join(a[1::2] if "--weights" not in a else a))
def test_exported_unit_passes_its_testbench_under_iverilog(tmp_path, args):
    import subprocess

    from psum.cli import main

    assert main(["verilog", *args, "-o", str(tmp_path / "u.v"), "--testbench", "--vectors", "600"]) == 0
    assert "docs/semantics.md §11" in (tmp_path / "u.v").read_text()
    subprocess.run(["iverilog", "-o", str(tmp_path / "tb"), str(tmp_path / "u.v"), str(tmp_path / "u_tb.v")],
                   check=True, cwd=tmp_path)
    proc = subprocess.run(["vvp", "-n", str(tmp_path / "tb")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "PASS: 600 vectors" in proc.stdout, proc.stdout + proc.stderr


def test_synthesized_unit_reports_energy_per_cycle_and_per_mac(capsys):
    import json

    from psum.cli import main

    assert main(["synth", "--inputs", "e4m3", "--acc", "e5m6", "--width", "2", "--align-bits", "8", "--streams",
                 "64", "--k", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs_per_cycle"] == 2 and report["synthesis"]["unit"].startswith("DotProductUnit")
    e = report["energy"][0]
    assert e["energy_per_term_pj"] == pytest.approx(e["energy_per_mac_pj"] / 2)


def test_pack_terms():
    from synth.power import pack_terms

    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint64)
    assert pack_terms(x, 8, 2).tolist() == [[1 | 2 << 8, 3], [4 | 5 << 8, 6]]


@pytest.mark.parametrize("args, message", [
    (["--width", "4"], "needs --align-bits L"),
    (["--align-bits", "4"], "--align-bits applies to dot-product units: give --width W too"),
    (["--width", "4", "--align-bits", "4", "--int", "8"], "not an integer MAC"),
    (["--width", "4", "--align-bits", "4", "--chunk", "8"], "--chunk applies to MACs"),
    (["--width", "65", "--align-bits", "4"], "width must be an integer from 1 to 64"),
])
def test_unit_options_are_checked(capsys, args, message):
    from psum.cli import main

    assert main(["verilog", *args, "-o", "/tmp/psum-never-written.v"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_wide_ports_drive_the_simulator_as_narrow_ones():
    """Streams as (S, K, words) give the same packing and energy as (S, K) where both fit."""
    from hwgen.dpu import DotProductUnit
    from synth.power import pack_terms
    from synth.flow import synthesize
    from synth.liberty import embedded
    from synth.power import estimate_energy, finite_patterns, pack_lanes, uniform_streams

    rng = np.random.default_rng(1)
    x = rng.integers(0, 1 << 40, (128, 5), dtype=np.uint64)
    assert np.array_equal(pack_lanes(x, 40), pack_lanes(x[:, :, None], 40))
    terms = rng.integers(0, 1 << 10, (64, 7), dtype=np.uint64)  # 7 x 10 bits: a term straddles two words
    packed = pack_terms(terms, 10, 7)
    value = int(packed[5, 0, 0]) | int(packed[5, 0, 1]) << 64
    assert value == sum(int(t) << (10 * i) for i, t in enumerate(terms[5]))

    unit = DotProductUnit("e4m3", "e5m6", width=4, align_bits=6)
    r = synthesize(unit)
    finite = finite_patterns(unit.inputs)
    a = pack_terms(uniform_streams(8, finite, 64, 32, seed=1), 8, 4)
    b = pack_terms(uniform_streams(8, finite, 64, 32, seed=2), 8, 4)
    narrow = estimate_energy(r.netlist, embedded(), a, b, unit=unit.describe(), operands="random")
    wide = estimate_energy(r.netlist, embedded(), a[:, :, None], b[:, :, None], unit=unit.describe(),
                           operands="random")
    assert narrow.energy_per_mac_pj == wide.energy_per_mac_pj > 0


@pytest.mark.parametrize("sticky", [False, True])
@pytest.mark.parametrize("align_bits", [0, 5, 13, 40])
def test_kernel_truncation_at_every_distance(sticky, align_bits):
    """A term 2^-d (1 + 2^-7) beside 1 for every distance d, so that the kept multiple's
    position crosses each bit of the double's pattern, its implicit bit and beyond."""
    ds = list(range(0, 75))
    a = torch.tensor([[1.0, -(2.0 ** -d) * (1 + 2 ** -7)] for d in ds], dtype=torch.float64)  # (D, 2)
    b = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    for include_acc in (True, False):
        got = dpu_matmul(a, b, "fp32", width=2, align_bits=align_bits, include_acc=include_acc, sticky=sticky,
                         inputs="fp32")
        for i, d in enumerate(ds):
            pa = [golden.round_to("fp32", float(v)) for v in a[i].tolist()]
            want = golden.decode("fp32", golden.dpu_dot(pa, [golden.round_to("fp32", 1.0)] * 2, acc="fp32", width=2,
                                                        align_bits=align_bits, include_acc=include_acc,
                                                        sticky=sticky, inputs="fp32"))
            assert got[i, 0].item() == float(want), (d, include_acc, got[i, 0].item(), want)
