"""psum's PyTorch emulator: networks whose every MAC accumulates in a chosen format.

- :func:`quantize`: exact rounding of tensors into a format;
- :func:`matmul` / :func:`int_matmul`: matrix products whose every output element is
  a sequential dot product with partial sums in a chosen format;
- :class:`AccumConfig` / :class:`IntAccumConfig`: what one layer's MACs compute.
"""

from emulator.config import AccumConfig, IntAccumConfig
from emulator.matmul import int_matmul, matmul
from emulator.quantize import quantize

__all__ = ["quantize", "matmul", "int_matmul", "AccumConfig", "IntAccumConfig"]
