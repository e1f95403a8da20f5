"""The study's statistics (reports.stats) on constructed cases with known answers, and
the scan (reports.search) on constructed candidates."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.evaluate import wilson_interval as wilson
from reports.stats import Paired, mcnemar_exact, newcombe_interval, pack_hits, pair, unpack_hits


def test_newcombe_method_10_matches_the_published_examples():
    """Newcombe (1998), Statistics in Medicine 17:2635, Table II, method 10 (paired)."""
    lo, hi = newcombe_interval(36, 12, 2, 0)  # example (a): 36, 12, 2, 0 -> 0.0569, 0.3404
    assert (round(lo, 4), round(hi, 4)) == (0.0569, 0.3404)
    lo, hi = newcombe_interval(263, 15, 3, 19)  # example (b): 263, 15, 3, 19 -> 0.0118, 0.0713
    assert (round(lo, 4), round(hi, 4)) == (0.0119, 0.0713)


def test_identical_predictions_drop_nothing_with_a_known_interval():
    """Both right on 7,000 of 10,000 images, both wrong on the rest: the drop is 0 and,
    with phi = 1 (after Newcombe's adjustment, (AD - n/2) / sqrt(efgh) = 0.99976...),
    the interval is +-|(p - l) - (u - p)| of the Wilson interval, to within 1e-6."""
    paired = Paired(both=7000, lost=0, gained=0, neither=3000)
    assert paired.drop == 0 and paired.p_value == 1.0
    lo, hi = paired.interval
    low, high = wilson(7000, 10000)
    half = abs((0.7 - low) - (high - 0.7)) * 100
    assert lo == pytest.approx(-hi) and 0 < hi < 0.1
    phi = (7000 * 3000 - 5000) / math.sqrt(7000 * 3000 * 7000 * 3000)
    exact_half = 100 * math.sqrt((0.7 - low) ** 2 - 2 * phi * (0.7 - low) * (high - 0.7) + (high - 0.7) ** 2)
    assert hi == pytest.approx(exact_half, rel=1e-12) and hi == pytest.approx(half, abs=0.02)
    assert paired.within(0) and paired.confidently_within(0.5) and not paired.clearly_beyond(0)


def test_mcnemar_exact_hand_computed():
    # 12 lost, 2 gained: p = 2 * (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 2 * 106 / 16384
    assert mcnemar_exact(12, 2) == float(Fraction(212, 16384)) == mcnemar_exact(2, 12)
    assert mcnemar_exact(5, 0) == 2 / 32 and mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0


@given(both=st.integers(0, 300), lost=st.integers(0, 60), gained=st.integers(0, 60), neither=st.integers(0, 300))
def test_interval_holds_the_estimate_and_stays_in_range(both, lost, gained, neither):
    if both + lost + gained + neither == 0:
        return
    p = Paired(both, lost, gained, neither)
    lo, hi = p.interval
    assert -100 <= lo <= p.drop + 1e-9 and p.drop - 1e-9 <= hi <= 100
    assert 0 <= p.p_value <= 1
    assert p.within(p.drop) and (p.confidently_within(hi)) and not p.clearly_beyond(hi)


def test_pair_counts_and_packing():
    ref = np.array([1, 1, 0, 0, 1, 1, 0, 1, 1], bool)
    cand = np.array([1, 0, 1, 0, 1, 0, 0, 1, 1], bool)
    assert pair(ref, cand) == Paired(both=4, lost=2, gained=1, neither=2)
    assert pair(ref, cand).drop == pytest.approx(100 / 9)
    assert np.array_equal(unpack_hits(pack_hits(cand), len(cand)), cand)
    with pytest.raises(ValueError, match="one length"):
        pair(ref, cand[:-1])


class _Runner:
    """Stands in for reports.points.Runner: candidates with given per-image hits."""

    def __init__(self, hits: dict, reference: np.ndarray, tolerances):
        from types import SimpleNamespace

        self.spec = SimpleNamespace(tolerances=tolerances)
        self.hits_of, self.reference, self.calls = hits, reference, []

    def judge(self, run, policy, reference):
        from reports.points import Judged

        self.calls.append(policy["acc"])
        hits = self.hits_of[policy["acc"]]
        return Judged(policy, "decision", {"hits": hits, "top1": hits.mean(), "total": len(hits)},
                      pair(self.reference, hits), sorted(self.spec.tolerances))

    def compare(self, run, a, b):
        return pair(a.point["hits"], b.point["hits"])


def _hits(n: int, lost: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hits = np.ones(n, bool)
    hits[rng.choice(n, lost, replace=False)] = False
    return hits


def test_scan_takes_the_first_pass_and_reports_only_significant_nonmonotone_pairs():
    from reports.search import scan

    n = 2000
    ref = np.ones(n, bool)
    # drops (points): m0 10, m1 3, m2 0.8, m3 1.2, m4 0.2, m5 0.1, m6 0, m7 0
    lost = {0: 200, 1: 60, 2: 16, 3: 24, 4: 4, 5: 2, 6: 0, 7: 0}
    hits = {f"e4m{m}": _hits(n, k, m) for m, k in lost.items()}
    # m3: m2 with 9 of its right images wrong and 4 of its wrong ones right: drop 1.05, fails
    # tolerance 1 where m2 (drop 0.8) passes, but the two differ by noise: McNemar 9 vs 4,
    # p = 2 * (1 + 13 + 78 + 286 + 715) / 2^13 = 0.267
    hits["e4m3"] = hits["e4m2"].copy()
    hits["e4m3"][np.flatnonzero(hits["e4m2"])[:9]] = False
    hits["e4m3"][np.flatnonzero(~hits["e4m2"])[:4]] = True
    runner = _Runner(hits, ref, [0.5, 1.0])
    policies = [{"acc": f"e4m{m}"} for m in range(8)]
    found = scan(runner, None, policies, {"acc": "fp32"}, window=2)
    assert found["minima"] == {0.5: 4, 1.0: 2}  # the first within each tolerance
    assert runner.calls == [f"e4m{m}" for m in range(7)]  # stops 2 beyond the tightest minimum
    assert found["nonmonotone"] == []
    assert [(f["tolerance"], f["passes"], f["fails"]) for f in found["flat"]] == [(1.0, "e4m2", "e4m3")]
    assert found["flat"][0]["mcnemar_p"] == pytest.approx(2 * 1093 / 8192)


def test_scan_reports_a_significant_nonmonotone_pair():
    from reports.search import scan

    n = 4000
    ref = np.ones(n, bool)
    hits = {"e4m0": _hits(n, 400, 0), "e4m1": _hits(n, 10, 1), "e4m2": _hits(n, 200, 2), "e4m3": _hits(n, 0, 3),
            "e4m4": _hits(n, 0, 4), "e4m5": _hits(n, 0, 5)}
    found = scan(_Runner(hits, ref, [1.0]), None, [{"acc": f"e4m{m}"} for m in range(6)], {"acc": "fp32"}, window=1)
    assert found["minima"] == {1.0: 1}
    pairs = [(f["passes"], f["fails"]) for f in found["nonmonotone"]]
    assert pairs == [("e4m1", "e4m2")] and found["nonmonotone"][0]["mcnemar_p"] < 1e-10
