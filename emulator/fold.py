"""Batch norm folded into the convolution (or Linear layer) before it, as deployed inference runs it.

A batch norm in eval mode that takes a ``Conv2d``'s (or a ``Linear``'s) output, and is
its only user, is an affine map per output channel c; folded into the layer it becomes
part of the weights the MACs multiply::

    s_c = gamma_c / sqrt(running_var_c + eps)
    w'_c = w_c * s_c          b'_c = (b_c - running_mean_c) * s_c + beta_c

so that an emulated network accumulates the products of the folded weights, as an
accelerator that deploys the folded network does (the bf16 or int8 rounding of the
weights then applies to ``w'``). Without folding, the conv's MACs use ``w`` and the
batch norm runs afterwards in fp32. The folding is PyTorch's own
(``torch.fx.experimental.optimization.fuse``, through ``fuse_conv_bn_eval``), which keeps
every layer's qualified name, so per-layer policies name the same layers either way.
"""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["fold_batchnorm", "count_batchnorms"]


def count_batchnorms(model: nn.Module) -> int:
    """Batch-norm layers (any dimension) in ``model``."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, int]:
    """``(folded copy in eval mode, batch norms folded, batch norms left)``.

    The copy computes the same function in float (up to float32 rounding of the folded
    weights); batch norms that follow no convolution or Linear layer are left as they are. The model
    must be traceable by ``torch.fx`` (no data-dependent control flow); one that is not
    is a ValueError naming the reason.
    """
    from torch.fx.experimental.optimization import fuse

    before = count_batchnorms(model)
    if before == 0:
        return copy.deepcopy(model).eval(), 0, 0
    try:
        folded = fuse(copy.deepcopy(model).eval(), inplace=True)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, ...) on untraceable code
        raise ValueError(f"cannot fold batch norm: torch.fx cannot trace {type(model).__name__} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'})") from None
    left = count_batchnorms(folded)
    return folded.eval(), before - left, left
