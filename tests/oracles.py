"""Independent oracles and the one list of formats the tests run over.

The oracles do not call psum's rounding: MPFR (through gmpy2) rounds exact rationals,
ml_dtypes casts to its standard small formats.
"""

from __future__ import annotations

import math
from fractions import Fraction

import gmpy2

from psum.formats import FloatFormat, parse

# One list drives the tests: every mode (bias, subnormals/FTZ, inf/saturate, both
# roundings) on formats from 2 to 8 exponent bits and 0 to 23 mantissa bits.
FORMAT_SPECS = [
    "fp32", "bf16", "fp16", "tf32", "e4m3", "e5m2", "e3m4",
    "e2m1", "e2m0:sat", "e3m0", "e4m7", "e4m7:rz", "e4m7:ftz", "e4m7:sat", "e4m7b10",
    "e4m7b-3:sat:rz", "e5m10:ftz:rz", "e5m10b20:sat:ftz", "e6m9", "e6m12:rz",
    "e7m0", "e7m16:sat", "e8m15:ftz", "e8m23:rz", "e3m4:sat:ftz:rz", "e5m2:rz",
    "e4m3:sat", "e8m0:ftz", "e5m18b12", "e3m20b-1:sat",
]
FORMATS = [parse(s) for s in FORMAT_SPECS]
SMALL_FORMATS = [f for f in FORMATS if f.bits <= 12]


def _context(fmt: FloatFormat) -> gmpy2.context:
    rnd = gmpy2.RoundToNearest if fmt.rounding == "nearest_even" else gmpy2.RoundToZero
    if not fmt.subnormals:  # round with an unbounded exponent; flushing comes after
        return gmpy2.context(precision=fmt.man_bits + 1, round=rnd,
                             emin=gmpy2.get_emin_min(), emax=gmpy2.get_emax_max())
    # MPFR writes x = m * 2^e with 1/2 <= m < 1, one more than the IEEE exponent.
    return gmpy2.context(precision=fmt.man_bits + 1, round=rnd, subnormalize=True,
                         emin=fmt.emin - fmt.man_bits + 1, emax=fmt.emax + 1)


def mpfr_round(fmt: FloatFormat, x: Fraction | float) -> Fraction | float:
    """``x`` (finite) rounded into ``fmt`` by MPFR: a Fraction, or a float for zeros and
    Inf. Flush-to-zero and saturation are applied to MPFR's result as the contract says.
    """
    negative = x < 0 or (isinstance(x, float) and math.copysign(1.0, x) < 0)
    with _context(fmt):
        exact = Fraction(x)
        r = gmpy2.mpfr(gmpy2.mpq(int(exact.numerator), int(exact.denominator)))
    if gmpy2.is_infinite(r):
        if fmt.overflow == "saturate":
            return -fmt.max_finite if negative else fmt.max_finite
        return -math.inf if negative else math.inf
    value = Fraction(*r.as_integer_ratio())
    if not fmt.subnormals and abs(value) < fmt.min_normal:
        value = 0
    if abs(value) > fmt.max_finite:  # only with the unbounded (FTZ) context
        if fmt.has_inf and fmt.rounding == "nearest_even":
            return -math.inf if negative else math.inf
        value = fmt.max_finite
    if value == 0:
        return -0.0 if negative else 0.0
    return -abs(value) if negative else abs(value)


def mpfr_fma(fmt: FloatFormat, a, b, c) -> Fraction | float:
    """``a * b + c`` (finite exact values) correctly rounded into ``fmt`` by MPFR's fma."""
    a, b, c = Fraction(a), Fraction(b), Fraction(c)
    mpq = lambda q: gmpy2.mpq(int(q.numerator), int(q.denominator))  # noqa: E731
    exact = mpq(a) * mpq(b) + mpq(c)
    if exact == 0:
        return None  # zero sign rules are tested separately
    return mpfr_round(fmt, Fraction(int(exact.numerator), int(exact.denominator)))


def same_value(x, y) -> bool:
    """Equal including the sign of zero, and NaN equal to NaN."""
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    if isinstance(y, float) and math.isnan(y):
        return False
    if x == 0 and y == 0:
        return math.copysign(1.0, float(x)) == math.copysign(1.0, float(y))
    return x == y


def neighbours(fmt: FloatFormat):
    """Every finite non-negative value of ``fmt``, in increasing order (small formats)."""
    values = []
    for bits in range(1 << (fmt.bits - 1)):
        v = fmt.decode(bits)
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            continue
        values.append(Fraction(v))
    return sorted(set(values))
