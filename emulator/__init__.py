"""psum's PyTorch emulator: networks whose every MAC accumulates in a chosen format.

So far: :func:`quantize`, exact vectorized rounding of tensors into a format.
"""

from emulator.quantize import quantize

__all__ = ["quantize"]
