"""Fine-tuning through the emulated accumulation as a study stage (docs/semantics.md §12).

Per network, below the zero-shot minima at the tightest tolerance (the main FP search's
fewest-bit minimum E, M and the INT minimum of the first calibration seed, wrapping) the
study fine-tunes the trained network through each narrower accumulator in turn
(mantissa M - 1, M - 2, ...; INT width - 1, ...), at most ``finetune_steps`` of them,
stopping after the first that fine-tuning does not bring within tolerance. Every
fine-tuned network is judged like any candidate: its points on the same images, paired
with the *original* network's reference (bf16 operands and fp32 accumulator; int8
operands and int32). Each candidate is also paired with its own zero-shot point (the
gain of fine-tuning, with its interval). A control fine-tunes through the reference
accumulator itself for the same epochs: how much of a gain is more training rather than
training for the accumulator.

Each FP candidate is also run with its accumulator rounding stochastically (``:sr``,
docs/semantics.md §13, generators seeded with the spec's seed): zero-shot, and on the
network fine-tuned (to nearest) for it, both against the reference, and the zero-shot
paired with the nearest-even zero-shot (the gain of stochastic rounding alone). INT
accumulators add exactly; they have nothing to round.

The recipe is ``psum finetune``'s (emulator.finetune) with the spec's epochs, learning
rate and seed; integer layers are calibrated as the study calibrates them (the int32
reference's scales), and INT candidates' loss carries the overflow penalty
``finetune_overflow_penalty`` (WrapNet's: the dot products' mean excess over the
accumulator's range), without which a wrapping accumulator's garbage outputs give the
straight-through gradient nothing to correct. Checkpoints land in ``<out>/finetuned/``, named by a digest of what
they are tuned from and for; a rerun reuses them and a partial one resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reports.points import Judged, Runner, _digest, _model, _policy, _source, describe
from reports.search import best_fp, best_int, exponent, int_width, mantissa
from reports.spec import ModelRun

#: The study's calibration of integer layers (reports.points.CALIBRATION), as
#: emulator.finetune takes it; the seed is the first calibration seed's.
_CALIBRATION = {"images": 1000, "batch_size": 250, "on": "int32 reference"}


def finetune_search(runner: Runner, run: ModelRun, found: dict, folder: Path, log) -> dict:
    """The fine-tuning stage of one network (module docstring); its section of
    ``results.json``: per family the zero-shot minimum, the candidates below it (each
    zero-shot and fine-tuned, judged, the gain paired), the fine-tuned minimum and the
    control."""
    from emulator.models import MODELS

    spec = runner.spec
    tol = min(spec.tolerances)
    out = {"tolerance": tol, "epochs": spec.finetune_epochs, "lr": spec.finetune_lr, "seed": spec.seed,
           "overflow_penalty": spec.finetune_overflow_penalty}
    if run.ref not in MODELS or spec.fold_bn:
        out["skipped"] = "fine-tuning takes registered networks without folded batch norm"
        return out
    fp_ref = {"kind": "float", "acc": "fp32", "inputs": spec.inputs, "chunk": None, "order": spec.orders[0]}
    int_ref = {"kind": "int", "acc": "int32", "bits": spec.int_bits, "calibration_seed": spec.calibration_seeds[0]}
    fp_min, int_min = best_fp(found, tol), best_int(found, tol)
    families = []
    if fp_min:
        e, m = exponent(fp_min), mantissa(fp_min)
        narrower = [f"e{e}m{b}{spec.mode}" for b in range(m - 1, -1, -1)][:spec.finetune_steps]
        families.append(("fp", fp_min, fp_ref, [{**fp_ref, "acc": a, "chunk": spec.chunk} for a in narrower]))
    if int_min:
        narrower = [f"int{b}" for b in range(int_width(int_min) - 1, spec.int_width_range[0] - 1, -1)]
        families.append(("int", int_min, int_ref, [{**int_ref, "acc": a} for a in narrower[:spec.finetune_steps]]))
    tuner = _Tuner(runner, run, folder, log)
    for family, zero_shot, ref, candidates in families:
        log(f"{run.name}: fine-tuning {spec.finetune_epochs} epochs below the {family.upper()} minimum {zero_shot}")
        rows, minimum = [], zero_shot
        for policy in candidates:
            row = tuner.judge(policy, ref)
            rows.append(row)
            if not row["finetuned"]["within"][str(tol)]:
                break
            minimum = policy["acc"]
        out[family] = {"zero_shot_minimum": zero_shot, "finetuned_minimum": minimum, "candidates": rows,
                       "control": tuner.judge(ref, ref)}
    return out


def _gain(paired) -> dict:
    """A paired comparison of a point against a baseline, told as a gain (a negative
    drop) with its interval."""
    return {**paired.as_dict(), "gain": -paired.drop, "gain_ci95": [-paired.interval[1], -paired.interval[0]]}


class _Tuner:
    """Fine-tunes one network through policies (cached in ``folder``) and judges the
    results against the original network's reference."""

    def __init__(self, runner: Runner, run: ModelRun, folder: Path, log):
        self.runner, self.run, self.folder, self.log = runner, run, Path(folder), log
        _, self.dataset = _model(run.ref, run.dataset, str(run.checkpoint))

    def recipe(self, policy: dict) -> dict:
        """How ``policy``'s network is fine-tuned: epochs, learning rate, seed, and for
        integer accumulators the overflow penalty (when nonzero)."""
        spec = self.runner.spec
        out = {"epochs": spec.finetune_epochs, "lr": spec.finetune_lr, "seed": spec.seed}
        if policy["kind"] == "int" and spec.finetune_overflow_penalty:
            out["overflow_penalty"] = spec.finetune_overflow_penalty
        return out

    def checkpoint(self, policy: dict) -> tuple[Path, dict]:
        """The network fine-tuned through ``policy``: trained now unless a rerun finds it."""
        from emulator import checkpoint
        from emulator.finetune import finetune
        from emulator.train import TrainConfig

        spec = self.runner.spec
        recipe = {"model": self.run.ref, "dataset": self.dataset, "init": _digest(str(self.run.checkpoint)),
                  "policy": policy, **self.recipe(policy)}
        name = hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(), digest_size=8).hexdigest()
        path = self.folder / f"{self.run.name}-{policy['acc']}-{name}.pt"
        if not path.exists():
            self.log(f"  {self.run.name}: fine-tuning through {describe(policy)}")
            cfg = TrainConfig(model=self.run.ref, dataset=self.dataset, epochs=spec.finetune_epochs,
                              lr=spec.finetune_lr, seed=spec.seed)
            calibration = {**_CALIBRATION, "seed": policy.get("calibration_seed", 0)}
            train = _source(self.dataset, "train", spec.data_dir, spec.download)
            finetune(cfg, str(self.run.checkpoint), _policy(policy), train, path, calibration=calibration,
                     overflow_penalty=self.recipe(policy).get("overflow_penalty", 0.0), progress=False,
                     log=lambda line: self.log(f"    {line}"))
        return path, checkpoint.read(path)["meta"]

    def judge(self, policy: dict, ref: dict) -> dict:
        """``policy`` zero-shot and fine-tuned, each against ``ref`` on the decision images,
        and the fine-tuned against the zero-shot (the gain: a negative drop)."""
        runner, run = self.runner, self.run
        path, meta = self.checkpoint(policy)
        digest = _digest(str(path))
        runner.checkpoints[digest] = str(path)
        tuned = {**policy, "finetuned": {"digest": digest, **self.recipe(policy)}}
        zero, after = self._decision(policy, ref), self._decision(tuned, ref)
        row = {"acc": policy["acc"], "zero_shot": zero.as_dict(), "finetuned": after.as_dict(),
               "gain": _gain(runner.compare(run, zero, after)),
               "train_seconds": meta.get("train_seconds"), "checkpoint": path.name}
        if policy["kind"] == "float" and policy is not ref:
            row["stochastic"] = self.stochastic(policy, tuned, zero, ref)
        return row

    def stochastic(self, policy: dict, tuned: dict, zero: Judged, ref: dict) -> dict:
        """``policy``'s accumulator rounding stochastically (module docstring): zero-shot
        and on the fine-tuned network, against ``ref``; the gain over the nearest-even
        zero-shot ``zero``."""
        seed = self.runner.spec.seed
        sr = {**policy, "acc": f"{policy['acc']}:sr", "sr_seed": seed}
        sr_zero = self._decision(sr, ref)
        sr_tuned = self._decision({**tuned, "acc": sr["acc"], "sr_seed": seed}, ref)
        return {"acc": sr["acc"], "seed": seed, "zero_shot": sr_zero.as_dict(), "finetuned": sr_tuned.as_dict(),
                "gain": _gain(self.runner.compare(self.run, zero, sr_zero))}

    def _decision(self, policy: dict, ref: dict) -> Judged:
        """``policy`` judged on the decision images (no screening: the table pairs both)."""
        return self.runner.judge(self.run, policy, ref, screen=False)
