"""Write ``torchvision_resnet18.json``: torchvision's own ResNet-18, as an oracle for psum's.

What it records, from ``torchvision.models.resnet18()`` itself:

- every ``state_dict`` key with its shape and dtype, in torchvision's order;
- the logits torchvision's network gives, in eval mode, for the deterministic weights
  of :func:`reference_weights` on the deterministic inputs of :func:`reference_inputs`.

``tests/test_models_data.py`` loads the same weights, saved as a plain state_dict file,
into ``psum``'s ``resnet18-imagenet`` through ``--checkpoint`` and compares. The test
uses torchvision directly where it imports; this file stands in where it does not.

PyPI's torchvision wheels are CUDA builds whose C extension fails to load beside a CPU
torch; the extension only carries detection operators (nms, roi_align), and
torchvision's module import then stops at registering their fake kernels. Run with
``--tolerate-missing-ops`` there: those registrations are skipped (no model code changes).

    python tests/data/make_torchvision_resnet18.py [--tolerate-missing-ops]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

OUT = Path(__file__).with_name("torchvision_resnet18.json")
INPUTS = 2
SEED = 20261206


def reference_weights(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Deterministic weights for a ResNet-18 state_dict layout, key by key.

    Each key's tensor comes from its own generator seeded with ``SEED`` plus its position,
    so the weights depend only on the layout. Convolution and linear weights are
    He-scaled normals, batch-norm scales near 1, variances in [0.5, 1.5), counters 0.
    """
    weights = {}
    for i, (key, (shape, dtype)) in enumerate(shapes.items()):
        gen = torch.Generator().manual_seed(SEED + i)
        if not dtype.is_floating_point:
            weights[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            weights[key] = 0.5 + torch.rand(shape, generator=gen)
        elif len(shape) > 1:
            fan_in = math.prod(shape[1:])
            weights[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key.endswith(".weight"):
            weights[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            weights[key] = 0.1 * torch.randn(shape, generator=gen)
    return weights


def reference_inputs() -> torch.Tensor:
    """Two 224x224 RGB inputs, already normalized (standard normal)."""
    return torch.randn(INPUTS, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))


def layout(state_dict: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()}


def import_torchvision(tolerate_missing_ops: bool):
    if tolerate_missing_ops:
        import torch.library
        register_fake = torch.library.register_fake

        def skip_torchvision_ops(op, *args, **kwargs):
            if isinstance(op, str) and op.startswith("torchvision::"):
                return lambda fn: fn
            return register_fake(op, *args, **kwargs)

        torch.library.register_fake = skip_torchvision_ops
    import torchvision
    return torchvision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerate-missing-ops", action="store_true")
    args = parser.parse_args()
    torchvision = import_torchvision(args.tolerate_missing_ops)
    net = torchvision.models.resnet18().eval()
    shapes = layout(net.state_dict())
    net.load_state_dict(reference_weights(shapes))
    with torch.no_grad():
        logits = net(reference_inputs())
    entries = [json.dumps([k, list(s), str(d).removeprefix("torch.")]) for k, (s, d) in shapes.items()]
    rows = [json.dumps([float(f"{x:.9g}") for x in row]) for row in logits.tolist()]
    OUT.write_text(
        "{\n"
        f'"made_by": "torchvision {torchvision.__version__}, torch {torch.__version__}",\n'
        f'"seed": {SEED},\n'
        '"state_dict": [\n' + ",\n".join(entries) + "\n],\n"
        '"logits": [\n' + ",\n".join(rows) + "\n]\n}\n")
    print(f"{OUT}: {len(shapes)} keys, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
