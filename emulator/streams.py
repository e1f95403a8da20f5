"""Operand streams: what one MAC unit of a layer consumes, taken from a real network.

A stream is one output element's dot product, its K operand pairs in the accumulation
order of docs/semantics.md §7 (im2col order for convolutions): activation ``a[k]`` and
weight ``b[k]`` as bit patterns. :func:`operand_streams` samples output elements of a
layer (image, position and output channel drawn with a fixed seed) on real inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emulator.layers import symmetric_quantize
from emulator.models import layer_macs
from emulator.quantize import quantize, to_bits

__all__ = ["operand_streams", "largest_layer", "stream_results"]


def _capture(model: nn.Module, name: str, batch: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    modules = dict(model.named_modules())
    layer = modules.get(name)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        choices = ", ".join(n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear)))
        raise ValueError(f"layer {name!r} is not a Conv2d/Linear of the model; choose from {choices}")
    seen = []
    handle = layer.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    model.eval()
    with torch.no_grad():
        model(batch)
    handle.remove()
    return layer, seen[0]


def _columns(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, G, L, K) activations per group and output position and (O, K) weights, in
    im2col order: output channel o's dot products read group o // (O / G) (G = 1 for
    linear layers and ungrouped convolutions; a depthwise convolution has G = C)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(x.shape[0], 1, 1, -1), layer.weight.detach().reshape(layer.out_features, -1)
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, G*K, L)
    cols = cols.view(x.shape[0], layer.groups, -1, cols.shape[-1]).transpose(2, 3)  # rows of a group are adjacent
    return cols, layer.weight.detach().reshape(layer.out_channels, -1)


def dot_rows(acts: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Index of each output channel ``out``'s group in :func:`_columns`'s activations."""
    return out // (weights.shape[0] // acts.shape[1])


def largest_layer(model: nn.Module, image_size: int) -> str:
    """The Conv2d/Linear layer with the most MACs per image."""
    macs = layer_macs(model, image_size)
    return max(macs, key=macs.get)


def operand_streams(model: nn.Module, layer: str, batch: torch.Tensor, count: int, *, seed: int = 0,
                    inputs="bf16", weights=None, int_bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` streams of ``layer`` on ``batch``: (count, K) uint64 arrays of patterns.

    Float MACs: activations rounded to ``inputs`` and weights to ``weights`` (default
    ``inputs``). Integer MACs (``int_bits``): symmetric quantization as the emulator's
    integer layers do it (weights per output channel, activations per tensor with the
    batch's largest magnitude), two's-complement patterns of ``int_bits`` bits.
    """
    mod, x = _capture(model, layer, batch)
    acts, w = _columns(mod, x.float())  # (N, G, L, K), (O, K)
    n, _, positions, k = acts.shape
    rng = np.random.default_rng(seed)
    img, pos, out = rng.integers(0, n, count), rng.integers(0, positions, count), rng.integers(0, w.shape[0], count)
    out = torch.from_numpy(out)
    a_vals = acts[torch.from_numpy(img), dot_rows(acts, w, out), torch.from_numpy(pos)]  # (count, K)
    b_vals = w[out]  # (count, K)
    if int_bits is not None:
        limit = (1 << (int_bits - 1)) - 1
        a_scale = acts.abs().max().clamp(min=1e-30) / limit
        w_scale = w.abs().amax(dim=1).clamp(min=1e-30) / limit
        a_int = symmetric_quantize(a_vals, a_scale, int_bits).numpy().astype(np.int64)
        b_int = symmetric_quantize(b_vals, w_scale[out][:, None], int_bits).numpy().astype(np.int64)
        mask = (1 << int_bits) - 1
        return (a_int & mask).astype(np.uint64), (b_int & mask).astype(np.uint64)
    weights = inputs if weights is None else weights
    return (to_bits(quantize(a_vals.double(), inputs), inputs), to_bits(quantize(b_vals.double(), weights), weights))


def _pattern_values(bits: np.ndarray, fmt) -> torch.Tensor:
    """float64 values of ``fmt`` bit patterns (exact, by psum.golden)."""
    from psum import golden

    unique, index = np.unique(bits, return_inverse=True)
    values = np.array([float(golden.decode(fmt, int(u))) for u in unique], dtype=np.float64)
    return torch.from_numpy(values[index].reshape(bits.shape))


def _signed(bits: np.ndarray, width: int) -> torch.Tensor:
    v = bits.astype(np.int64)
    return torch.from_numpy(np.where(v >= 1 << (width - 1), v - (1 << width), v))


def stream_results(a: np.ndarray, b: np.ndarray, *, acc, inputs="bf16", weights=None, chunk=None,
                   chunk_acc=None, int_bits: int | None = None, block: int = 256) -> np.ndarray:
    """The pattern a MAC leaves in its output after each stream: the emulator's dot
    product of row s of ``a`` with row s of ``b`` (S, K patterns, as
    :func:`operand_streams` gives them), accumulated as docs/semantics.md §4-6 define.

    Float streams (``inputs``/``weights`` formats) -> patterns of ``chunk_acc`` when
    chunked, else of ``acc``; integer streams (``int_bits``-bit two's complement) ->
    two's-complement patterns of the integer accumulator (or ``chunk_acc``). Computed
    in blocks of ``block`` streams as the diagonal of each block's matmul.
    """
    from psum.formats import IntFormat, parse
    from emulator.matmul import int_matmul, matmul

    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be (streams, K) arrays of the same shape, not {a.shape} and {b.shape}")
    if int_bits is not None:
        fmt = parse(chunk_acc if chunk else acc)
        if not isinstance(fmt, IntFormat):
            raise ValueError(f"integer streams need an integer accumulator, not {fmt}")
        x, y = _signed(a, int_bits), _signed(b, int_bits)
        run = lambda xa, yb: int_matmul(xa, yb, acc, chunk=chunk, chunk_acc=chunk_acc or "int32")  # noqa: E731
    else:
        weights = inputs if weights is None else weights
        fmt = parse(chunk_acc if chunk else acc)
        x, y = _pattern_values(a, inputs), _pattern_values(b, weights)
        run = lambda xa, yb: matmul(xa, yb, acc, inputs=inputs, weights=weights, chunk=chunk,  # noqa: E731
                                    chunk_acc=chunk_acc or "fp32")
    out = []
    for start in range(0, a.shape[0], block):
        xa, yb = x[start:start + block], y[start:start + block]
        out.append(torch.diagonal(run(xa, yb.T.contiguous())))
    values = torch.cat(out)
    if int_bits is not None:
        return (values.numpy().astype(np.int64) & ((1 << fmt.bits) - 1)).astype(np.uint64)
    return to_bits(values, fmt)
