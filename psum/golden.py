"""The golden model: psum's arithmetic, exactly, in pure Python.

This module is the executable form of ``docs/semantics.md``. It is slow on purpose:
every intermediate result is an exact rational (``int`` / ``Fraction``) and rounding
happens in one place only, :func:`round_to`. The fast emulator kernels and the
generated hardware are tested against it.

Values
------
An *exact value* is a :class:`~fractions.Fraction` (or ``int``) for finite numbers and
a ``float`` for what a Fraction cannot carry: ``-0.0``, ``+-inf`` and ``nan``
(``0.0`` and ``Fraction(0)`` are both +0). :func:`decode` returns finite nonzero values
as Fractions and zeros/specials as floats.

Bit patterns
------------
Formats are :class:`psum.formats.FloatFormat` / :class:`~psum.formats.IntFormat`;
values stored in a format are carried as non-negative ``int`` bit patterns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from psum.formats import FloatFormat, IntFormat, parse

__all__ = [
    "round_to",
    "decode",
    "stochastic_state",
    "stochastic_step",
    "stochastic_random",
    "multiply",
    "add",
    "mac_step",
    "dot",
    "dpu_step",
    "dpu_dot",
    "int_mac_step",
    "int_dot",
    "nan_pattern",
    "requantize",
    "convert",
    "tflite_multiplier",
    "tflite_rescale",
    "tflite_round",
    "tflite_activation_range",
    "tflite_average",
    "tflite_add",
]

_FINITE, _INF, _NAN = "finite", "inf", "nan"


def _split(x) -> tuple[str, int, Fraction]:
    """(kind, sign bit, magnitude) of an exact value."""
    if isinstance(x, float):
        if math.isnan(x):
            return _NAN, 0, Fraction(0)
        sign = 1 if math.copysign(1.0, x) < 0 else 0
        if math.isinf(x):
            return _INF, sign, Fraction(0)
        return _FINITE, sign, abs(Fraction(x))
    if isinstance(x, bool) or not isinstance(x, (int, Fraction)):
        raise TypeError(f"exact values are int, Fraction or float, not {x!r}")
    x = Fraction(x)
    return _FINITE, 1 if x < 0 else 0, abs(x)


def _join(kind: str, sign: int, mag: Fraction):
    if kind == _NAN:
        return math.nan
    if kind == _INF:
        return -math.inf if sign else math.inf
    if mag == 0:
        return -0.0 if sign else 0.0
    return -mag if sign else mag


def _pow2(e: int) -> Fraction:
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def _floor_log2(mag: Fraction) -> int:
    """Exponent of the leading bit of ``mag > 0``: ``2^e <= mag < 2^(e+1)``."""
    num, den = mag.numerator, mag.denominator
    e = num.bit_length() - den.bit_length()
    # 2^e <= mag  <=>  num * 2^-e >= den
    if (num << max(0, -e)) < (den << max(0, e)):
        e -= 1
    return e


def nan_pattern(fmt: FloatFormat) -> int:
    """The pattern every NaN result is written as.

    ``0 11..1 10..0`` (positive quiet NaN) where the format has NaN; formats without
    a NaN code write the largest positive pattern instead: +Inf for ``M = 0`` with
    ``overflow="inf"``, +max finite for ``overflow="saturate"``.
    """
    if fmt.has_nan:
        return fmt.exp_mask | (1 << (fmt.man_bits - 1))
    if fmt.has_inf:
        return fmt.exp_mask
    return fmt.exp_mask | fmt.man_mask


def _max_pattern(fmt: FloatFormat) -> int:
    """Pattern of +max finite: all-ones mantissa in the top finite exponent code."""
    top_exp = (1 << fmt.exp_bits) - (2 if fmt.has_inf else 1)
    return (top_exp << fmt.man_bits) | fmt.man_mask


def round_to(fmt: FloatFormat | IntFormat | str, x, random: int | None = None) -> int:
    """Bit pattern of the exact value ``x`` rounded into ``fmt`` (docs/semantics.md §2).

    For a finite nonzero ``x``: round ``|x|`` to ``M + 1`` significant bits at the
    quantum of its binade (``2^(max(e, emin) - M)`` with subnormals; ``2^(e - M)``
    without), ties to even or toward zero as the format says, or stochastically
    (docs/semantics.md §13): ``|x| / quantum`` truncated to ``R = fmt.random_bits``
    fraction bits, plus ``random / 2^R``, truncated, where ``random`` (needed then,
    and only then) is an integer in ``[0, 2^R)``; then a result below
    the smallest normal flushes to zero when ``subnormals=False``; then a result above
    the largest finite value becomes Inf (``overflow="inf"``, unless rounding toward
    zero) or the largest finite value (toward zero, or ``overflow="saturate"``). Zeros keep the
    sign of ``x``. For an :class:`IntFormat` ``x`` must be an integer and is wrapped
    or saturated.

    >>> round_to("e4m3", 0.3), decode("e4m3", round_to("e4m3", 0.3))  # 0.3 -> 5/16
    (42, Fraction(5, 16))
    >>> hex(round_to("bf16", Fraction(1, 3)))
    '0x3eab'
    """
    fmt = parse(fmt)
    _check_random(fmt, random)
    if isinstance(fmt, IntFormat):
        return fmt.encode(x)
    kind, sign, mag = _split(x)
    sign_bit = fmt.sign_mask if sign else 0
    if kind == _NAN:
        return nan_pattern(fmt)
    if kind == _INF:
        return sign_bit | (fmt.exp_mask if fmt.has_inf else _max_pattern(fmt))
    if mag == 0:
        return sign_bit
    if fmt.rounding == "stochastic" and random is None:
        raise ValueError(f"{fmt} rounds stochastically: give random, an integer in [0, 2^{fmt.random_bits})")

    man_bits = fmt.man_bits
    lead = _floor_log2(mag)
    quantum_exp = (max(lead, fmt.emin) if fmt.subnormals else lead) - man_bits
    scaled = mag / _pow2(quantum_exp)
    n = scaled.numerator // scaled.denominator
    if fmt.rounding == "nearest_even":
        rest = scaled - n
        if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
            n += 1
    elif fmt.rounding == "stochastic":
        fine = scaled * (1 << fmt.random_bits)  # |x| in units of 2^-R quanta
        n = (fine.numerator // fine.denominator + random) >> fmt.random_bits
    if n == 0:
        return sign_bit
    if n == 1 << (man_bits + 1):  # rounding carried into the next binade
        n, quantum_exp = n >> 1, quantum_exp + 1
    if not fmt.subnormals and quantum_exp + man_bits < fmt.emin:
        return sign_bit  # flush: the rounded result is below the smallest normal
    if n * _pow2(quantum_exp) > fmt.max_finite:
        overflow_to_inf = fmt.has_inf and fmt.rounding != "toward_zero"
        return sign_bit | (fmt.exp_mask if overflow_to_inf else _max_pattern(fmt))
    if n >> man_bits:  # normal
        exp_field = quantum_exp + man_bits + fmt.bias
        return sign_bit | (exp_field << man_bits) | (n - (1 << man_bits))
    return sign_bit | n  # subnormal: exponent field 0, quantum 2^(emin - M)


def _check_random(fmt, random) -> None:
    """A given random integer must fit a stochastic rounding; no other rounding takes one."""
    stochastic = isinstance(fmt, FloatFormat) and fmt.rounding == "stochastic"
    if random is None:
        return
    if not stochastic:
        raise ValueError(f"{fmt} does not round stochastically; it takes no random bits")
    if isinstance(random, bool) or not isinstance(random, int) or not 0 <= random < (1 << fmt.random_bits):
        raise ValueError(f"{fmt} rounds stochastically: random must be an integer in "
                         f"[0, 2^{fmt.random_bits}), not {random!r}")


# -- the stochastic-rounding generator (docs/semantics.md §13) ---------------------

_MASK32 = (1 << 32) - 1


def _mix32(x: int) -> int:
    """MurmurHash3's 32-bit finalizer: a bijection of 32-bit words that spreads every
    input bit over the output."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _MASK32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def stochastic_state(seed: int, row: int, col: int) -> int:
    """The generator state a dot product starts from: output ``(row, col)`` of a
    matmul run with ``seed`` (each 0..2^32-1). Never 0, the generator's fixed point.

    >>> hex(stochastic_state(0, 0, 0)), hex(stochastic_state(0, 0, 1))
    ('0x9f45f69', '0x6be268e1')
    """
    for name, value in (("seed", seed), ("row", row), ("col", col)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MASK32:
            raise ValueError(f"{name} must be an integer in [0, 2^32), not {value!r}")
    state = _mix32((0x6A09E667 + seed * 0x9E3779B1 + row * 0x85EBCA77 + col * 0xC2B2AE3D) & _MASK32)
    return state or 1


def stochastic_step(state: int) -> int:
    """The next state of the xorshift32 generator (Marsaglia 2003): ``x ^= x << 13;
    x ^= x >> 17; x ^= x << 5`` on 32 bits. A linear feedback shift register over
    GF(2) with period 2^32 - 1 on the nonzero states."""
    state ^= (state << 13) & _MASK32
    state ^= state >> 17
    return state ^ ((state << 5) & _MASK32)


def stochastic_random(state: int, bits: int) -> int:
    """The ``bits`` random bits a rounding takes from a state: its top bits."""
    return state >> (32 - bits)


def _stochastic_draws(fmt: FloatFormat, state: int | None):
    """The random integers of successive roundings into ``fmt`` from the generator at
    ``state`` (each rounding steps it once first); ``None`` for other roundings."""
    if fmt.rounding != "stochastic":
        if state is not None:
            raise ValueError(f"state is for a stochastically rounding accumulator, not {fmt}")
        while True:
            yield None
    if isinstance(state, bool) or not isinstance(state, int) or not 0 < state <= _MASK32:
        raise ValueError(f"a stochastic accumulator needs its generator's state, an integer in "
                         f"(0, 2^32), not {state!r}")
    while True:
        state = stochastic_step(state)
        yield stochastic_random(state, fmt.random_bits)


def decode(fmt: FloatFormat | IntFormat | str, bits: int):
    """Exact value of the bit pattern ``bits`` of ``fmt`` (see module docstring)."""
    fmt = parse(fmt)
    if isinstance(fmt, IntFormat):
        return fmt.decode(bits)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits < (1 << fmt.bits):
        raise ValueError(f"bit pattern of {fmt} must be an integer in [0, 2^{fmt.bits}), not {bits!r}")
    sign = bits >> (fmt.exp_bits + fmt.man_bits)
    exp_field = (bits & fmt.exp_mask) >> fmt.man_bits
    man = bits & fmt.man_mask
    if fmt.has_inf and exp_field == (1 << fmt.exp_bits) - 1:
        return math.nan if man else _join(_INF, sign, Fraction(0))
    if exp_field == 0:
        if not fmt.subnormals:
            man = 0  # subnormal patterns read as zero in a flush-to-zero format
        mag = man * _pow2(fmt.emin - fmt.man_bits)
    else:
        mag = ((1 << fmt.man_bits) | man) * _pow2(exp_field - fmt.bias - fmt.man_bits)
    return _join(_FINITE, sign, mag)


def multiply(x, y):
    """Exact product of two exact values, with IEEE 754 rules for specials.

    NaN if either is NaN or for Inf x 0; Inf for Inf x nonzero; otherwise exact, and
    the sign of a zero product is the XOR of the operand signs.
    """
    kx, sx, mx = _split(x)
    ky, sy, my = _split(y)
    sign = sx ^ sy
    if _NAN in (kx, ky):
        return math.nan
    if _INF in (kx, ky):
        if (kx == _FINITE and mx == 0) or (ky == _FINITE and my == 0):
            return math.nan
        return _join(_INF, sign, Fraction(0))
    return _join(_FINITE, sign, mx * my)


def add(x, y):
    """Exact sum of two exact values, with IEEE 754 rules for specials.

    NaN if either is NaN or for Inf + (-Inf); Inf if either is Inf. An exactly zero
    sum is -0 only when both addends are -0, else +0 (the IEEE rule for
    round-to-nearest and round-toward-zero).
    """
    kx, sx, mx = _split(x)
    ky, sy, my = _split(y)
    if _NAN in (kx, ky):
        return math.nan
    if kx == _INF and ky == _INF:
        return math.nan if sx != sy else _join(_INF, sx, Fraction(0))
    if kx == _INF or ky == _INF:
        return _join(_INF, sx if kx == _INF else sy, Fraction(0))
    total = (-mx if sx else mx) + (-my if sy else my)
    if total == 0:
        both_negative_zero = sx and sy and mx == 0 and my == 0
        return -0.0 if both_negative_zero else 0.0
    return total


def mac_step(
    acc: FloatFormat | str,
    acc_bits: int,
    a_bits: int,
    b_bits: int,
    a_fmt: FloatFormat | str = "bf16",
    b_fmt: FloatFormat | str | None = None,
    product: FloatFormat | str | None = None,
    random: int | None = None,
) -> int:
    """One multiply-accumulate: ``acc' = round_acc(acc + a * b)`` on bit patterns.

    The product is exact, unless ``product`` names a format: then it is rounded into
    that format first (an unfused MAC). The sum is exact and rounded once into
    ``acc``, with ``random`` when ``acc`` rounds stochastically (:func:`round_to`).
    ``b_fmt`` defaults to ``a_fmt``.
    """
    acc, a_fmt = parse(acc), parse(a_fmt)
    b_fmt = a_fmt if b_fmt is None else parse(b_fmt)
    p = multiply(decode(a_fmt, a_bits), decode(b_fmt, b_bits))
    if product is not None:
        product = parse(product)
        p = decode(product, round_to(product, p))
    return round_to(acc, add(decode(acc, acc_bits), p), random)


def dot(
    a_bits: Sequence[int],
    b_bits: Sequence[int],
    *,
    acc: FloatFormat | str,
    inputs: FloatFormat | str = "bf16",
    weights: FloatFormat | str | None = None,
    product: FloatFormat | str | None = None,
    chunk: int | None = None,
    chunk_acc: FloatFormat | str = "fp32",
    state: int | None = None,
) -> int:
    """One output element of an emulated matmul: a sequential dot product.

    ``acc = +0; for k in order: acc = mac_step(acc, a[k], b[k])`` with ``a`` in
    ``inputs`` and ``b`` in ``weights`` (default: ``inputs``). With ``chunk = C``
    the K terms are split into consecutive chunks of C (the last may be shorter);
    each chunk is accumulated as above from +0 in ``acc``, and the chunk results are
    added in order, exactly, into an outer accumulator in ``chunk_acc`` that starts
    at +0 and is rounded after each addition. Returns the pattern of the result: in
    ``chunk_acc`` when chunked, else in ``acc``.

    A stochastically rounding ``acc`` draws its random bits from the generator that
    starts at ``state`` (:func:`stochastic_state`), stepped once per term, across
    chunks (docs/semantics.md §13).

    Sixty-four bf16 ones (pattern 0x3f80) summed in e4m3 stop at 16: there the spacing
    is 2, and 16 + 1 is a tie that rounds to even.

    >>> decode("e4m3", dot([0x3f80] * 64, [0x3f80] * 64, acc="e4m3"))
    Fraction(16, 1)
    >>> decode("fp32", dot([0x3f80] * 64, [0x3f80] * 64, acc="e4m3", chunk=8, chunk_acc="fp32"))
    Fraction(64, 1)
    """
    if len(a_bits) != len(b_bits):
        raise ValueError(f"dot operands differ in length: {len(a_bits)} and {len(b_bits)}")
    acc = parse(acc)
    inputs = parse(inputs)
    weights = inputs if weights is None else parse(weights)
    draws = _stochastic_draws(acc, state)
    if chunk is None:
        chunks = [range(len(a_bits))]
    else:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
        chunks = [range(i, min(i + chunk, len(a_bits))) for i in range(0, len(a_bits), chunk)]

    def accumulate(ks: range) -> int:
        bits = 0
        for k in ks:
            bits = mac_step(acc, bits, a_bits[k], b_bits[k], inputs, weights, product, next(draws))
        return bits

    if chunk is None:
        return accumulate(chunks[0])
    outer_fmt = parse(chunk_acc)
    outer = 0
    for ks in chunks:
        inner = decode(acc, accumulate(ks))
        outer = round_to(outer_fmt, add(decode(outer_fmt, outer), inner))
    return outer


def _aligned(x, unit: Fraction, sticky: bool):
    """``x`` (finite) truncated toward zero to a multiple of ``unit``; with ``sticky``,
    to a multiple of ``unit / 2`` whose last bit is set when anything below it was
    dropped (round to odd at ``unit / 2``). Zeros pass through with their sign."""
    kind, sign, mag = _split(x)
    if mag == 0:
        return x
    step = unit / 2 if sticky else unit
    scaled = mag / step
    n = scaled.numerator // scaled.denominator
    if sticky and n * step != mag and n % 2 == 0:
        n += 1
    kept = n * step
    return -kept if sign else kept


def dpu_step(acc: FloatFormat | str, acc_bits: int, a_bits: Sequence[int], b_bits: Sequence[int], *,
             align_bits: int | None, include_acc: bool = True, sticky: bool = False,
             inputs: FloatFormat | str = "bf16", weights: FloatFormat | str | None = None) -> int:
    """One step of a fused dot-product unit (docs/semantics.md §11): the group's
    products ``a[i] * b[i]`` (exact) and, with ``include_acc``, the accumulator are
    aligned to the largest exponent among them; each keeps ``align_bits`` bits below
    that exponent's leading bit, the rest truncated toward zero (``sticky``: one more
    bit, set when anything was dropped); the kept terms are added exactly (the
    accumulator, when not aligned, in full) and the sum is rounded once into ``acc``.
    ``align_bits=None`` keeps every bit: one rounding of the exact sum.

    Four bf16 products 1, 2^-9, 2^-9, 2^-9 with 8 align bits: each 2^-9 lies below the
    kept bits of 1 and is dropped (truncated); with a sticky bit each keeps 2^-9 of it.

    >>> one, tiny = 0x3f80, 0x3b00  # 1.0 and 2^-9 in bf16
    >>> decode("fp32", dpu_step("fp32", 0, [one] * 4, [one, tiny, tiny, tiny], align_bits=8))
    Fraction(1, 1)
    >>> decode("fp32", dpu_step("fp32", 0, [one] * 4, [one, tiny, tiny, tiny], align_bits=8, sticky=True))
    Fraction(515, 512)
    """
    if len(a_bits) != len(b_bits) or not a_bits:
        raise ValueError(f"a group needs as many a as b terms, at least one: {len(a_bits)} and {len(b_bits)}")
    if align_bits is not None and (isinstance(align_bits, bool) or not isinstance(align_bits, int) or align_bits < 0):
        raise ValueError(f"align_bits must be a non-negative integer or None, not {align_bits!r}")
    acc, inputs = parse(acc), parse(inputs)
    weights = inputs if weights is None else parse(weights)
    products = [multiply(decode(inputs, a), decode(weights, b)) for a, b in zip(a_bits, b_bits)]
    acc_value = decode(acc, acc_bits)
    terms = products + [acc_value]
    if any(_split(t)[0] != _FINITE for t in terms):  # NaN or Inf: the exact sum's rules (section 3)
        total = acc_value
        for p in products:
            total = add(total, p)
        return round_to(acc, total)
    aligned = products + ([acc_value] if include_acc else [])
    nonzero = [_split(t)[2] for t in aligned if _split(t)[2] != 0]
    if align_bits is not None and nonzero:
        unit = _pow2(max(_floor_log2(m) for m in nonzero) - align_bits)
        aligned = [_aligned(t, unit, sticky) for t in aligned]
    total = sum((_split(t)[2] * (-1 if _split(t)[1] else 1) for t in aligned), Fraction(0))
    if not include_acc:
        total += _split(acc_value)[2] * (-1 if _split(acc_value)[1] else 1)
    if total == 0:  # -0 only when every addend is -0 (section 3)
        every_negative_zero = all(_split(t)[1] and _split(t)[2] == 0 for t in terms)
        return round_to(acc, -0.0 if every_negative_zero else 0.0)
    return round_to(acc, total)


def dpu_dot(a_bits: Sequence[int], b_bits: Sequence[int], *, acc: FloatFormat | str, width: int,
            align_bits: int | None, include_acc: bool = True, sticky: bool = False,
            inputs: FloatFormat | str = "bf16", weights: FloatFormat | str | None = None,
            chunk: int | None = None, chunk_acc: FloatFormat | str = "fp32") -> int:
    """A dot product on a ``width``-term fused dot-product unit: from ``acc = +0``,
    :func:`dpu_step` on consecutive groups of ``width`` terms (the last may be
    shorter). With ``chunk`` (a multiple of ``width``: whole groups), every ``chunk``
    terms the accumulator is promoted: added exactly into an outer accumulator in
    ``chunk_acc`` (rounded once) and restarted from +0, as in :func:`dot`.

    >>> dpu_dot([0x3f80] * 8, [0x3f80] * 8, acc="bf16", width=4, align_bits=None) == round_to("bf16", 8)
    True
    """
    if len(a_bits) != len(b_bits):
        raise ValueError(f"dot operands differ in length: {len(a_bits)} and {len(b_bits)}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, not {width!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk % width):
        raise ValueError(f"chunk must be a positive multiple of width {width}, not {chunk!r}")
    acc = parse(acc)
    n = len(a_bits)
    step = chunk or max(n, 1)

    def accumulate(lo: int, hi: int) -> int:
        bits = 0
        for g in range(lo, hi, width):
            end = min(g + width, hi)
            bits = dpu_step(acc, bits, a_bits[g:end], b_bits[g:end], align_bits=align_bits,
                            include_acc=include_acc, sticky=sticky, inputs=inputs, weights=weights)
        return bits

    if chunk is None:
        return accumulate(0, n)
    outer_fmt = parse(chunk_acc)
    outer = 0
    for lo in range(0, n, step):
        outer = round_to(outer_fmt, add(decode(outer_fmt, outer), decode(acc, accumulate(lo, min(lo + step, n)))))
    return outer


def int_mac_step(acc: IntFormat | str, acc_value: int, a: int, b: int) -> int:
    """Integer MAC: ``acc' = fit(acc + a * b)``, product exact, wrap or saturate."""
    acc = parse(acc)
    if not isinstance(acc, IntFormat):
        raise TypeError(f"int_mac_step needs an integer accumulator format, not {acc}")
    return acc.fit(acc_value + a * b)


def int_dot(
    a: Sequence[int],
    b: Sequence[int],
    *,
    acc: IntFormat | str,
    chunk: int | None = None,
    chunk_acc: IntFormat | str = "int32",
) -> int:
    """Integer dot product: sequential :func:`int_mac_step` from 0 (values, not patterns).

    Chunking works as in :func:`dot`: chunks accumulated from 0 in ``acc``, their
    results added in order into ``chunk_acc`` with its overflow rule.
    """
    if len(a) != len(b):
        raise ValueError(f"dot operands differ in length: {len(a)} and {len(b)}")
    acc = parse(acc)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
    step = max(len(a), 1) if chunk is None else chunk
    results = []
    for start in range(0, max(len(a), 1), step):
        value = 0
        for k in range(start, min(start + step, len(a))):
            value = int_mac_step(acc, value, a[k], b[k])
        results.append(value)
    if chunk is None:
        return results[0]
    outer_fmt = parse(chunk_acc)
    outer = 0
    for value in results:
        outer = outer_fmt.fit(outer + value)
    return outer


def requantize(value: int, multiplier: int, shift: int, out_bits: int = 8) -> int:
    """An integer network's output stage (docs/semantics.md §9): the accumulator's
    ``value`` times the layer's fixed-point scale ``multiplier / 2^shift``, rounded to
    nearest with ties toward +Inf, saturated to a signed ``out_bits`` integer:
    ``clamp(floor((value * multiplier + 2^(shift - 1)) / 2^shift))`` (no rounding term
    when ``shift = 0``). ``multiplier`` is unsigned."""
    for name, v, lo in (("value", value, None), ("multiplier", multiplier, 0), ("shift", shift, 0),
                        ("out_bits", out_bits, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            raise ValueError(f"requantize: {name} must be an integer" + (f" >= {lo}" if lo is not None else "")
                             + f", not {v!r}")
    scaled = value * multiplier + ((1 << (shift - 1)) if shift else 0)
    top = (1 << (out_bits - 1)) - 1
    return max(-top - 1, min(top, scaled >> shift))


def convert(src: FloatFormat | str, dst: FloatFormat | str, bits: int) -> int:
    """A float network's output stage: the ``src`` pattern ``bits`` rounded into ``dst``
    (docs/semantics.md §2 and §9); NaN stays NaN, Inf becomes Inf or ``dst``'s max."""
    return round_to(dst, decode(src, bits))


# -- TensorFlow Lite's integer arithmetic (docs/semantics.md §10) ------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _trunc_div(n: int, d: int) -> int:
    """C++ integer division: the quotient rounded toward zero."""
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def tflite_round(x: float) -> int:
    """``std::round``: to nearest, ties away from zero, of a finite float."""
    f = Fraction(x)
    return int(math.floor(f + Fraction(1, 2))) if f >= 0 else -int(math.floor(-f + Fraction(1, 2)))


def tflite_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: a real scale ``> 0`` as ``(m0, shift)`` with
    ``real ~ m0 * 2^(shift - 31)``, ``m0`` in ``[2^30, 2^31)``: ``real = f * 2^shift``
    with ``f`` in ``[0.5, 1)`` (``frexp``), ``m0 = round(f * 2^31)`` (ties away from
    zero); ``m0 = 2^31`` becomes ``2^30`` with ``shift + 1``; a shift below -31 gives
    ``(0, 0)``, one above 30 gives ``(2^31 - 1, 30)``. ``real = 0`` gives ``(0, 0)``."""
    if isinstance(real, bool) or not isinstance(real, (int, float)) or not math.isfinite(real) or real < 0:
        raise ValueError(f"tflite_multiplier: a finite scale >= 0, not {real!r}")
    if real == 0:
        return 0, 0
    frac, shift = math.frexp(real)
    m0 = tflite_round(frac * 2.0**31)
    if m0 == 2**31:
        m0, shift = m0 // 2, shift + 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return _INT32_MAX, 30
    return m0, shift


def tflite_rescale(x: int, multiplier: int, shift: int, *, single: bool = False) -> int:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, m0, shift)``: the int32 ``x`` times
    ``m0 * 2^(shift - 31)`` with its two roundings. ``x`` is first shifted left by
    ``max(shift, 0)`` (it must stay in int32); ``SaturatingRoundingDoublingHighMul``
    then takes ``(x * m0 + nudge) / 2^31`` truncated toward zero, ``nudge = 2^30`` for a
    non-negative product and ``1 - 2^30`` otherwise: ``floor(x * m0 / 2^31 + 1/2)``, to
    nearest with ties toward +Inf; ``RoundingDivideByPOT`` divides by
    ``2^max(-shift, 0)``, to nearest with ties away from zero.

    ``single=True`` is the one-rounding form (``TFLITE_SINGLE_ROUNDING``), which
    LiteRT's int8 ``FULLY_CONNECTED`` kernel uses: ``floor(x * m0 * 2^(shift - 31) +
    1/2)``, to nearest with ties toward +Inf."""
    for name, v in (("x", x), ("multiplier", multiplier), ("shift", shift)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"tflite_rescale: {name} must be an integer, not {v!r}")
    if not 0 <= multiplier <= _INT32_MAX or not -31 <= shift <= 30:
        raise ValueError(f"tflite_rescale: multiplier in [0, 2^31) and shift in [-31, 30], not {multiplier}, {shift}")
    if single:
        total = 31 - shift
        return (x * multiplier + (1 << (total - 1))) >> total
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    if not _INT32_MIN <= a <= _INT32_MAX:
        raise ValueError(f"tflite_rescale: {x} << {left} leaves int32")
    if a == multiplier == _INT32_MIN:
        high = _INT32_MAX
    else:
        product = a * multiplier
        high = _trunc_div(product + ((1 << 30) if product >= 0 else 1 - (1 << 30)), 1 << 31)
    mask = (1 << right) - 1
    remainder, threshold = high & mask, (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def tflite_activation_range(activation: str | None, scale: float, zero_point: int, qmin: int,
                            qmax: int) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized``: the integer range a fused
    activation (None, ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"``) clamps to, each bound
    ``zero_point + round(bound / scale)`` with the division in float32, within
    ``[qmin, qmax]``."""
    import numpy as np

    def q(real: float) -> int:
        return zero_point + tflite_round(float(np.float32(real) / np.float32(scale)))

    low, high = {None: (qmin, qmax), "relu": (q(0.0), qmax), "relu6": (q(0.0), q(6.0)),
                 "relu_n1_to_1": (q(-1.0), q(1.0))}[activation]
    return max(qmin, low), min(qmax, high)


def tflite_average(total: int, count: int) -> int:
    """A quantized average pool's mean: ``total / count`` to nearest, ties away from
    zero, as C++'s truncating division of ``total +- count / 2`` gives it."""
    if count < 1:
        raise ValueError(f"tflite_average: count must be positive, not {count}")
    half = count // 2
    return _trunc_div(total + half, count) if total > 0 else _trunc_div(total - half, count)


def tflite_add(q1: int, q2: int, params: dict) -> int:
    """TFLite's quantized ADD of two stored integers: each input's offset removed
    (``q - zero_point``), shifted left by ``left_shift`` (20) and rescaled by its own
    multiplier, the two summed, rescaled by the output multiplier, the output zero
    point added and the result clamped to the activation range. ``params`` holds
    ``zero_points`` (in1, in2, out), ``multipliers`` and ``shifts`` (in1, in2, out),
    ``left_shift`` and ``range`` (low, high)."""
    z1, z2, zo = params["zero_points"]
    (m1, m2, mo), (s1, s2, so) = params["multipliers"], params["shifts"]
    left = 1 << params["left_shift"]
    total = tflite_rescale((q1 - z1) * left, m1, s1) + tflite_rescale((q2 - z2) * left, m2, s2)
    low, high = params["range"]
    return max(low, min(high, tflite_rescale(total, mo, so) + zo))
