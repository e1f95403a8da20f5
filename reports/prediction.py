"""Prediction beside measurement: how much error each layer's accumulation makes, on the
network's real operands, against exact sums (docs/study.md, "Prediction").

For every conv/linear layer, on the inputs it sees in the float network (``images``
test images of the decision set):

- ``K``: the accumulation length (``in_features``; ``C_in * kh * kw``);
- ``operand_nmse``: the normalized mean-squared error that rounding the operands to the
  study's input format already makes: ``||y(bf16 operands) - y(fp32 operands)||^2 /
  ||y(fp32 operands)||^2``, both summed exactly (float64);
- per accumulator ``e<E>m<M>`` (E of the network's minimum): ``nmse[M]``, the
  normalized mean-squared error of the emulated layer against the exact (float64) sum of
  the same rounded operands;
- the **predicted minimal M**: the smallest M whose ``nmse`` is at most ``operand_nmse``
  (accumulation adds no more error than operand rounding already made); the network's
  prediction is the largest over its layers;
- ``scaling``: ``nmse * 2^(2M) / K`` over the M without overflow; constant if the error
  grows as ``K 2^(-2M)`` (round-to-nearest, independent zero-mean rounding errors), and
  the least-squares slope of ``log2 nmse`` against M (-2 under that model);
- for the first failing format of the network, per layer: ``nmse`` relative to
  ``operand_nmse``, the fraction of outputs that overflowed (non-finite or at the
  largest finite magnitude), that became zero where the exact sum is not, and the
  fraction of nonzero addends **swamped**: smaller than half an ulp (at the format's M)
  of the exact running sum they are added to, so that a round-to-nearest add would drop
  them entirely (measured on ``SAMPLES`` dot products per layer).
"""

from __future__ import annotations

import math

import numpy as np

from reports.points import Runner, _model, _source
from reports.search import best_fp, exponent, mantissa
from reports.spec import ModelRun

__all__ = ["predict", "IMAGES", "SAMPLES"]

#: Test images (the first of the decision images) whose layer inputs are measured.
IMAGES = 32
#: Dot products per layer sampled for the swamping count.
SAMPLES = 512


def _layer_inputs(model, x) -> dict:
    import torch
    from torch import nn

    seen = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].detach()))
               for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _exact(module, x, weight):
    """The layer's output with float64 sums (bias excluded)."""
    import torch.nn.functional as F
    from torch import nn

    x, weight = x.double(), weight.double()
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def _nmse(y, exact) -> float:
    import torch

    y = y.double()
    err = torch.where(torch.isfinite(y), y - exact, torch.full_like(y, float("inf")))
    return float((err ** 2).sum() / (exact ** 2).sum().clamp_min(1e-300))


def _emulated(module, x, acc: str, inputs: str):
    """The layer alone with accumulator ``acc`` (bias removed), on ``x``."""
    import copy

    import torch

    from emulator import AccumConfig, convert

    bare = copy.deepcopy(module)
    bare.bias = None
    with torch.no_grad():
        return convert(bare, AccumConfig(acc=acc, inputs=inputs))(x)


def _addends(module, x, weight, samples: int, seed: int):
    """(samples, K) float64 products of sampled dot products, in the im2col order."""
    import torch

    from emulator.streams import _columns, dot_rows

    gen = torch.Generator().manual_seed(seed)
    acts, _ = _columns(module, x.double())  # (N, G, L, K)
    rows = acts.transpose(0, 1).reshape(acts.shape[1], -1, acts.shape[-1])  # (G, N*L, K)
    w = weight.reshape(weight.shape[0], -1).double()
    i = torch.randint(0, rows.shape[1], (samples,), generator=gen)
    o = torch.randint(0, w.shape[0], (samples,), generator=gen)
    return rows[dot_rows(acts, w, o), i] * w[o]


def _swamped(products, m: int) -> float:
    """Fraction of nonzero addends below half an ulp (M = ``m``) of the exact running sum."""
    import torch

    before = torch.cumsum(products, dim=1) - products  # exact partial sum each addend meets
    ulp = torch.where(before != 0, torch.exp2(torch.floor(torch.log2(before.abs())) - m), torch.zeros_like(before))
    nonzero = products != 0
    swamped = nonzero & (products.abs() < ulp / 2)
    return float(swamped.sum() / nonzero.sum().clamp_min(1))


def predict(runner: Runner, run: ModelRun, found: dict) -> dict:
    """The per-layer error table of ``run`` (see the module docstring)."""
    import torch

    from emulator.quantize import quantize
    from psum.formats import parse

    spec = runner.spec
    tol = min(spec.tolerances)
    best = best_fp(found, tol)
    if best is None:
        return {}
    e = exponent(best)
    model, dataset = _model(run.ref, run.dataset, run.checkpoint, spec.fold_bn)
    test = _source(dataset, "test", spec.data_dir, spec.download)
    x, _ = next(test.batches(IMAGES, indices=runner.images[run.name].decision[:IMAGES]))
    inputs = _layer_inputs(model, x)
    modules = dict(model.named_modules())
    fmt = parse(spec.inputs)
    failing = f"e{e}m{mantissa(best) - 1}{spec.mode}" if mantissa(best) > 0 else None
    layers = {}
    for name, xin in inputs.items():
        module = modules[name]
        weight = module.weight.detach()
        xq, wq = quantize(xin.float(), fmt), quantize(weight.float(), fmt)
        exact_fp32 = _exact(module, xin, weight)
        exact = _exact(module, xq, wq)
        operand = _nmse(exact, exact_fp32)
        k = weight[0].numel()
        nmse = {}
        for acc in spec.candidates(e):
            nmse[mantissa(acc)] = _nmse(_emulated(module, xin.float(), acc, spec.inputs), exact)
        finite = [(m, v) for m, v in nmse.items() if 0 < v < 1]
        predicted = next((m for m, v in sorted(nmse.items()) if v <= operand), None)
        entry = {"K": k, "operand_nmse": operand, "nmse": nmse, "predicted_m": predicted}
        if len(finite) >= 2:
            ms, logs = np.array([m for m, _ in finite]), np.log2([v for _, v in finite])
            entry["slope_log2_nmse_per_m"] = float(np.polyfit(ms, logs, 1)[0])
            entry["nmse_over_k_2^-2m"] = {m: v * 2 ** (2 * m) / k for m, v in finite}
        if failing:
            y = _emulated(module, xin.float(), failing, spec.inputs).double()
            big = float(parse(failing).max_finite)
            entry["failing"] = {
                "format": failing, "nmse_over_operand": nmse[mantissa(failing)] / operand if operand else math.inf,
                "overflow": float((~torch.isfinite(y) | (y.abs() >= big)).double().mean()),
                "zeroed": float(((y == 0) & (exact != 0)).double().mean()),
                "swamped": _swamped(_addends(module, xq, wq, SAMPLES, spec.seed), mantissa(failing)),
            }
        layers[name] = entry
    predicted = [v["predicted_m"] for v in layers.values()]
    return {"exp_bits": e, "images": IMAGES, "samples": SAMPLES, "failing": failing, "layers": layers,
            "network_predicted_m": None if None in predicted else max(predicted),
            "measured_m": mantissa(best), "measured_format": best, "tolerance": tol}

