"""A network's conv/linear layers as a ZigZag workload (one image, batch 1).

Each Conv2d becomes ZigZag's ``Conv`` (grouped ones one layer per group with a ``G``
dimension; depthwise: ``G`` = channels), each Linear a ``Gemm`` on a 1x1 output, with
the shapes the real modules see (forward hooks on a zero image of the dataset's size).
Operand precisions are bits of the stored values: ``I``/``W`` the operands, ``O`` the
partial sums while they accumulate (the accumulator format's bits), ``O_final`` the
output once written back (the operand format of the next layer).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layer", "layers_of", "zigzag_layer"]


@dataclass(frozen=True)
class Layer:
    """One conv/linear layer: output channels K, input channels C per group, groups G,
    output rows OY and columns OX, kernel FY x FX, stride, padding (rows, columns) and
    input rows IY and columns IX."""

    name: str
    k: int
    c: int
    g: int
    oy: int
    ox: int
    fy: int
    fx: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    iy: int
    ix: int

    @property
    def macs(self) -> int:
        return self.g * self.k * self.c * self.oy * self.ox * self.fy * self.fx

    @property
    def outputs(self) -> int:
        return self.g * self.k * self.oy * self.ox


def layers_of(model, image_size: int) -> list[Layer]:
    """The Conv2d/Linear layers of ``model`` in forward order, on one image."""
    from torch import nn

    from emulator.models import visit_layers

    found: list[Layer] = []

    def record(name, mod, x, out):
        if isinstance(mod, nn.Conv2d):
            g = mod.groups
            pad = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
            found.append(Layer(name, mod.out_channels // g, mod.in_channels // g, g, out.shape[-2], out.shape[-1],
                               *mod.kernel_size, tuple(mod.stride), tuple(pad), x.shape[-2], x.shape[-1]))
        else:
            found.append(Layer(name, mod.out_features, mod.in_features, 1, 1, 1, 1, 1, (1, 1), (0, 0), 1, 1))

    visit_layers(model, image_size, record)
    return found


def zigzag_layer(layer: Layer, index: int, *, operand_bits: int, psum_bits: int, output_bits: int) -> dict:
    """``layer`` as one entry of a ZigZag workload list (its ``id`` is ``index``)."""
    sy, sx = layer.stride
    py, px = layer.padding
    base = {"id": index, "name": layer.name,
            "operand_precision": {"I": operand_bits, "W": operand_bits, "O": psum_bits, "O_final": output_bits}}
    if layer.fy == layer.fx == layer.oy == layer.ox == 1 and layer.g == 1 and layer.iy == layer.ix == 1:
        return {**base, "operator_type": "Gemm", "equation": "O[b][k]+=W[k][c]*I[b][c]",
                "loop_dims": ["B", "K", "C"], "loop_sizes": [1, layer.k, layer.c]}
    return {**base, "operator_type": "Conv",
            "equation": "O[b][g][k][oy][ox]+=W[g][k][c][fy][fx]*I[b][g][c][iy][ix]",
            "dimension_relations": [f"ix={sx}*ox+1*fx", f"iy={sy}*oy+1*fy"],
            "loop_dims": ["B", "G", "K", "C", "OY", "OX", "FY", "FX"],
            "loop_sizes": [1, layer.g, layer.k, layer.c, layer.oy, layer.ox, layer.fy, layer.fx],
            "pr_loop_dims": ["IX", "IY"], "pr_loop_sizes": [layer.ix + 2 * px, layer.iy + 2 * py],
            "padding": [[px, px], [py, py]]}
