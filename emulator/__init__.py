"""psum's PyTorch emulator: networks whose every MAC accumulates in a chosen format.

- :func:`quantize`: exact rounding of tensors into a format;
- :func:`matmul` / :func:`int_matmul`: matrix products whose every output element is
  a sequential dot product with partial sums in a chosen format;
- :func:`dpu_matmul`: the same on a fused W-term dot-product unit (alignment,
  truncation, one rounding per group; docs/semantics.md §11);
- :class:`AccumConfig` / :class:`IntAccumConfig`: what one layer's MACs compute;
- :class:`EmulatedLinear` / :class:`EmulatedConv2d`: layers built on them;
- :func:`convert` with a :class:`Policy`: a model with every Linear/Conv2d emulated;
  :func:`calibrate` sets the activation scales of integer layers.
"""

from emulator.config import AccumConfig, IntAccumConfig
from emulator.convert import Policy, calibrate, convert
from emulator.dpu import dpu_matmul
from emulator.layers import EmulatedConv2d, EmulatedLinear
from emulator.matmul import int_matmul, matmul
from emulator.quantize import quantize

__all__ = ["quantize", "matmul", "int_matmul", "dpu_matmul", "AccumConfig", "IntAccumConfig",
           "EmulatedLinear", "EmulatedConv2d", "Policy", "convert", "calibrate"]
