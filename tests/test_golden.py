"""The golden model against independent oracles: MPFR (gmpy2) and exhaustive sweeps."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracles import FORMATS, SMALL_FORMATS, mpfr_fma, mpfr_round, neighbours, same_value
from psum import golden
from psum.formats import parse


def random_exact_values(fmt, rng: random.Random, n: int) -> list[Fraction]:
    """Exact rationals spread over (and beyond) the format's range: long dyadic
    significands, non-dyadic fractions, and values next to the format's breakpoints."""
    lo, hi = fmt.emin - fmt.man_bits - 3, fmt.emax + 3
    values = []
    for _ in range(n):
        e = rng.randint(lo, hi)
        kind = rng.randrange(3)
        if kind == 0:  # up to 70 significant bits
            bits = rng.randint(1, 70)
            value = Fraction(rng.getrandbits(bits) | (1 << (bits - 1)), 1 << (bits - 1)) * Fraction(2) ** e
        elif kind == 1:  # not dyadic
            value = Fraction(rng.randint(1, 10**6), rng.randint(1, 10**6) * 2 + 1) * Fraction(2) ** e
        else:  # a grid point or midpoint of the format, nudged by 0 or a tiny amount
            quantum = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits - 1)
            k = rng.randint(1 << (fmt.man_bits + 1), (1 << (fmt.man_bits + 2)) - 1)
            value = k * quantum + rng.choice([0, 0, 1, -1]) * quantum / (1 << rng.randint(1, 40))
        values.append(-value if rng.random() < 0.5 else value)
    return values


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_round_to_matches_mpfr(fmt):
    rng = random.Random(str(fmt))
    for x in random_exact_values(fmt, rng, 3000):
        got = fmt.decode(golden.round_to(fmt, x))
        want = mpfr_round(fmt, x)
        assert same_value(got, want), f"{fmt}: round({x}) = {got}, MPFR says {want}"


@given(data=st.data())
def test_round_to_matches_mpfr_hypothesis(data):
    fmt = data.draw(st.sampled_from(FORMATS), label="fmt")
    x = data.draw(st.fractions(), label="x")
    scale = data.draw(st.integers(fmt.emin - fmt.man_bits - 4, fmt.emax + 4), label="scale")
    x = x * Fraction(2) ** scale
    assert same_value(fmt.decode(golden.round_to(fmt, x)), mpfr_round(fmt, x))


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=str)
def test_exhaustive_encodings_and_midpoints(fmt):
    """Every pattern decodes and re-encodes to itself; every midpoint between two
    neighbouring values, and the points just beside it, round as MPFR says."""
    for bits in range(1 << fmt.bits):
        value = fmt.decode(bits)
        again = golden.round_to(fmt, value)
        if isinstance(value, float) and math.isnan(value):
            assert again == golden.nan_pattern(fmt)
        elif value == 0:
            assert fmt.decode(again) == 0 and same_value(fmt.decode(again), value)
        else:
            assert again == bits, f"{fmt}: pattern {bits:#x} -> {value} -> {again:#x}"
    values = neighbours(fmt)
    values.append(values[-1] + (values[-1] - values[-2]))  # first value past the top
    for lo, hi in zip(values, values[1:]):
        mid = (lo + hi) / 2
        for x in (mid, mid - (hi - lo) / 1024, mid + (hi - lo) / 1024, hi - (hi - lo) / 2**30):
            for signed in (x, -x):
                got = fmt.decode(golden.round_to(fmt, signed))
                assert same_value(got, mpfr_round(fmt, signed)), f"{fmt}: {signed}"


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=str)
def test_decoded_values_are_ordered_like_patterns(fmt):
    finite = [fmt.decode(b) for b in range(1 << (fmt.bits - 1))]
    finite = [Fraction(v) for v in finite if not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))]
    assert finite == sorted(finite)
    if fmt.subnormals:
        assert len(set(finite)) == len(finite)


def test_specials():
    bf16 = parse("bf16")
    assert bf16.decode(golden.round_to(bf16, math.inf)) == math.inf
    assert math.isnan(bf16.decode(golden.round_to(bf16, math.nan)))
    assert golden.round_to(bf16, -0.0) == 0x8000 and golden.round_to(bf16, 0) == 0
    assert golden.round_to(bf16, Fraction(-1, 2**200)) == 0x8000  # underflow keeps the sign
    sat = parse("e4m3:sat")
    assert sat.decode(golden.round_to(sat, -math.inf)) == -480
    assert sat.decode(golden.round_to(sat, math.nan)) == 480  # no NaN code: largest code
    assert parse("e5m0").decode(golden.round_to("e5m0", math.nan)) == math.inf
    assert golden.round_to("e4m7:rz", 10**9) == parse("e4m7").exp_mask - (1 << 7) + 127


def test_flush_to_zero_rounds_first_then_flushes():
    ftz = parse("e4m3:ftz")  # min normal 2^-6, quantum just below it 2^-10
    below = Fraction(1, 64) - Fraction(1, 1024)  # largest value of the binade below
    assert ftz.decode(ftz.encode(below)) == 0.0
    assert ftz.decode(ftz.encode(Fraction(1, 64) - Fraction(1, 2048))) == Fraction(1, 64)  # tie -> even
    assert ftz.decode(ftz.encode(Fraction(1, 64) - Fraction(3, 4096))) == 0.0
    assert str(ftz.decode(ftz.encode(-Fraction(1, 100)))) == "-0.0"
    assert parse("e4m3:ftz:rz").decode(parse("e4m3:ftz:rz").encode(Fraction(1, 64) - Fraction(1, 2**20))) == 0
    assert ftz.decode(0b0_0000_101) == 0.0  # a subnormal pattern reads as zero


def test_arithmetic_special_rules():
    inf, nan = math.inf, math.nan
    assert math.isnan(golden.multiply(inf, 0)) and math.isnan(golden.multiply(-0.0, -inf))
    assert golden.multiply(-inf, 2) == -inf
    assert same_value(golden.multiply(-0.0, 3), -0.0) and same_value(golden.multiply(-0.0, -3), 0.0)
    assert math.isnan(golden.add(inf, -inf)) and golden.add(inf, inf) == inf
    assert math.isnan(golden.add(nan, 1)) and golden.add(-inf, 10**30) == -inf
    assert same_value(golden.add(-0.0, -0.0), -0.0)
    assert same_value(golden.add(0.0, -0.0), 0.0) and same_value(golden.add(-0.0, 0.0), 0.0)
    assert same_value(golden.add(Fraction(3, 7), Fraction(-3, 7)), 0.0)
    assert golden.add(Fraction(1, 3), Fraction(1, 6)) == Fraction(1, 2)


def test_mac_step_with_special_operands():
    bf16 = parse("bf16")
    enc = bf16.encode
    nan_acc = golden.mac_step("e4m7", 0, enc(math.inf), enc(0.0))
    assert math.isnan(parse("e4m7").decode(nan_acc))
    assert parse("e4m7").decode(golden.mac_step("e4m7", 0, enc(math.inf), enc(-2.0))) == -math.inf
    sat = parse("e4m7:sat")
    assert sat.decode(golden.mac_step(sat, 0, enc(math.inf), enc(2.0))) == sat.max_finite
    assert sat.decode(golden.mac_step(sat, 0, enc(math.inf), enc(0.0))) == sat.max_finite  # NaN
    # clear with a -0 product: +0 + (-0) = +0
    assert golden.mac_step("e4m7", 0, enc(-0.0), enc(1.0)) == 0
    assert golden.mac_step("e4m7", parse("e4m7").sign_mask, enc(-0.0), enc(1.0)) == parse("e4m7").sign_mask


# Cases where adding in float64 and then rounding is wrong: the float64 sum lands on a
# breakpoint of the target format while the exact sum is just beside it.
DOUBLE_ROUNDING_CASES = [
    # (acc format, inputs, acc value, a, b, exact-rounding result)
    # 2^-60 + (1 + 2^-4)^2 = 1 + 2^-3 + 2^-8 + 2^-60: just above a bf16 midpoint -> up
    ("bf16", "bf16", Fraction(1, 2**60), 1 + Fraction(1, 16), 1 + Fraction(1, 16),
     1 + Fraction(1, 8) + Fraction(1, 128)),
    # 291/256 - 2^-60: just below a midpoint whose tie would go up (odd neighbour) -> down
    ("bf16", "bf16", -Fraction(1, 2**60), Fraction(3, 4), Fraction(97, 64), Fraction(145, 128)),
    # toward zero just below a representable value: 1 + 2^-7 - 2^-53 -> 1
    ("bf16:rz", "fp32", Fraction(1), 1 + Fraction(1, 2**23), Fraction(1, 128) * (1 - Fraction(1, 2**23)),
     Fraction(1)),
    ("e4m7:rz", "fp32", Fraction(1), 1 + Fraction(1, 2**23), Fraction(1, 128) * (1 - Fraction(1, 2**23)),
     Fraction(1)),
]


@pytest.mark.parametrize("acc, inputs, c, a, b, want", DOUBLE_ROUNDING_CASES)
def test_double_rounding_cases(acc, inputs, c, a, b, want):
    acc_fmt, in_fmt = parse(acc), parse(inputs)
    got = acc_fmt.decode(golden.mac_step(acc_fmt, acc_fmt.encode(c), in_fmt.encode(a), in_fmt.encode(b), in_fmt))
    assert got == want == mpfr_fma(acc_fmt, a, b, c)
    naive = acc_fmt.decode(acc_fmt.encode(float(c) + float(a) * float(b)))
    assert naive != want  # the case really defeats float64-then-round


MAC_FORMATS = [("bf16", "e4m7"), ("bf16", "e5m10:rz"), ("fp16", "e4m3:sat"), ("e4m3", "e3m4:ftz"),
               ("e5m2", "e6m9b40:sat:rz"), ("fp32", "bf16"), ("bf16", "e8m15:ftz:rz"),
               ("e4m3", "e2m1"), ("fp16", "e7m0")]


@pytest.mark.parametrize("inputs, acc", MAC_FORMATS)
def test_mac_step_matches_mpfr_fma(inputs, acc):
    in_fmt, acc_fmt = parse(inputs), parse(acc)
    rng = random.Random(inputs + acc)
    finite = lambda fmt, bits: not (isinstance(v := fmt.decode(bits), float) and (math.isinf(v) or math.isnan(v)))
    checked = 0
    while checked < 2000:
        a, b, c = rng.getrandbits(in_fmt.bits), rng.getrandbits(in_fmt.bits), rng.getrandbits(acc_fmt.bits)
        if not (finite(in_fmt, a) and finite(in_fmt, b) and finite(acc_fmt, c)):
            continue
        want = mpfr_fma(acc_fmt, in_fmt.decode(a), in_fmt.decode(b), acc_fmt.decode(c))
        if want is None:
            continue
        got = acc_fmt.decode(golden.mac_step(acc_fmt, c, a, b, in_fmt))
        assert same_value(got, want), (inputs, acc, a, b, c)
        checked += 1


def test_unfused_mac_rounds_the_product_first():
    # 1.0625^2 = 1.12890625 -> e4m3 product 1.125 -> acc 1.125, not the fused 1.1289 -> 1.125+...
    bf16 = parse("bf16")
    x = bf16.encode(1 + Fraction(1, 16))
    fused = parse("fp32").decode(golden.mac_step("fp32", 0, x, x))
    unfused = parse("fp32").decode(golden.mac_step("fp32", 0, x, x, product="e4m3"))
    assert fused == (1 + Fraction(1, 16)) ** 2 and unfused == Fraction(9, 8)


def mpfr_dot(a, b, acc, inputs, chunk, chunk_acc):
    """Independent chunked dot product: each step MPFR's fma in the accumulator format."""
    acc, inputs = parse(acc), parse(inputs)
    def run(ks, fmt, terms):
        total = 0.0
        for k in ks:
            x, y = terms(k)
            r = mpfr_fma(fmt, x, y, total)
            total = 0.0 if r is None else r
        return total
    values = lambda k: (inputs.decode(a[k]), inputs.decode(b[k]))
    if chunk is None:
        return run(range(len(a)), acc, values)
    outer_fmt = parse(chunk_acc)
    partials = [run(range(i, min(i + chunk, len(a))), acc, values) for i in range(0, len(a), chunk)]
    return run(range(len(partials)), outer_fmt, lambda k: (partials[k], 1))


@pytest.mark.parametrize("acc, chunk, chunk_acc", [("e4m3", None, "fp32"), ("e4m3", 4, "fp32"),
                                                   ("e5m4:rz", 3, "e5m10"), ("e3m2:sat", 5, "bf16")])
def test_dot_matches_step_by_step_mpfr(acc, chunk, chunk_acc):
    rng = np.random.default_rng(7)
    bf16 = parse("bf16")
    for _ in range(40):
        k = int(rng.integers(1, 40))
        a = [bf16.encode(float(v)) for v in rng.standard_normal(k)]
        b = [bf16.encode(float(v)) for v in rng.standard_normal(k) * 0.3]
        got = golden.dot(a, b, acc=acc, inputs="bf16", chunk=chunk, chunk_acc=chunk_acc)
        out_fmt = parse(chunk_acc if chunk else acc)
        assert out_fmt.decode(got) == mpfr_dot(a, b, acc, "bf16", chunk, chunk_acc)  # -0 == +0 here


def test_dot_errors():
    with pytest.raises(ValueError, match="differ in length"):
        golden.dot([1, 2], [1], acc="e4m7")
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        golden.dot([1], [1], acc="e4m7", chunk=0)


@pytest.mark.parametrize("acc", ["int8", "int12", "int16", "int16:sat", "int12:sat", "int32"])
def test_int_dot_against_fixed_width_numpy(acc):
    fmt = parse(acc)
    rng = np.random.default_rng(fmt.bits)
    for _ in range(50):
        k = int(rng.integers(1, 200))
        a = rng.integers(-128, 128, k)
        b = rng.integers(-128, 128, k)
        got = golden.int_dot(a.tolist(), b.tolist(), acc=fmt)
        if fmt.overflow == "wrap":  # numpy's fixed-width integers wrap on their own
            want = 0
            for x, y in zip(a, b):
                want = (np.int64(want) + np.int64(x) * np.int64(y)).astype(np.int64)
                want = int(((want + (1 << (fmt.bits - 1))) % (1 << fmt.bits)) - (1 << (fmt.bits - 1)))
            if fmt.bits in (8, 16, 32):
                native = {8: np.int8, 16: np.int16, 32: np.int32}[fmt.bits]
                acc_native = native(0)
                with np.errstate(over="ignore"):
                    for x, y in zip(a, b):
                        acc_native = native(acc_native + native(np.int64(x) * np.int64(y) % (1 << fmt.bits)))
                assert int(acc_native) == want
        else:
            want = 0
            for x, y in zip(a, b):
                want = min(max(want + int(x) * int(y), fmt.min_value), fmt.max_value)
        assert got == want


def test_int_dot_chunked():
    a, b = [100] * 10, [100] * 10
    # int16 wraps inside each chunk of 3 (30000 fits, 40000 would not); int32 outside
    assert golden.int_dot(a, b, acc="int16", chunk=3, chunk_acc="int32") == 100000
    assert golden.int_dot(a, b, acc="int16") == parse("int16").fit(100000)
    assert golden.int_dot(a, b, acc="int16:sat", chunk=4, chunk_acc="int32") == 32767 * 2 + 20000


# The worked examples of docs/semantics.md, section 2 (keep the two in step).
SEMANTICS_EXAMPLES = [
    ("e4m3", Fraction(17, 16), 1),
    ("e4m3", Fraction(19, 16), Fraction(5, 4)),
    ("e4m3:rz", Fraction(19, 16), Fraction(9, 8)),
    ("e4m3", Fraction(3, 1024), Fraction(1, 256)),
    ("e4m3", Fraction(1, 1024), 0.0),
    ("e4m3", Fraction(-1, 1024), -0.0),
    ("e4m3", 248, math.inf),
    ("e4m3", Fraction(2479, 10), 240),
    ("e4m3:rz", 1000, 240),
    ("e4m3:sat", 1000, 480),
    ("e4m3:ftz", Fraction(1, 64) - Fraction(1, 2048), Fraction(1, 64)),
    ("e4m3:ftz", Fraction(1, 64) - Fraction(1, 1024), 0.0),
]


@pytest.mark.parametrize("spec, x, want", SEMANTICS_EXAMPLES)
def test_worked_examples_of_the_contract(spec, x, want):
    fmt = parse(spec)
    assert same_value(fmt.decode(golden.round_to(fmt, x)), want)
    assert same_value(mpfr_round(fmt, x), want)
