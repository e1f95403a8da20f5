"""Number formats of psum: low-bit floating point and integers.

A :class:`FloatFormat` is sign + ``exp_bits`` exponent bits + ``man_bits`` stored
mantissa bits, with a free exponent ``bias`` and three modes (overflow, subnormals,
rounding). An :class:`IntFormat` is a two's-complement (or unsigned) integer with
wrap-around or saturating overflow. Both are immutable and hashable, so they work as
cache keys, and both print as their spec string: ``parse(str(fmt)) == fmt``.

Every constant (max finite, min normal, epsilon, masks) is derived from the
parameters; nothing is tabulated per format. The arithmetic that uses these formats
is defined in ``docs/semantics.md`` and implemented exactly in :mod:`psum.golden`.

Spec grammar (case-insensitive)::

    float  := (PRESET | "e" E "m" M ["b" BIAS]) (":" FMODE)*
    FMODE  := "sat" | "inf" | "ftz" | "sub" | "rz" | "rne" | "sr" | "sr" R
    int    := ("int" | "uint") BITS (":" IMODE)*
    IMODE  := "wrap" | "sat"
    PRESET := fp32 | tf32 | fp16 | bf16 | e4m3 | e5m2 | e3m4

``BIAS`` may be negative (``e4m7b-2``). ``inf``/``sub``/``rne``/``wrap`` are the
defaults and never printed. ``sr`` is stochastic rounding with
:data:`DEFAULT_RANDOM_BITS` random bits, ``sr12`` with 12.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = [
    "FloatFormat",
    "IntFormat",
    "Format",
    "PRESETS",
    "parse",
    "candidates",
    "bias_range",
    "OVERFLOW_MODES",
    "ROUNDING_MODES",
    "INT_OVERFLOW_MODES",
    "DEFAULT_RANDOM_BITS",
    "not_stochastic",
]

OVERFLOW_MODES = ("inf", "saturate")
ROUNDING_MODES = ("nearest_even", "toward_zero", "stochastic")
#: Random bits a stochastic rounding draws when the format does not say
#: (``random_bits``); docs/semantics.md §13.
DEFAULT_RANDOM_BITS = 8
_RANDOM_BITS_RANGE = (1, 32)  # one draw of the 32-bit generator of docs/semantics.md §13
INT_OVERFLOW_MODES = ("wrap", "saturate")

# Limits of what FloatFormat can describe at all. The golden model handles all of
# them; the emulator and hwgen support at least 2 <= E <= 8, 0 <= M <= 23 and say so
# clearly for anything beyond what they support.
_EXP_BITS_RANGE = (2, 11)
_MAN_BITS_RANGE = (0, 52)
_INT_BITS_RANGE = (2, 64)
# Every value of a format is a float64 number: its binades lie within float64's, from
# the smallest subnormal 2^-1074 to the top binade 2^1023. This bounds the bias, keeps
# every exact property printable as a double, and keeps the golden model's Fractions
# small (a bias of -10^11 would otherwise build numbers of gigabytes).
_FLOAT64_EXP_RANGE = (-1074, 1023)


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {accepted}, not {value!r}")


def bias_range(exp_bits: int, man_bits: int, overflow: str = "inf") -> tuple[int, int]:
    """The biases (inclusive) for which every value of ``eEmM`` is a float64 number:
    ``emin - M >= -1074`` (its smallest subnormal step) and ``emax <= 1023``. Empty
    (low > high) where no bias fits, e.g. ``e11m52:sat``."""
    top = (1 << exp_bits) - (2 if overflow == "inf" else 1)  # the top finite exponent code
    low_exp, high_exp = _FLOAT64_EXP_RANGE
    return top - high_exp, 1 - man_bits - low_exp


def not_stochastic(fmt, role: str):
    """``fmt``, unless it rounds stochastically: only a MAC's accumulator does, since
    it owns the random source (docs/semantics.md §13). ``role`` names ``fmt`` in the
    one-line error."""
    if isinstance(fmt, FloatFormat) and fmt.rounding == "stochastic":
        raise ValueError(f"{role} {fmt}: stochastic rounding is an accumulator mode (docs/semantics.md §13)")
    return fmt


def _check_bias(fmt: "FloatFormat") -> None:
    low, high = bias_range(fmt.exp_bits, fmt.man_bits, fmt.overflow)
    shape = f"e{fmt.exp_bits}m{fmt.man_bits}" + (":sat" if fmt.overflow == "saturate" else "")
    if low > high:
        raise ValueError(f"no bias makes every value of {shape} a float64 number, "
                         "the range psum supports")
    if not low <= fmt.bias <= high:
        raise ValueError(f"bias must be between {low} and {high} for {shape} (every value a "
                         f"float64 number, the range psum supports), not {fmt.bias}")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, E exponent bits, M mantissa bits.

    A bit pattern ``s | e | m`` (sign, biased exponent field, stored mantissa) means

    - ``e == 0``: zero or subnormal, ``(-1)^s * m * 2^(emin - M)``; with
      ``subnormals=False`` every such pattern reads as a (signed) zero;
    - ``0 < e``: normal, ``(-1)^s * (1 + m / 2^M) * 2^(e - bias)``, except
    - ``e == 2^E - 1`` when ``overflow="inf"``: infinity (``m == 0``) or NaN.

    Parameters
    ----------
    exp_bits : int
        E, the exponent field width (2..11).
    man_bits : int
        M, the stored mantissa width (0..52), without the implicit leading bit.
    bias : int or None
        Exponent bias; ``None`` means the IEEE default ``2^(E-1) - 1``. It moves the
        binary point (the whole representable range) by powers of two, as far as every
        value stays a float64 number (:func:`bias_range`).
    subnormals : bool
        ``False`` flushes results below the smallest normal to zero (see
        ``docs/semantics.md`` for the exact rule) and reads subnormal patterns as zero.
    overflow : {"inf", "saturate"}
        ``"inf"``: IEEE style, the top exponent code holds Inf and NaN.
        ``"saturate"``: every code is finite, results beyond the largest finite
        value clamp to it; there is no Inf or NaN.
    rounding : {"nearest_even", "toward_zero", "stochastic"}
        How exact results are rounded into the format. ``"stochastic"`` rounds up with
        probability equal to the discarded fraction, read to ``random_bits`` bits and
        compared with that many random bits (docs/semantics.md §13): an accumulator
        mode, whose random bits come from the MAC's generator.
    random_bits : int or None
        R, the random bits of one stochastic rounding (1..32; keyword only). ``None``
        means :data:`DEFAULT_RANDOM_BITS` for stochastic rounding; other modes take none.

    Formats are immutable and hashable. ``str(fmt)`` is its canonical spec string.
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    subnormals: bool = True
    overflow: str = "inf"
    rounding: str = "nearest_even"
    random_bits: int | None = field(default=None, kw_only=True)
    #: Preset name this format was parsed from (``"fp16"``); only affects ``str``.
    name: str | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self):
        _check_int("exp_bits", self.exp_bits, *_EXP_BITS_RANGE)
        _check_int("man_bits", self.man_bits, *_MAN_BITS_RANGE)
        if self.bias is None:
            object.__setattr__(self, "bias", (1 << (self.exp_bits - 1)) - 1)
        elif isinstance(self.bias, bool) or not isinstance(self.bias, int):
            raise TypeError(f"bias must be an integer or None, not {self.bias!r}")
        if not isinstance(self.subnormals, bool):
            raise TypeError(f"subnormals must be a bool, not {self.subnormals!r}")
        _check_choice("overflow", self.overflow, OVERFLOW_MODES)
        _check_choice("rounding", self.rounding, ROUNDING_MODES)
        if self.rounding != "stochastic":
            if self.random_bits is not None:
                raise ValueError(f"random_bits is for stochastic rounding, not {self.rounding!r}")
        elif self.random_bits is None:
            object.__setattr__(self, "random_bits", DEFAULT_RANDOM_BITS)
        else:
            _check_int("random_bits", self.random_bits, *_RANDOM_BITS_RANGE)
        _check_bias(self)

    def __repr__(self) -> str:
        text = (f"FloatFormat(exp_bits={self.exp_bits}, man_bits={self.man_bits}, bias={self.bias}, "
                f"subnormals={self.subnormals}, overflow={self.overflow!r}, rounding={self.rounding!r}")
        if self.random_bits is not None:
            text += f", random_bits={self.random_bits}"
        return text + ")"

    # -- encoding layout -------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width of a pattern: 1 + E + M."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def sign_mask(self) -> int:
        return 1 << (self.exp_bits + self.man_bits)

    @property
    def exp_mask(self) -> int:
        return ((1 << self.exp_bits) - 1) << self.man_bits

    @property
    def man_mask(self) -> int:
        return (1 << self.man_bits) - 1

    @property
    def has_inf(self) -> bool:
        return self.overflow == "inf"

    @property
    def has_nan(self) -> bool:
        """Whether some pattern means NaN (needs the Inf/NaN exponent code and M >= 1)."""
        return self.overflow == "inf" and self.man_bits >= 1

    # -- exponent range -------------------------------------------------------
    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number: ``1 - bias``."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite binade."""
        top = (1 << self.exp_bits) - 1
        return (top - 1 if self.overflow == "inf" else top) - self.bias

    # -- exact properties -----------------------------------------------------
    @property
    def max_finite(self) -> Fraction:
        """Largest finite value, ``(2 - 2^-M) * 2^emax``."""
        return (2 - Fraction(1, 1 << self.man_bits)) * _pow2(self.emax)

    @property
    def min_normal(self) -> Fraction:
        return _pow2(self.emin)

    @property
    def min_subnormal(self) -> Fraction | None:
        """Smallest positive subnormal, ``2^(emin - M)``; None with ``subnormals=False``."""
        if not self.subnormals or self.man_bits == 0:
            return None
        return _pow2(self.emin - self.man_bits)

    @property
    def min_positive(self) -> Fraction:
        return self.min_subnormal if self.min_subnormal is not None else self.min_normal

    @property
    def epsilon(self) -> Fraction:
        """Machine epsilon: the gap between 1 and the next larger value, ``2^-M``."""
        return Fraction(1, 1 << self.man_bits)

    @property
    def dynamic_range_binades(self) -> float:
        """``log2(max_finite / min_positive)``: binades spanned by the finite values."""
        ratio = self.max_finite / self.min_positive
        return math.log2(ratio.numerator) - math.log2(ratio.denominator)

    # -- conversion -----------------------------------------------------------
    def encode(self, value) -> int:
        """Bit pattern of ``value`` (int, Fraction or float) rounded into this format.

        The rounding is the one of ``docs/semantics.md``; ``float`` carries the
        specials ``-0.0``, ``inf`` and ``nan``.
        """
        from psum import golden

        return golden.round_to(self, value)

    def decode(self, bits: int) -> Fraction | float:
        """Exact value of a bit pattern.

        Finite nonzero values come back as :class:`~fractions.Fraction`; zeros,
        infinities and NaN as ``float`` (``-0.0`` keeps its sign).
        """
        from psum import golden

        return golden.decode(self, bits)

    def __str__(self) -> str:
        base = self.name
        if base is None:
            base = f"e{self.exp_bits}m{self.man_bits}"
            if self.bias != (1 << (self.exp_bits - 1)) - 1:
                base += f"b{self.bias}"
        modes = []
        if self.overflow == "saturate":
            modes.append("sat")
        if not self.subnormals:
            modes.append("ftz")
        if self.rounding == "toward_zero":
            modes.append("rz")
        if self.rounding == "stochastic":
            modes.append("sr" if self.random_bits == DEFAULT_RANDOM_BITS else f"sr{self.random_bits}")
        return ":".join([base, *modes])


@dataclass(frozen=True)
class IntFormat:
    """A ``bits``-wide integer accumulator or operand.

    Parameters
    ----------
    bits : int
        Width, 2..64.
    signed : bool
        Two's complement when True, else unsigned.
    overflow : {"wrap", "saturate"}
        What a result outside ``[min_value, max_value]`` becomes: reduced modulo
        ``2^bits`` into the range (what a plain adder does), or clamped to the
        nearest end.
    """

    bits: int
    signed: bool = True
    overflow: str = "wrap"

    def __post_init__(self):
        _check_int("bits", self.bits, *_INT_BITS_RANGE)
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, not {self.signed!r}")
        _check_choice("overflow", self.overflow, INT_OVERFLOW_MODES)

    @property
    def min_value(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def fit(self, value: int) -> int:
        """``value`` brought into range by this format's overflow rule (wrap or clamp)."""
        if self.min_value <= value <= self.max_value:
            return value
        if self.overflow == "saturate":
            return self.max_value if value > self.max_value else self.min_value
        wrapped = value & ((1 << self.bits) - 1)
        if self.signed and wrapped > self.max_value:
            wrapped -= 1 << self.bits
        return wrapped

    def encode(self, value: int) -> int:
        """Bit pattern (two's complement for signed) of ``fit(value)``."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"IntFormat values must be integers, not {value!r}")
        return self.fit(value) & ((1 << self.bits) - 1)

    def decode(self, bits: int) -> int:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits < (1 << self.bits):
            raise ValueError(f"bit pattern must be an integer in [0, 2^{self.bits}), not {bits!r}")
        if self.signed and bits >> (self.bits - 1):
            return bits - (1 << self.bits)
        return bits

    def __str__(self) -> str:
        base = f"{'int' if self.signed else 'uint'}{self.bits}"
        return base + (":sat" if self.overflow == "saturate" else "")


Format = FloatFormat | IntFormat


def _pow2(e: int) -> Fraction:
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


# -- spec strings ----------------------------------------------------------------

#: Named formats. ``e4m3``/``e5m2``/``e3m4`` are the IEEE-style 8-bit formats
#: (``ml_dtypes.float8_e4m3`` etc.: Inf and NaN in the top exponent code).
PRESETS: dict[str, tuple[int, int]] = {
    "fp32": (8, 23),
    "tf32": (8, 10),
    "fp16": (5, 10),
    "bf16": (8, 7),
    "e4m3": (4, 3),
    "e5m2": (5, 2),
    "e3m4": (3, 4),
}

_FLOAT_MODES = {
    "sat": ("overflow", "saturate"),
    "inf": ("overflow", "inf"),
    "ftz": ("subnormals", False),
    "sub": ("subnormals", True),
    "rz": ("rounding", "toward_zero"),
    "rne": ("rounding", "nearest_even"),
    "sr": ("rounding", "stochastic"),
}
_STOCHASTIC_RE = re.compile(r"sr(\d+)")
_INT_MODES = {"sat": ("overflow", "saturate"), "wrap": ("overflow", "wrap")}

_FLOAT_RE = re.compile(r"e(\d+)m(\d+)(?:b(-?\d+))?")
_INT_RE = re.compile(r"(u?)int(\d+)")

_GRAMMAR = (
    "expected eEmM[bBIAS][:mode...] (e.g. e4m7, e5m10b12:sat:ftz; modes sat, ftz, rz, sr, srR), "
    f"a preset ({', '.join(PRESETS)}) or [u]intN[:sat] (e.g. int8, int24, int16:sat)"
)


def _spec_error(spec: str, why: str) -> ValueError:
    return ValueError(f"invalid format spec {spec!r}: {why}; {_GRAMMAR}")


def _parse_modes(spec: str, words: list[str], table: dict) -> dict:
    chosen: dict = {}
    for word in words:
        bits = _STOCHASTIC_RE.fullmatch(word) if table is _FLOAT_MODES else None
        if bits:  # "sr12": stochastic rounding with 12 random bits
            if "random_bits" in chosen:
                raise _spec_error(spec, "conflicting modes for random_bits")
            chosen["random_bits"] = int(bits.group(1))
            word = "sr"
        if word not in table:
            raise _spec_error(spec, f"unknown mode {word!r}")
        key, value = table[word]
        if key in chosen and chosen[key] != value:
            raise _spec_error(spec, f"conflicting modes for {key}")
        chosen[key] = value
    return chosen


def parse(spec: str) -> FloatFormat | IntFormat:
    """Parse a format spec string (grammar in the module docstring).

    Raises ``ValueError`` (one line: what is wrong and what is accepted) for malformed
    or impossible specs. ``parse(str(fmt)) == fmt`` for every format.

    >>> parse("e4m3")
    FloatFormat(exp_bits=4, man_bits=3, bias=7, subnormals=True, overflow='inf', rounding='nearest_even')
    >>> parse("e4m3").max_finite, parse("e4m3").bits  # values are exact: Fractions
    (Fraction(240, 1), 8)
    >>> str(parse("int16:sat"))
    'int16:sat'
    """
    if isinstance(spec, (FloatFormat, IntFormat)):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"format spec must be a string, not {spec!r}")
    text = spec.strip().lower()
    head, *words = text.split(":")
    if not head:
        raise _spec_error(spec, "empty format name")

    int_match = _INT_RE.fullmatch(head)
    if int_match:
        kwargs = _parse_modes(spec, words, _INT_MODES)
        try:
            return IntFormat(int(int_match.group(2)), signed=not int_match.group(1), **kwargs)
        except ValueError as exc:
            raise _spec_error(spec, str(exc)) from None

    kwargs = _parse_modes(spec, words, _FLOAT_MODES)
    name = None
    if head in PRESETS:
        exp_bits, man_bits = PRESETS[head]
        bias = None
        name = head
    else:
        float_match = _FLOAT_RE.fullmatch(head)
        if not float_match:
            raise _spec_error(spec, f"{head!r} is not a format name")
        exp_bits, man_bits = int(float_match.group(1)), int(float_match.group(2))
        bias = None if float_match.group(3) is None else int(float_match.group(3))
    try:
        return FloatFormat(exp_bits, man_bits, bias, name=name, **kwargs)
    except ValueError as exc:
        raise _spec_error(spec, str(exc)) from None


def candidates(
    exp_range: tuple[int, int] = (3, 8), width_range: tuple[int, int] = (8, 24)
) -> list[FloatFormat]:
    """The default accumulator candidates of the study.

    Every IEEE-style ``1 + E + M`` format with ``E`` in ``exp_range`` and total width in
    ``width_range`` (both inclusive), plus fp16, bf16 and fp32; ordered by width, then E.
    """
    found: dict[FloatFormat, None] = {}
    for width in range(width_range[0], width_range[1] + 1):
        for exp_bits in range(exp_range[0], exp_range[1] + 1):
            man_bits = width - 1 - exp_bits
            if man_bits >= 0:
                found.setdefault(FloatFormat(exp_bits, man_bits), None)
    for preset in ("fp16", "bf16", "fp32"):
        fmt = parse(preset)
        found.pop(fmt, None)  # keep the preset's name for printing
        found[fmt] = None
    return sorted(found, key=lambda f: (f.bits, f.exp_bits))
