"""Paired statistics of two classifiers on the same images: the study's decision rule.

Every accept/reject decision of the study compares a candidate policy with its
reference on the **same** images, image by image (docs/study.md, "Statistics"). Of ``n``
images, ``both`` are right under both, ``lost`` right under the reference only (the
candidate lost them), ``gained`` right under the candidate only, ``neither`` under
none. The accuracy **drop** is ``(lost - gained) / n`` (reference minus candidate).

- :func:`newcombe_interval`: the 95% interval of the drop by Newcombe's method 10
  (R. G. Newcombe, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", Statistics in Medicine 17, 1998, 2635-2650): the
  Wilson score intervals of the two marginal proportions combined through the
  phi correlation of the pairs (with Newcombe's continuity adjustment of phi).
- :func:`mcnemar_exact`: the exact two-sided McNemar test ("do the two differ at
  all"): under H0 the ``lost`` of the ``lost + gained`` discordant images are
  Binomial(lost + gained, 1/2); p is twice the smaller tail, at most 1.
- :func:`decide`: within tolerance ``t`` (top-1 points) means the **point estimate**
  of the drop is at most ``t``; *confidently within* means the interval's upper bound
  is at most ``t`` too; *clearly beyond every tolerance* (what screening may reject)
  means the interval's lower bound exceeds the largest tolerance.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from emulator.evaluate import Z95, wilson_interval

__all__ = ["Paired", "pair", "newcombe_interval", "mcnemar_exact", "pack_hits", "unpack_hits"]

def newcombe_interval(both: int, lost: int, gained: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's method-10 interval of ``p_ref - p_cand`` for paired proportions.

    ``p_ref = (both + lost) / n`` and ``p_cand = (both + gained) / n``; the result is
    a fraction (multiply by 100 for points), inside [-1, 1].
    """
    n = both + lost + gained + neither
    if n <= 0:
        return (-1.0, 1.0)
    p1, p2 = (both + lost) / n, (both + gained) / n
    l1, u1 = wilson_interval(both + lost, n, z)
    l2, u2 = wilson_interval(both + gained, n, z)
    # phi of the 2x2 table (rows: reference right/wrong; columns: candidate right/wrong)
    margins = (both + lost) * (gained + neither) * (both + gained) * (lost + neither)
    cross = both * neither - lost * gained
    if margins == 0:
        phi = 0.0
    else:
        if cross > 0:
            cross = max(cross - n / 2, 0.0)
        phi = cross / math.sqrt(margins)
    theta = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, theta - delta), min(1.0, theta + eps))


def mcnemar_exact(lost: int, gained: int) -> float:
    """Exact two-sided McNemar p-value for ``lost`` vs ``gained`` discordant pairs."""
    d = lost + gained
    if d == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(Fraction(math.comb(d, i)) for i in range(k + 1)) / Fraction(2) ** d
    return float(min(Fraction(1), 2 * tail))


@dataclass(frozen=True)
class Paired:
    """A candidate against its reference on the same ``n`` images."""

    both: int
    lost: int
    gained: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.lost + self.gained + self.neither

    @property
    def drop(self) -> float:
        """Reference top-1 minus candidate top-1, in points."""
        return 100 * (self.lost - self.gained) / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Newcombe 95% interval of the drop, in points."""
        lo, hi = newcombe_interval(self.both, self.lost, self.gained, self.neither)
        return (100 * lo, 100 * hi)

    @property
    def p_value(self) -> float:
        """Exact McNemar p-value: do the two differ at all?"""
        return mcnemar_exact(self.lost, self.gained)

    def within(self, tolerance: float) -> bool:
        """The study's rule: the drop's point estimate is at most ``tolerance`` points."""
        return self.drop <= tolerance + 1e-9

    def confidently_within(self, tolerance: float) -> bool:
        """The drop's 95% upper bound is at most ``tolerance`` points."""
        return self.interval[1] <= tolerance + 1e-9

    def clearly_beyond(self, tolerance: float) -> bool:
        """The drop's 95% lower bound exceeds ``tolerance`` points (screening rejects)."""
        return self.interval[0] > tolerance + 1e-9

    def as_dict(self) -> dict:
        lo, hi = self.interval
        return {"n": self.n, "both": self.both, "lost": self.lost, "gained": self.gained, "neither": self.neither,
                "drop": self.drop, "drop_ci95": [lo, hi], "mcnemar_p": self.p_value}


def pair(reference: np.ndarray, candidate: np.ndarray) -> Paired:
    """Count the four kinds of image from two boolean per-image hit vectors."""
    reference, candidate = np.asarray(reference, dtype=bool), np.asarray(candidate, dtype=bool)
    if reference.shape != candidate.shape or reference.ndim != 1:
        raise ValueError(f"paired hits must be two vectors of one length, not {reference.shape} and {candidate.shape}")
    return Paired(both=int(np.sum(reference & candidate)), lost=int(np.sum(reference & ~candidate)),
                  gained=int(np.sum(~reference & candidate)), neither=int(np.sum(~reference & ~candidate)))


def pack_hits(hits) -> str:
    """Per-image hits as base64 of the bit-packed vector (for JSON); see :func:`unpack_hits`."""
    bits = np.asarray(hits, dtype=bool)
    return base64.b64encode(np.packbits(bits).tobytes()).decode()


def unpack_hits(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans packed by :func:`pack_hits`."""
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(raw)[:n].astype(bool)
