"""Vectorized rounding of torch tensors into a psum number format.

:func:`quantize` is the tensor form of :func:`psum.golden.round_to`: every element is
rounded exactly as ``docs/semantics.md`` says (ties, both rounding modes, subnormals
and flush-to-zero, overflow to Inf or saturation, signed zeros, Inf/NaN inputs). It
runs in the compiled CPU kernel (``emulator/kernels/psum_cpu.c``), or for CUDA
tensors in its Triton port (``emulator/triton_kernels.py``): bit manipulation on the
float64 pattern of each element, no per-element Python.
"""

from __future__ import annotations

import numpy as np
import torch

from emulator import _native
from psum.formats import FloatFormat, not_stochastic, parse

__all__ = ["quantize", "to_bits"]

_KERNELS = {torch.float32: "psum_quantize_f32", torch.float64: "psum_quantize_f64"}


def as_float_format(fmt: FloatFormat | str, role: str = "format") -> FloatFormat:
    """``fmt`` parsed, checked to be a floating-point format."""
    fmt = parse(fmt)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"{role} must be a floating-point format, not the integer format {fmt}")
    return fmt


def quantize(t: torch.Tensor, fmt: FloatFormat | str) -> torch.Tensor:
    """``t`` with every element rounded into ``fmt``; same shape, dtype and device.

    Parameters
    ----------
    t : torch.Tensor
        float32 or float64, on the CPU (compiled C kernel) or a CUDA GPU (Triton).
    fmt : FloatFormat or str
        Target format or its spec (``"e4m7"``, ``"bf16"``, ``"e5m2:sat"``...). Every
        value of the format must be representable in ``t``'s dtype (for float32:
        M <= 23 and exponents within float32's range), else ValueError.

    Examples
    --------
    >>> quantize(torch.tensor([0.1, 1000.0, -3.3]), "e4m3")  # 1000 > max 240: Inf
    tensor([ 0.1016,     inf, -3.2500])
    >>> quantize(torch.tensor([1000.0]), "e4m3:sat")  # saturating: no Inf, max 480
    tensor([480.])

    Returns a new tensor holding values of ``fmt`` (NaN results as float NaN).
    """
    fmt = as_float_format(fmt)
    not_stochastic(fmt, "quantize's format")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"quantize takes a torch.Tensor, not {type(t).__name__}")
    if t.dtype not in _KERNELS:
        raise TypeError(f"quantize takes float32 or float64 tensors, not {t.dtype}")
    if t.device.type == "cuda":
        from emulator.device import load_gpu_backend

        load_gpu_backend()
        from emulator.triton_kernels import triton_quantize

        return triton_quantize(t, fmt)
    if t.device.type != "cpu":
        raise ValueError(f"quantize runs on CPU or CUDA tensors; got a tensor on {t.device}")
    _native.check_fits(fmt, str(t.dtype).removeprefix("torch."))
    src = t.detach().contiguous()
    out = torch.empty_like(src)
    kernel = getattr(_native.library(), _KERNELS[t.dtype])
    kernel(src.data_ptr(), out.data_ptr(), src.numel(), _native.format_params(fmt),
           torch.get_num_threads())
    return out


def to_bits(values, fmt: FloatFormat | str) -> np.ndarray:
    """Bit patterns (uint64) of values that are exactly values of ``fmt``.

    The vectorized counterpart of ``fmt.encode`` for values already rounded (e.g. by
    :func:`quantize`): sign, exponent field and mantissa are read off exactly with
    ``frexp``/``ldexp`` in float64. NaN gives the format's NaN pattern.
    """
    from psum import golden

    fmt = as_float_format(fmt)
    v = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values,
                   dtype=np.float64)
    sign = np.signbit(v).astype(np.uint64) << np.uint64(fmt.exp_bits + fmt.man_bits)
    a = np.abs(v)
    finite = np.isfinite(a) & (a > 0)
    safe = np.where(finite, a, 1.0)
    exponent = np.frexp(safe)[1] - 1  # leading-bit exponent
    normal = exponent >= fmt.emin
    man_normal = np.ldexp(safe, fmt.man_bits - exponent) - 2.0 ** fmt.man_bits
    man_sub = np.ldexp(safe, fmt.man_bits - fmt.emin)
    field = np.where(normal, exponent + fmt.bias, 0).astype(np.int64)
    man = np.where(normal, man_normal, man_sub).astype(np.uint64)
    bits = sign | (field.astype(np.uint64) << np.uint64(fmt.man_bits)) | man
    bits = np.where(finite, bits, sign)  # zeros keep their sign
    bits = np.where(np.isinf(a), sign | np.uint64(golden.round_to(fmt, float("inf"))), bits)
    return np.where(np.isnan(a), np.uint64(golden.nan_pattern(fmt)), bits).astype(np.uint64)
