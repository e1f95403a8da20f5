"""The GPU (Triton) backend on a real GPU: exactness against the CPU kernel, then speed.

One script for a short lease of a GPU machine; it installs nothing and runs from the
repository root (``PYTHONPATH=.``). In order, it prints and writes to ``--out``:

1. exactness: the Triton kernels against the CPU kernel, bit for bit, for 14 float
   accumulators (every mode), chunked and unfused MACs, 6 integer accumulators and 3
   fused dot-product units (docs/semantics.md §11), on random shapes with special
   operands; the count of differing outputs (must be 0);
2. speed on one layer shape: GMAC/s of the Triton kernel for a few accumulators and
   launch shapes and of a Hopper-like unit (W = 32, L = 13, e4m3 operands), against
   native ``torch.matmul`` in fp32 and bf16 on the same GPU;
3. the wall time to evaluate LeNet5 and ResNet18-CIFAR on N images (synthetic unless
   ``--data-dir`` holds CIFAR-10) with an e4m7 accumulator, with the CPU kernel's time
   on a slice of the images for comparison.

    PYTHONPATH=. python3 benchmarks/gpu.py [--out gpu.json] [--images 10000]

Without a GPU, ``TRITON_INTERPRET=1 python benchmarks/gpu.py --smoke`` runs the same
steps on tiny sizes through Triton's interpreter (checks the script, not the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from emulator import AccumConfig, IntAccumConfig, Policy, convert, quantize
from emulator.config import DotUnit
from emulator.dpu import dpu_matmul
from emulator import triton_kernels as tk
from emulator.matmul import _cpu_int_matmul, _cpu_matmul, narrow_lanes
from emulator.models import build, count_macs
from emulator.stochastic import stochastic_states

FLOAT_ACCS = ["e5m10", "e4m7", "e4m3", "e3m4", "e5m2", "e6m9b40", "e8m7", "fp32", "e4m3:sat",
              "e5m4:ftz", "e4m7:rz", "e5m10:ftz:rz", "e3m4:sat:ftz:rz", "e4m0"]
INT_ACCS = ["int32", "int24", "int16", "int12:sat", "int20:sat", "int64"]
SPEED_ACCS = ["e5m10", "e4m7", "e4m7:ftz:rz", "fp32"]
LAUNCH_SHAPES = [tk.BlockConfig(), tk.BlockConfig(16, 128, 4, 32), tk.BlockConfig(32, 128, 4, 16),
                 tk.BlockConfig(16, 256, 8, 16), tk.BlockConfig(32, 64, 2, 16),
                 tk.BlockConfig(64, 32, 4, 16)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up (which compiles)."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def random_values(rng: np.random.Generator, shape, specials: bool) -> torch.Tensor:
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 6, shape))
    x[rng.random(shape) < 0.1] = 0.0
    if specials:
        x[rng.random(shape) < 0.002] = np.inf
        x[rng.random(shape) < 0.002] = np.nan
    return torch.from_numpy(x).float()


def check_exactness(device: torch.device, shapes, seed: int) -> dict:
    """Differing outputs (bit patterns; NaN equal to NaN) of Triton vs the CPU kernel."""
    rng = np.random.default_rng(seed)
    rows, total_outputs, total_diff = [], 0, 0
    configs = [AccumConfig(acc=acc) for acc in FLOAT_ACCS]
    configs += [AccumConfig(acc="e4m7", chunk=64, chunk_acc="e5m10"),
                AccumConfig(acc="e5m4:ftz", chunk=16, chunk_acc="fp16"),
                AccumConfig(acc="e6m5", product="e5m6", inputs="fp16", weights="e4m3")]
    for cfg in configs:
        for m, k, n in shapes:
            specials = bool(rng.integers(2))
            a = quantize(random_values(rng, (m, k), specials), cfg.inputs)
            b = quantize(random_values(rng, (k, n), specials), cfg.weights)
            want = _cpu_matmul(a, b, cfg)
            got = tk.triton_matmul(a.to(device), b.to(device), cfg).cpu()
            diff = int(((got.view(torch.int64) != want.view(torch.int64))
                        & ~(got.isnan() & want.isnan())).sum())
            rows.append({"config": str(cfg), "shape": [m, k, n], "specials": specials,
                         "narrow": narrow_lanes(cfg), "differ": diff})
            total_outputs, total_diff = total_outputs + m * n, total_diff + diff
    for acc in INT_ACCS:
        for chunk in (None, 32):
            cfg = IntAccumConfig(acc=acc, chunk=chunk)
            m, k, n = shapes[0]
            a = torch.from_numpy(rng.integers(-128, 128, (m, k))).to(torch.int32)
            b = torch.from_numpy(rng.integers(-128, 128, (k, n))).to(torch.int32)
            want = _cpu_int_matmul(a, b, cfg)
            got = tk.triton_int_matmul(a.to(device), b.to(device), cfg).cpu()
            diff = int((got != want).sum())
            rows.append({"config": str(cfg), "shape": [m, k, n], "differ": diff})
            total_outputs, total_diff = total_outputs + m * n, total_diff + diff
    for unit, chunk in ((DotUnit(32, 13), None), (DotUnit(32, 13), 128), (DotUnit(8, 10, False, True), None)):
        cfg = AccumConfig(acc="fp32", inputs="e4m3", unit=unit, chunk=chunk)  # fused dot-product units
        m, k, n = shapes[0]
        a = quantize(random_values(rng, (m, k), True), cfg.inputs)
        b = quantize(random_values(rng, (k, n), True), cfg.weights)
        want = dpu_matmul(a, b, "fp32", width=unit.width, align_bits=unit.align_bits, include_acc=unit.include_acc,
                          sticky=unit.sticky, inputs="e4m3", chunk=chunk)
        got = tk.triton_dpu_matmul(a.to(device), b.to(device), cfg).cpu()
        diff = int(((got.view(torch.int64) != want.view(torch.int64)) & ~(got.isnan() & want.isnan())).sum())
        rows.append({"config": str(cfg), "shape": [m, k, n], "differ": diff})
        total_outputs, total_diff = total_outputs + m * n, total_diff + diff
    for cfg in (AccumConfig(acc="e4m4:sr", inputs="e4m3", seed=1),  # stochastic rounding (docs/semantics.md §13)
                AccumConfig(acc="e5m3:sr12:ftz", chunk=32, chunk_acc="fp16", seed=2)):
        m, k, n = shapes[0]
        a = quantize(random_values(rng, (m, k), True), cfg.inputs)
        b = quantize(random_values(rng, (k, n), True), cfg.weights)
        states = stochastic_states(cfg.seed, torch.arange(m), torch.arange(n))
        want = _cpu_matmul(a, b, cfg, states)
        got = tk.triton_sr_matmul(a.to(device), b.to(device), cfg, states.to(device)).cpu()
        diff = int(((got.view(torch.int64) != want.view(torch.int64)) & ~(got.isnan() & want.isnan())).sum())
        rows.append({"config": str(cfg), "shape": [m, k, n], "differ": diff})
        total_outputs, total_diff = total_outputs + m * n, total_diff + diff
    return {"cases": rows, "outputs": total_outputs, "differ": total_diff}


def measure_speed(device: torch.device, shape, repeat: int, launch_shapes) -> dict:
    m, k, n = shape
    macs = m * k * n
    a = torch.randn(m, k, device=device).bfloat16().float()
    b = (torch.randn(k, n, device=device) * k ** -0.5).bfloat16().float()
    out = {"shape_mkn": [m, k, n]}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        out[f"native_{str(dtype).removeprefix('torch.')}_gmacs"] = \
            macs / seconds(lambda: torch.matmul(x, y), device, repeat) / 1e9
    out["triton"] = []
    for spec in SPEED_ACCS:
        cfg = AccumConfig(acc=spec)
        for blocks in launch_shapes:
            s = seconds(lambda: tk.triton_matmul(a, b, cfg, blocks), device, repeat)
            out["triton"].append({"acc": spec, "blocks": repr(blocks), "gmacs": macs / s / 1e9})
            print(f"  {spec:>12} {blocks}: {macs / s / 1e9:9.1f} GMAC/s", flush=True)
    cfg = AccumConfig(acc="e4m7:sr")  # stochastic rounding, its generators' states made once
    states = stochastic_states(0, torch.arange(m), torch.arange(n)).to(device)
    s = seconds(lambda: tk.triton_sr_matmul(a, b, cfg, states), device, repeat)
    out["triton"].append({"acc": "e4m7:sr", "blocks": repr(tk.BlockConfig()), "gmacs": macs / s / 1e9})
    print(f"  {'e4m7:sr':>12} {tk.BlockConfig()}: {macs / s / 1e9:9.1f} GMAC/s", flush=True)
    cfg = IntAccumConfig(acc="int32")
    ai, bi = a.mul(100).round().to(torch.int32), b.mul(100).round().to(torch.int32)
    s = seconds(lambda: tk.triton_int_matmul(ai, bi, cfg), device, repeat)
    out["triton"].append({"acc": "int32", "blocks": repr(tk.BlockConfig()), "gmacs": macs / s / 1e9})
    cfg = AccumConfig(acc="fp32", inputs="e4m3", unit=DotUnit(32, 13))  # a Hopper-like fused unit
    a8, b8 = quantize(a, "e4m3"), quantize(b, "e4m3")
    s = seconds(lambda: tk.triton_dpu_matmul(a8, b8, cfg), device, repeat)
    out["triton"].append({"acc": "fp32 on a W=32 L=13 unit, e4m3 operands", "blocks": repr(tk.BlockConfig(16, 32)),
                          "gmacs": macs / s / 1e9})
    print(f"  W=32 L=13 unit: {macs / s / 1e9:9.1f} GMAC/s", flush=True)
    return out


def model_wall_time(name: str, device: torch.device, images: int, batch: int, cpu_images: int,
                    data_dir: str | None) -> dict:
    """Seconds to run ``images`` test images through ``name`` with an e4m7 accumulator
    (same seed-0 weights on both devices), and the CPU kernel's seconds on a slice."""
    from emulator import data

    torch.manual_seed(0)
    model, dataset = build(name, "cifar10")  # CIFAR-10 images for both: the timing is the point
    source = None
    if data_dir:
        source = data.load(dataset, "test", data_dir)
        x_all = torch.cat([x for x, _ in source.batches(batch, limit=images)])
    else:
        x_all = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    policy = Policy(AccumConfig(acc="e4m7"))
    result = {"model": name, "images": len(x_all), "data": "CIFAR test split" if source else "synthetic",
              "macs_per_image": count_macs(model, 32)}
    gpu_model = convert(model, policy).to(device).eval()
    with torch.no_grad():
        gpu_model(x_all[:batch].to(device))  # compile
        sync(device)
        start = time.perf_counter()
        logits = [gpu_model(x_all[i:i + batch].to(device)).cpu() for i in range(0, len(x_all), batch)]
        sync(device)
        result["seconds"] = time.perf_counter() - start
        gpu_logits = torch.cat(logits)
        cpu_model = convert(model, policy).eval()
        start = time.perf_counter()
        cpu_logits = cpu_model(x_all[:cpu_images])
        result["cpu_seconds_per_image"] = (time.perf_counter() - start) / cpu_images
    result["cpu_images_compared"] = cpu_images
    result["logits_identical_to_cpu"] = bool(torch.equal(
        gpu_logits[:cpu_images].view(torch.int32), cpu_logits.view(torch.int32)))
    result["emulated_tmacs"] = result["macs_per_image"] * len(x_all) / result["seconds"] / 1e12
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--cpu-images", type=int, default=20, help="images the CPU kernel runs, to compare")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", help="CIFAR-10 here instead of synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["exact", "speed", "models"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (interpreter, no GPU)")
    args = parser.parse_args()

    if torch.cuda.is_available():
        device = torch.device("cuda")
        info = {"gpu": torch.cuda.get_device_name(device)}
    elif args.smoke and os.environ.get("TRITON_INTERPRET") == "1":
        device, info = torch.device("cpu"), {"gpu": "none: Triton interpreter on the CPU"}
    else:
        raise SystemExit("benchmarks/gpu.py: no CUDA GPU (for a dry run: TRITON_INTERPRET=1 ... --smoke)")
    import triton

    info.update(torch=torch.__version__, triton=triton.__version__, seed=args.seed)
    print(f"{info['gpu']}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    report = {"info": info}
    if args.smoke:
        shapes, speed_shape, launch = [(20, 37, 19)], (64, 64, 64), LAUNCH_SHAPES[:1]
        args.images, args.batch, args.cpu_images, args.repeat = 4, 2, 2, 1
    else:
        shapes, speed_shape, launch = [(300, 1153, 200), (2000, 75, 6), (7, 4096, 10)], \
            (16384, 2304, 256), LAUNCH_SHAPES
    if "exact" not in args.skip:
        start = time.perf_counter()
        report["exactness"] = check_exactness(device, shapes, args.seed)
        ex = report["exactness"]
        print(f"exactness: {ex['differ']} of {ex['outputs']} outputs differ from the CPU kernel "
              f"({len(ex['cases'])} cases, {time.perf_counter() - start:.0f} s)", flush=True)
    if "speed" not in args.skip:
        print(f"speed on (M, K, N) = {speed_shape}, bf16 inputs:", flush=True)
        report["speed"] = measure_speed(device, speed_shape, args.repeat, launch)
        sp = report["speed"]
        print(f"  native fp32 {sp['native_float32_gmacs']:.0f} GMAC/s, bf16 {sp['native_bfloat16_gmacs']:.0f}",
              flush=True)
        best = {}
        for row in sp["triton"]:
            best[row["acc"]] = max(best.get(row["acc"], 0.0), row["gmacs"])
        for acc, g in best.items():
            print(f"  best {acc}: {g:.1f} GMAC/s = 1/{sp['native_float32_gmacs'] / g:.0f} of native fp32",
                  flush=True)
    if "models" not in args.skip:
        report["models"] = []
        for name in ("lenet5", "resnet18-cifar"):
            r = model_wall_time(name, device, args.images, args.batch, args.cpu_images, args.data_dir)
            report["models"].append(r)
            print(f"{name}: {r['images']} images in {r['seconds']:.1f} s with e4m7 "
                  f"({r['emulated_tmacs']:.3f} TMAC/s emulated; CPU kernel {r['cpu_seconds_per_image']:.3f} s/image; "
                  f"logits identical to the CPU kernel's on {r['cpu_images_compared']}: {r['logits_identical_to_cpu']})",
                  flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
