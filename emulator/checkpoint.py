"""Checkpoints: weights plus the metadata that says what they are.

A psum checkpoint is a ``torch.save`` of a dict of tensors and plain values, read back
with ``torch.load(..., weights_only=True)`` (no code runs on load)::

    {"format": "psum-checkpoint", "version": 1,
     "meta": {"model", "dataset", "epochs", "seed", "accuracy", "psum_version", "command", ...},
     "state_dict": {...},            # the weights (float32, or bfloat16 when exported so)
     "training": {...}}              # optimizer, schedule, RNG, position; only while training

A plain ``state_dict`` file (e.g. torchvision's ``resnet18-f37072fd.pth``) loads too.
Writes are atomic (temporary file, then rename), so an interrupted save never leaves a
truncated checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "save", "read", "load_model"]

FORMAT = "psum-checkpoint"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not fit the model."""


def save(path: str | os.PathLike, state_dict: dict, meta: dict, training: dict | None = None,
         weights_dtype: torch.dtype = torch.float32) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.to(weights_dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    blob = {"format": FORMAT, "version": 1, "meta": dict(meta, weights_dtype=str(weights_dtype)),
            "state_dict": weights}
    if training is not None:
        blob["training"] = training
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide checkpoints from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read(path: str | os.PathLike) -> dict:
    """The checkpoint's dict; a plain state_dict comes back as ``{"state_dict": ..., "meta": {}}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint (a torch.save file): "
                              f"{type(exc).__name__}{': ' + first if first else ''}") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        _check_psum_checkpoint(path, blob)
        return blob
    if isinstance(blob, dict) and blob and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in blob.items()):
        return {"state_dict": blob, "meta": {}}
    raise CheckpointError(f"{path} holds neither a psum checkpoint nor a state_dict")


def _check_psum_checkpoint(path: Path, blob: dict) -> None:
    """A psum checkpoint must hold what :func:`save` writes, with the right types."""
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} is a psum checkpoint without weights (its 'state_dict' is "
                              f"{type(state).__name__ if state is not None else 'missing'})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a tensor")
    if not isinstance(blob.get("meta", {}), dict):
        raise CheckpointError(f"{path}: 'meta' must be a dict, not {type(blob['meta']).__name__}")
    blob.setdefault("meta", {})
    if "training" in blob and not isinstance(blob["training"], dict):
        raise CheckpointError(f"{path}: 'training' must be a dict, not {type(blob['training']).__name__}")
    for key in ("model", "dataset"):
        value = blob["meta"].get(key)
        if value is not None and not isinstance(value, str):
            raise CheckpointError(f"{path}: meta {key!r} must be a string, not {value!r}")


def load_model(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load the checkpoint's weights into ``model`` (float32); returns its metadata."""
    blob = read(path)
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        missing = str(exc).strip().splitlines()
        raise CheckpointError(f"{path} does not fit the model: {' '.join(missing[:2])[:300]}") from None
    return blob["meta"]
