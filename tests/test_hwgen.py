"""hwgen: the pieces against their models, the MACs against the golden model (Amaranth's
simulator), and the exported Verilog under Icarus Verilog."""

import os
import random
import shutil
import subprocess
import sys
from fractions import Fraction

import pytest
from amaranth.sim import Simulator

from hwgen import (Aligner, FloatDecoder, FloatMAC, IntMAC, LeadingZeroCounter, Normalizer, Rounder)
from hwgen.pieces import exponent_shape
from hwgen.verify import expected, random_program, simulate
from psum import golden
from psum.formats import parse

# Cycles per MAC configuration; PSUM_HW_VECTORS=2000 (or more) for the long run.
VECTORS = int(os.environ.get("PSUM_HW_VECTORS", "60"))


def run_comb(dut, cases, drive, read):
    """Apply each case to a combinational component and collect what it reads."""
    out = []

    async def bench(ctx):
        for case in cases:
            drive(ctx, case)
            out.append(read(ctx))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("width", [1, 2, 5, 8])
def test_leading_zero_counter_exhaustive(width):
    dut = LeadingZeroCounter(width)
    values = list(range(1 << width))
    got = run_comb(dut, values, lambda ctx, v: ctx.set(dut.value, v), lambda ctx: ctx.get(dut.count))
    assert got == [LeadingZeroCounter.model(v, width) for v in values]


def test_aligner_and_normalizer():
    rng = random.Random(1)
    dut = Aligner(12, 5)
    cases = [(rng.getrandbits(12), rng.randrange(32)) for _ in range(300)] + [(0xFFF, 12), (1, 0), (0, 31)]
    got = run_comb(dut, cases, lambda ctx, c: (ctx.set(dut.value, c[0]), ctx.set(dut.shift, c[1])),
                   lambda ctx: (ctx.get(dut.result), ctx.get(dut.sticky)))
    assert got == [Aligner.model(v, s, 12) for v, s in cases]
    norm = Normalizer(10)
    values = list(range(1 << 10))
    got = run_comb(norm, values, lambda ctx, v: ctx.set(norm.value, v),
                   lambda ctx: (ctx.get(norm.result), ctx.get(norm.count)))
    assert got == [Normalizer.model(v, 10) for v in values]


@pytest.mark.parametrize("spec", ["bf16", "e4m3", "e3m4:ftz", "e5m2:sat", "e2m0", "e4m7b10"])
def test_decoder_matches_golden_decode_exhaustively(spec):
    fmt = parse(spec)
    dut = FloatDecoder(fmt, exponent_shape(fmt))
    patterns = range(1 << fmt.bits) if fmt.bits <= 12 else random.Random(0).sample(range(1 << fmt.bits), 3000)
    got = run_comb(dut, list(patterns), lambda ctx, b: ctx.set(dut.bits, b),
                   lambda ctx: {k: ctx.get(getattr(dut, k)) for k in ("sign", "zero", "inf", "nan", "exp", "sig")})
    for bits, g in zip(patterns, got):
        want = golden.decode(fmt, bits)
        if isinstance(want, float) and want != want:
            assert g["nan"]
        elif isinstance(want, float) and abs(want) == float("inf"):
            assert g["inf"] and g["sign"] == (want < 0)
        elif want == 0:
            assert g["zero"]
        else:
            value = Fraction(g["sig"]) * Fraction(2) ** (g["exp"] - fmt.man_bits)
            assert (-value if g["sign"] else value) == want and g["sig"] >> fmt.man_bits == 1


@pytest.mark.parametrize("spec", ["e4m7", "e4m7:ftz", "e4m7:sat:rz", "e3m0", "e5m2:rz:ftz", "e8m23", "e4m3b-2:sat"])
def test_rounder_matches_golden_round_to(spec):
    """Exact value = (sig + sticky/4) * 2^(exp - width + 1) with sig's top bit set."""
    fmt, width = parse(spec), 14
    es = exponent_shape(fmt, extra=40)
    dut = Rounder(fmt, width, es)
    rng = random.Random(spec)
    cases = []
    for _ in range(600):
        sig = rng.getrandbits(width - 1) | (1 << (width - 1))
        exp = rng.randint(fmt.emin - fmt.man_bits - 4, fmt.emax + 2)
        # sticky means "below the last bit": only meaningful when sig is wider than the format
        sticky = rng.getrandbits(1) if width >= fmt.man_bits + 3 else 0
        cases.append((rng.getrandbits(1), exp, sig, sticky))
    got = run_comb(dut, cases, lambda ctx, c: [ctx.set(dut.sign, c[0]), ctx.set(dut.exp, c[1]),
                                               ctx.set(dut.sig, c[2]), ctx.set(dut.sticky, c[3])],
                   lambda ctx: ctx.get(dut.bits))
    for (sign, exp, sig, sticky), g in zip(cases, got):
        value = (sig + Fraction(sticky, 4)) * Fraction(2) ** (exp - width + 1)
        want = golden.round_to(fmt, -value if sign else value)
        assert g == want, (spec, sign, exp, sig, sticky, hex(g), hex(want))


# Every mode: bias, subnormals/FTZ, inf/saturate, nearest-even/toward-zero; M = 0 .. 23.
ACC_SPECS = ["fp32", "bf16", "fp16", "e5m10:rz", "e4m7", "e4m7:ftz", "e4m7:sat", "e4m7b10:sat:ftz:rz",
             "e4m3", "e3m4:sat:ftz", "e5m2:rz", "e2m1", "e7m0", "e8m15:ftz", "e6m9b40:sat:rz", "e3m0:sat"]
INPUT_SPECS = ["bf16", "fp16", "e4m3", "e5m2:rz", "e3m4:sat"]


def check_mac(mac, n, seed=0):
    program = random_program(mac, n, seed=seed)
    got, want = simulate(mac, program), expected(mac, program)
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{mac.describe()}: {len(bad)} mismatches, first at cycle {bad[0]}: " \
                    f"{program[bad[0]]} -> {got[bad[0]]:#x}, golden {want[bad[0]]:#x}"


@pytest.mark.parametrize("acc", ACC_SPECS)
@pytest.mark.parametrize("inputs", INPUT_SPECS)
def test_float_mac_matches_golden(inputs, acc):
    check_mac(FloatMAC(inputs, acc), VECTORS, seed=hash((inputs, acc)) % 997)


@pytest.mark.parametrize("inputs, acc, product, pipeline", [
    ("fp32", "fp32", None, False), ("fp32", "e5m10", None, True), ("bf16", "e4m7", "e4m3", False),
    ("bf16", "e5m10:rz", "bf16:rz", True), ("fp16", "e4m7:ftz", "e5m2:sat", False),
    ("e5m2", "e6m9b40:sat:rz", "fp16:ftz", True), ("e4m3", "e3m4", None, True),
])
def test_float_mac_options_match_golden(inputs, acc, product, pipeline):
    check_mac(FloatMAC(inputs, acc, product=product, pipeline=pipeline), 3 * VECTORS)


@pytest.mark.parametrize("inputs, acc, chunk, chunk_acc, pipeline, product", [
    ("bf16", "e4m3", 4, "e5m10", False, None), ("e4m3", "e3m4:sat", 3, "bf16:rz", True, None),
    ("fp16", "e5m4:ftz", 1, "e4m7:sat", False, "e5m2"), ("bf16", "e5m2:rz", 16, "fp32", False, None),
])
def test_chunked_mac_matches_the_golden_chunked_dot_product(inputs, acc, chunk, chunk_acc, pipeline, product):
    check_mac(FloatMAC(inputs, acc, chunk=chunk, chunk_acc=chunk_acc, pipeline=pipeline, product=product),
              3 * VECTORS)


def test_mixed_operand_formats():
    check_mac(FloatMAC("bf16", "e5m7", weights="e4m3"), 3 * VECTORS)


@pytest.mark.parametrize("acc", ["int32", "int24", "int16", "int16:sat", "int12:sat", "int8"])
@pytest.mark.parametrize("pipeline", [False, True])
def test_int_mac_matches_golden(acc, pipeline):
    check_mac(IntMAC(8, 8, acc, pipeline=pipeline), 4 * VECTORS)
    check_mac(IntMAC(4, 6, acc), VECTORS)


def test_port_contract_clear_and_hold():
    mac = FloatMAC("bf16", "e5m10")
    one, two = golden.round_to("bf16", 1.0), golden.round_to("bf16", 2.0)
    minus_zero = golden.round_to("bf16", -0.0)
    program = [(one, two, 1, 0), (one, two, 1, 0), (one, two, 0, 0), (one, one, 1, 1),
               (one, one, 0, 1), (minus_zero, one, 1, 1), (one, two, 0, 0)]
    values = [parse("e5m10").decode(v) for v in simulate(mac, program)]
    assert values == [2, 4, 4, 1, 0, 0, 0]
    assert simulate(mac, program)[5] == 0  # clear with a -0 product: +0 + (-0) = +0


def test_unsupported_formats_are_clear_errors():
    with pytest.raises(ValueError, match=r"acc e9m3: hwgen supports 2 <= E <= 8 and 0 <= M <= 23"):
        FloatMAC("bf16", "e9m3")
    with pytest.raises(ValueError, match="inputs must be a floating-point format, not int8"):
        FloatMAC("int8", "e4m7")
    with pytest.raises(ValueError, match="acc must be a signed integer format, not e4m7"):
        IntMAC(8, 8, "e4m7")


def test_hwgen_does_not_import_torch():
    code = "import sys, hwgen, hwgen.verilog; from hwgen import FloatMAC; FloatMAC(); " \
           "sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog is not installed")


def run_testbench(tmp_path, args, cwd=None):
    """Export, compile and run; the testbench's (exit status, stdout + stderr)."""
    from psum.cli import main

    assert main(["verilog", *args, "-o", str(tmp_path / "mac.v"), "--testbench", "--vectors", "1500"]) == 0
    subprocess.run(["iverilog", "-o", str(tmp_path / "tb"), str(tmp_path / "mac.v"), str(tmp_path / "mac_tb.v")],
                   check=True, cwd=tmp_path)
    return rerun(tmp_path, cwd=cwd)


def rerun(tmp_path, *plusargs, cwd=None):
    proc = subprocess.run(["vvp", "-n", str(tmp_path / "tb"), *plusargs], capture_output=True, text=True,
                          cwd=cwd or tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


@iverilog
@pytest.mark.parametrize("args", [["--inputs", "bf16", "--acc", "e4m7"], ["--int", "8", "--acc", "int32"],
                                  ["--inputs", "e4m3", "--acc", "e5m4:sat:ftz:rz", "--pipeline"],
                                  ["--inputs", "fp16", "--acc", "e6m9", "--product", "bf16"],
                                  ["--int", "8", "--acc", "int16:sat", "--pipeline"],
                                  ["--inputs", "bf16", "--acc", "e4m3", "--chunk", "8", "--chunk-acc", "e5m10"],
                                  ["--inputs", "e4m3", "--acc", "e4m4:sr"],
                                  ["--inputs", "e4m3", "--acc", "e5m3:sr5:ftz", "--pipeline", "--chunk", "4",
                                   "--chunk-acc", "fp16"]])
def test_exported_verilog_passes_its_testbench_under_iverilog(tmp_path, args):
    rc, out = run_testbench(tmp_path, args)
    assert rc == 0 and "PASS: 1500 vectors" in out, out
    assert (tmp_path / "mac.v").read_text().startswith("// mac: ")


@iverilog
def test_testbench_fails_with_exit_status_1_on_a_wrong_vector(tmp_path):
    run_testbench(tmp_path, ["--inputs", "bf16", "--acc", "e4m7"])
    lines = (tmp_path / "mac_vectors.hex").read_text().splitlines()
    lines[10] = f"{int(lines[10], 16) ^ 1:x}"  # flip the expected acc's last bit
    (tmp_path / "mac_vectors.hex").write_text("\n".join(lines) + "\n")
    rc, out = rerun(tmp_path)
    assert rc == 1 and "FAIL: 1 of 1500 vectors" in out and "mismatch at vector 10" in out, out
    assert "PASS" not in out


@iverilog
def test_testbench_runs_from_any_directory_and_takes_a_plusarg(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out = run_testbench(tmp_path, ["--int", "8", "--acc", "int24"], cwd=elsewhere)
    assert rc == 0 and "PASS: 1500 vectors" in out, out
    moved = elsewhere / "v.hex"
    (tmp_path / "mac_vectors.hex").rename(moved)
    rc, out = rerun(tmp_path, f"+vectors={moved}", cwd=elsewhere)
    assert rc == 0 and "PASS: 1500 vectors" in out, out


@iverilog
def test_testbench_refuses_a_missing_or_short_vectors_file(tmp_path):
    run_testbench(tmp_path, ["--inputs", "bf16", "--acc", "e4m7"])
    vectors = tmp_path / "mac_vectors.hex"
    lines = vectors.read_text().splitlines()
    vectors.unlink()
    rc, out = rerun(tmp_path)
    assert rc == 1 and f"cannot open the vectors file {vectors}" in out and "mismatch" not in out, out
    vectors.write_text("\n".join(lines[:700]) + "\n")
    rc, out = rerun(tmp_path)
    assert rc == 1 and f"the vectors file {vectors} has no readable vector at line 701 of 1500" in out, out
    assert "mismatch" not in out and "PASS" not in out


def test_verilog_cli_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "psum", "verilog", "--acc", "e4q7", "-o", str(tmp_path / "x.v")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid format spec 'e4q7'" in proc.stderr and "Traceback" not in proc.stderr
