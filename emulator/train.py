"""BF16 training of the study's networks, with periodic checkpoints and resume.

Recipe (documented defaults of :class:`TrainConfig`): BF16 mixed precision
(``torch.autocast`` with bfloat16 on the training device, float32 master weights), SGD with Nesterov
momentum 0.9 and weight decay 5e-4, a cosine learning-rate schedule per step from
``lr`` to 0 after a linear warm-up over the first epoch's first 1/10, cross-entropy
loss, CIFAR augmentation (4-pixel padded random crop, horizontal flip). Everything
random is seeded from ``seed``: the batch order and augmentation of epoch ``e`` come
from ``seed * 1000 + e``, dropout from torch's generator, whose state is checkpointed.

A partial checkpoint (``<out>.partial``) is written every ``checkpoint_every`` steps
and at the end of each epoch; a later run with the same configuration resumes from it
and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from emulator import checkpoint
from emulator.models import build

__all__ = ["TrainConfig", "train", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf: the weights are lost for this learning rate."""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    dataset: str | None = None  # default: the model's first dataset
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.1  # epochs of linear warm-up
    seed: int = 0
    bf16: bool = True
    limit: int | None = None  # train on the first N shuffled images only
    checkpoint_every: int = 200  # steps

    def __post_init__(self):
        for name in ("epochs", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive finite number, not {self.lr!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit must be a positive integer or None, not {self.limit!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in 0..2^63-1, not {self.seed!r}")


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = max(1, round(cfg.warmup * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class _Progress:
    """Progress of a long loop on stderr: redrawn in place on a terminal; elsewhere (a
    log file, a pipe, CI) one plain line every ``every`` seconds and at the end, so that
    a redirected log stays one line per report. (tqdm and rich redraw with carriage
    returns or stay silent off a terminal; neither writes periodic plain lines.)"""

    def __init__(self, total: int, label: str, enabled: bool, *, every: float = 30.0, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else every
        self.start, self.last = time.monotonic(), None

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (self.last is not None and now - self.last < self.every and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        line = f"{self.label} {done}/{self.total} [{now - self.start:.0f}s<{eta:.0f}s] {note}".rstrip()
        if self.tty:
            self.stream.write(f"\r{line}  " + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def train(cfg: TrainConfig, source, out: str | Path, *, test_source=None, progress: bool = True,
          command: str = "", log=print, device: str | torch.device | None = None, init: str | Path | None = None,
          policy=None, calibration=None, overflow_penalty: float = 0.0) -> dict:
    """Train ``cfg.model`` on ``source`` and write the checkpoint ``out``.

    Resumes from ``<out>.partial`` when one with the same configuration exists. Returns
    the final metadata (with the test accuracy when ``test_source`` is given).
    ``device`` "cuda" trains on a GPU (bf16 autocast there, deterministic cuDNN
    algorithms; the result is not bit-identical to a CPU run, and a resumed GPU run
    draws dropout from CUDA's generator, which is not checkpointed).

    Fine-tuning (:func:`emulator.finetune.finetune`): ``init`` starts from that
    checkpoint's weights; ``policy`` (an :class:`emulator.Policy`) trains through the
    emulated accumulation (forward bit for bit the policy's, backward the float layer's
    gradient: docs/semantics.md §12) and evaluates under it; ``calibration`` (a function
    of the model) fixes integer layers' activation scales before each epoch and before
    the evaluation; ``overflow_penalty`` (lambda) adds lambda times the sum of integer
    layers' :meth:`~emulator.layers.EmulatedConv2d.overflow` to the loss. The
    checkpoint holds the float network's weights, loadable by ``psum eval``.
    """
    from emulator.device import resolve_device
    from emulator.evaluate import evaluate

    device = resolve_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    torch.manual_seed(cfg.seed)
    model, dataset = build(cfg.model, cfg.dataset)
    float_keys = set(model.state_dict())
    if init is not None:
        checkpoint.load_model(init, model)
    penalized = []
    if policy is not None:
        from emulator.convert import convert, emulated_layers

        model = convert(model, policy)
        from emulator.config import IntAccumConfig

        if overflow_penalty:
            penalized = [m for _, m in emulated_layers(model) if isinstance(m.config, IntAccumConfig)]
        for m in penalized:
            m.penalize_overflow = True
    model.to(device)
    recalibrate = calibration or (lambda m: None)
    recalibrate(model)  # before a resumed state is loaded: integer layers' scale buffers exist
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=True)
    n = len(source) if cfg.limit is None else min(cfg.limit, len(source))
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step = 0
    config = dict(asdict(cfg), dataset=dataset)
    if init is not None or policy is not None:
        config.update(init=str(init), policy=str(policy))
    if overflow_penalty:
        config.update(overflow_penalty=overflow_penalty)
    if partial.exists():
        blob = checkpoint.read(partial)
        if blob["meta"].get("train_config") != config:
            raise checkpoint.CheckpointError(f"{partial} was written by a different training configuration; "
                                             "delete it or use the same options")
        try:
            model.load_state_dict(blob["state_dict"])
            optimizer.load_state_dict(blob["training"]["optimizer"])
            torch.set_rng_state(blob["training"]["rng"])
            step = int(blob["training"]["step"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise checkpoint.CheckpointError(f"{partial} cannot be resumed from ({type(exc).__name__}: "
                                             f"{str(exc).strip()[:200]}); delete it to start afresh") from None
        log(f"resuming {partial} at step {step}/{total}")

    def save_partial() -> None:
        checkpoint.save(partial, model.state_dict(), {"train_config": config},
                        training={"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                                  "step": step})

    loss_fn = nn.CrossEntropyLoss()
    bar = _Progress(total, f"train {cfg.model}/{dataset}", progress)
    started = time.monotonic()
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        if skip == 0 and step > 0:
            recalibrate(model)
        model.train()
        batches = source.batches(cfg.batch_size, shuffle=True, augment=True,
                                 seed=cfg.seed * 1000 + epoch, limit=n)
        running, seen = 0.0, 0
        for index, (x, y) in enumerate(batches):
            if index < skip:
                continue  # resumed mid-epoch: the same batches, already trained on
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, step, total, steps_per_epoch)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = loss_fn(model(x), y)
            objective = loss
            if penalized:  # the integer layers' overflow, recorded by this forward pass
                objective = loss + overflow_penalty * sum(m.last_overflow for m in penalized
                                                          if m.last_overflow is not None)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if not (torch.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in model.parameters())):
                raise TrainingDiverged(f"training diverged at step {step + 1}/{total} (epoch {epoch + 1}): loss "
                                       f"{loss.item():.4g}, and the weights are no longer finite; lower --lr ("
                                       + (f"{partial.name} holds the weights of an earlier step)" if partial.exists()
                                          else "no partial checkpoint was written yet)"))
            step += 1
            running, seen = running + loss.item() * len(y), seen + len(y)
            bar.update(step, f"epoch {epoch + 1}/{cfg.epochs} loss {running / seen:.3f}")
            if step % cfg.checkpoint_every == 0:
                save_partial()
        save_partial()
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {running / max(seen, 1):.4f}")
    meta = {"model": cfg.model, "dataset": dataset, "epochs": cfg.epochs, "seed": cfg.seed,
            "train_config": config, "train_seconds": round(time.monotonic() - started, 1),
            "command": command, "device": str(device)}
    from psum import __version__

    meta["psum_version"] = __version__
    if policy is not None:
        meta.update(finetuned_for=str(policy), init=str(init))
    with torch.no_grad():  # the checkpoint holds bf16 weights: evaluate exactly those
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.to(torch.bfloat16).float())
    recalibrate(model)
    if test_source is not None:
        result = evaluate(model, test_source, progress=progress)
        meta["accuracy"] = result.top1
        meta["test_images"] = result.total
    weights = {k: v for k, v in model.state_dict().items() if k in float_keys}  # the float network's
    checkpoint.save(out, weights, meta, weights_dtype=torch.bfloat16)
    partial.unlink(missing_ok=True)
    return meta
