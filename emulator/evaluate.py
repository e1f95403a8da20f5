"""Accuracy of a (possibly emulated) model, with a 95% confidence interval.

Top-1 and top-5 accuracy over a test split, or over ``limit`` of its images: the
first ``limit`` of a fixed (seed 0) permutation, so that a subset is a uniform sample
(test splits are often stored sorted by class). The interval is the Wilson score interval for a binomial
proportion at 95% (z = 1.959964): it stays inside [0, 1] and keeps its coverage near 0
and 1, unlike the normal approximation. Evaluation runs in eval mode under
``torch.no_grad`` and is deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Accuracy", "evaluate", "wilson_interval"]

Z95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / total``."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass(frozen=True)
class Accuracy:
    correct: int
    correct5: int
    total: int
    seconds: float
    #: Per image, in evaluation order: was the top-1 prediction right (bool tensor).
    hits: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def top5(self) -> float:
        return self.correct5 / self.total if self.total else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    @property
    def ci5(self) -> tuple[float, float]:
        return wilson_interval(self.correct5, self.total)

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top1_ci95": list(self.ci), "top5": self.top5,
                "top5_ci95": list(self.ci5), "correct": self.correct, "total": self.total,
                "seconds": round(self.seconds, 2)}

    def __str__(self) -> str:
        lo, hi = self.ci
        return f"{100 * self.top1:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] (n={self.total})"


#: How classes with equal logits are ranked (part of study point keys): integer networks
#: and narrow accumulators produce ties, which ``topk`` would break arbitrarily.
TIES = "equal logits rank by lower class index"


def ranked(logits: torch.Tensor) -> torch.Tensor:
    """Class indices by decreasing logit, equal logits in increasing class order (so the
    first is ``argmax``'s choice, as TFLite and numpy take it); NaN ranks first."""
    return logits.sort(dim=1, descending=True, stable=True).indices


@torch.no_grad()
def evaluate(model: nn.Module, source, *, limit: int | None = None, batch_size: int = 256,
             progress: bool = False, label: str = "eval", stop=None, indices=None) -> Accuracy:
    """Top-1/top-5 of ``model`` on ``source``, on the device of the model's parameters;
    classes ranked by :func:`ranked` (ties to the lower class index).

    ``indices``, when given, are the images evaluated, in that order (instead of the
    whole split or its first ``limit`` of the seed-0 permutation); the result's
    ``hits`` are per image in evaluation order, for paired comparisons of two models on
    the same images. ``stop(correct, seen, total)``, when given, is asked after each
    batch; returning True ends the evaluation early.
    """
    from emulator.device import model_device
    from emulator.train import _Progress

    device = model_device(model)
    was_training = model.training
    model.eval()
    if indices is not None:
        n = len(indices)
        batches = source.batches(batch_size, indices=indices)
    else:
        n = len(source) if limit is None else min(limit, len(source))
        batches = source.batches(batch_size, shuffle=n < len(source), seed=0, limit=n)
    bar = _Progress(n, label, progress)
    correct = correct5 = seen = 0
    hits = []
    start = time.monotonic()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        top = ranked(logits)[:, :5]  # (B, 5)
        hits.append((top[:, 0] == y).cpu())
        correct += int(hits[-1].sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        seen += len(y)
        bar.update(seen, f"top-1 {100 * correct / seen:.2f}%")
        if stop is not None and seen < n and stop(correct, seen, n):
            break
    model.train(was_training)
    hits = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    return Accuracy(correct, correct5, seen, time.monotonic() - start, hits)
