"""Fine-tuning through the emulated accumulation (docs/semantics.md §12).

A trained network is trained on for a few epochs with every MAC of a policy in the
forward pass: the forward value is the emulated one, bit for bit (what inference on
that accumulator computes); the backward pass is the float layer's gradient, a
straight-through estimator of the accumulator (:mod:`emulator.layers`). The recipe is
:func:`emulator.train.train`'s (BF16 autocast for the rest of the network, SGD with
Nesterov momentum, cosine schedule, checkpoints and resume) from the checkpoint's
weights, with a smaller learning rate. Integer policies are calibrated as
``psum eval`` calibrates them (:data:`CALIBRATION`), before every epoch and before the
final evaluation, so that ``psum eval --int-acc`` of the result reproduces its accuracy.
"""

from __future__ import annotations

from pathlib import Path

from emulator.config import IntAccumConfig
from emulator.train import TrainConfig, train

__all__ = ["finetune", "CALIBRATION"]

#: ``psum eval``'s default calibration of integer layers: this many training images in
#: batches of this size, drawn with this seed, observed on the policy's own network.
#: ``"on": "int32 reference"`` observes instead the same network with int32 accumulators
#: (the study's scales, reports.points.CALIBRATION).
CALIBRATION = {"images": 1000, "batch_size": 250, "seed": 0, "on": "policy"}


def _calibration(source, recipe: dict):
    """A function fixing a model's integer activation scales by ``recipe``."""
    import dataclasses

    from emulator.convert import calibrate, emulated_layers

    def run(model) -> None:
        layers = [m for _, m in emulated_layers(model) if isinstance(m.config, IntAccumConfig)]
        configs = [m.config for m in layers]
        if recipe["on"] == "int32 reference":
            for m in layers:
                m.config = dataclasses.replace(m.config, acc="int32", chunk=None)
        try:
            calibrate(model, [x for x, _ in source.batches(recipe["batch_size"], shuffle=True, seed=recipe["seed"],
                                                             limit=recipe["images"])])
        finally:
            for m, cfg in zip(layers, configs):
                m.config = cfg

    return run


def finetune(cfg: TrainConfig, init: str | Path, policy, source, out: str | Path, *,
             calibration: dict | None = None, **options) -> dict:
    """Train ``cfg.model`` from the checkpoint ``init`` through ``policy``'s emulated
    accumulation (module docstring) and write the checkpoint ``out``: the float
    network's weights, with ``finetuned_for`` (the policy) and ``init`` in its metadata
    and, given ``test_source``, the test accuracy under the policy. Integer layers are
    calibrated by ``calibration`` (default :data:`CALIBRATION`). ``options`` are
    :func:`~emulator.train.train`'s (test_source, progress, command, log, device, and
    overflow_penalty for integer accumulators)."""
    configs = [policy.default, *dict(policy.layers).values()]
    integer = any(isinstance(c, IntAccumConfig) for c in configs)
    recipe = calibration or CALIBRATION
    return train(cfg, source, out, init=init, policy=policy, calibration=_calibration(source, recipe) if integer
                 else None, **options)
