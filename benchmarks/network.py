"""Whole networks against the kernel: the time an emulated network's evaluation takes
next to the time its MACs take in the kernel benchmark, and the float network's time.

For each model and accumulator it prints, measured in one run: the whole-network
evaluation time of ``--images`` test images (``emulator.evaluate``, batches of
``--batch-size``), the kernel time of the same MACs (each layer's matmul, rows =
images x output pixels, through ``emulator.matmul.emulated_matmul`` on random operands,
as ``benchmarks/matmul.py`` measures it, one batch's worth timed and scaled to the
images), their ratio, and the float network's time on the same images.

    python benchmarks/network.py [--models lenet5 alexnet-cifar] [--images 2000] [--acc e4m7 fp32 int18 int17:sat]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from _machine import machine_line, timed
from emulator import AccumConfig, IntAccumConfig, calibrate, checkpoint, convert, data
from emulator.evaluate import evaluate
from emulator.matmul import emulated_int_matmul, emulated_matmul
from psum.formats import IntFormat, parse
from emulator.models import build

CHECKPOINTS = {"lenet5": "checkpoints/lenet5-cifar10.pt", "alexnet-cifar": "checkpoints/alexnet-cifar-cifar10.pt"}


def layer_shapes(model: nn.Module, image_size: int) -> list[tuple[str, int, int, int, int]]:
    """(name, rows per image, K, outputs per group, groups) of every MAC layer."""
    shapes = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                g = module.groups
                k = module.in_channels // g * module.kernel_size[0] * module.kernel_size[1]
                shapes.append((name, output.shape[2] * output.shape[3], k, module.out_channels // g, g))
            else:
                shapes.append((name, 1, module.in_features, module.out_features, 1))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    return shapes


def kernel_seconds(shapes, cfg: AccumConfig | IntAccumConfig, images: int, batch: int, repeat: int) -> float:
    """Seconds the layers' matmuls take in the kernel benchmark for ``images`` images
    (integer accumulators: int8-range operands through emulated_int_matmul)."""
    total = 0.0
    gen = torch.Generator().manual_seed(0)
    for _, rows, k, outputs, groups in shapes:
        if isinstance(cfg, IntAccumConfig):
            a = torch.randint(-127, 128, (rows * batch, k), generator=gen, dtype=torch.int32)
            b = torch.randint(-127, 128, (k, outputs), generator=gen, dtype=torch.int32)
            run = lambda: emulated_int_matmul(a, b, cfg)  # noqa: E731
        else:
            a = torch.randn(rows * batch, k, generator=gen)
            b = torch.randn(k, outputs, generator=gen) * k ** -0.5
            run = lambda: emulated_matmul(a, b, cfg)  # noqa: E731
        run()  # warm-up
        best = min(timed(run) for _ in range(repeat))
        total += best * groups * images / batch
    return total


def emulated_network(model: nn.Module, spec: str, source, batch: int):
    """``model`` with every MAC in ``spec`` (an integer accumulator: int8 operands,
    calibrated on the first batch)."""
    if isinstance(parse(spec), IntFormat):
        x, _ = next(source.batches(batch))
        return calibrate(convert(model, IntAccumConfig(acc=spec)), [x])
    return convert(model, AccumConfig(acc=spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CHECKPOINTS))
    parser.add_argument("--acc", nargs="+", default=["e4m7", "e5m10", "fp32", "int18"],
                        help="accumulators; intN (int8 operands, calibrated on one batch) too")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    print(machine_line())
    real = (Path(args.data_dir) / "cifar10").is_dir()
    print(f"{args.images} {'real CIFAR-10' if real else 'synthetic CIFAR-shaped'} test images, batches of "
          f"{args.batch_size}, bf16 inputs; kernel = the same matmuls through emulated_matmul, best of {args.repeat}")
    print("| model | accumulator | G MACs | network s | kernel s | network / kernel | network GMAC/s "
          "| float network s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, dataset = build(name)
        if Path(CHECKPOINTS[name]).is_file():
            checkpoint.load_model(CHECKPOINTS[name], model)
        source = data.load(dataset, "test", args.data_dir) if real else data.synthetic(dataset, args.images)
        shapes = layer_shapes(model, data.DATASETS[dataset].image_size)
        macs = sum(rows * k * outputs * groups for _, rows, k, outputs, groups in shapes) * args.images
        evaluate(model, source, limit=args.batch_size, batch_size=args.batch_size)
        float_s = min(evaluate(model, source, limit=args.images, batch_size=args.batch_size).seconds
                      for _ in range(args.repeat))
        for spec in args.acc:
            emulated = emulated_network(model, spec, source, args.batch_size)
            cfg = IntAccumConfig(acc=spec) if isinstance(parse(spec), IntFormat) else AccumConfig(acc=spec)
            evaluate(emulated, source, limit=args.batch_size, batch_size=args.batch_size)  # warm-up
            network_s = min(evaluate(emulated, source, limit=args.images, batch_size=args.batch_size).seconds
                            for _ in range(args.repeat))
            kernel_s = kernel_seconds(shapes, cfg, args.images, args.batch_size, args.repeat)
            print(f"| {name} | {spec} | {macs / 1e9:.2f} | {network_s:.2f} | {kernel_s:.2f} | "
                  f"{network_s / kernel_s:.2f} | {macs / network_s / 1e9:.2f} | {float_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
