"""Where emulation runs: the CPU kernel, or the Triton kernels on a CUDA GPU.

A GPU is only ever used when asked for (``device="cuda"``, ``--device cuda``); asking
for one that is not there, or without Triton installed, is a :class:`DeviceError`,
never a silent run on the CPU. Both backends compute the same bits
(docs/emulator.md, "GPU").
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeviceError", "resolve_device", "model_device", "load_gpu_backend"]


class DeviceError(RuntimeError):
    """The requested device cannot run psum's emulation."""


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``"cpu"`` (the default), ``"cuda"`` or ``"cuda:N"``, checked to be usable."""
    if spec is None:
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {spec!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"psum emulates on cpu or cuda, not {device.type}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} asked for, but PyTorch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} "
                          "CUDA GPU(s) are visible")
    load_gpu_backend()
    return device


def load_gpu_backend() -> None:
    """Register the Triton kernels for CUDA tensors (a DeviceError without Triton)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise DeviceError("emulating on a GPU needs Triton: pip install 'psum[gpu]' "
                          "(or the triton that matches your PyTorch)") from None
    import emulator.triton_kernels  # noqa: F401  (registers the "cuda" backend)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
