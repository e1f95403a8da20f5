"""The ``psum`` command line.

Subcommands live in small functions registered in :data:`COMMANDS`; each gets the
parsed arguments and returns an exit code. Errors a user can cause (a malformed
format spec, an impossible width, a missing file) print one line ``psum: error: ...``
and exit with status 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from psum import __version__
from psum.formats import FloatFormat, IntFormat, candidates, parse

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

# Exceptions of psum's packages that describe bad input (a missing or malformed data
# set or checkpoint, a missing tool); the CLI reports them in one line. Matched by name
# so that this module imports none of those packages.
_USER_ERRORS = {"DataError", "CheckpointError", "KernelBuildError", "LibraryError", "SynthToolError",
                "YosysError", "NetlistError", "DeviceError"}


class UsageError(Exception):
    """An error in what the user asked for; reported in one line, exit status 2."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


# -- psum format ---------------------------------------------------------------------


def format_properties(fmt: FloatFormat | IntFormat) -> dict:
    """The properties of ``fmt`` as plain JSON-able values (floats are exact doubles
    for every format psum supports)."""
    if isinstance(fmt, IntFormat):
        return {"spec": str(fmt), "kind": "int", "bits": fmt.bits, "signed": fmt.signed,
                "overflow": fmt.overflow, "min": fmt.min_value, "max": fmt.max_value}
    return {
        "spec": str(fmt),
        "kind": "float",
        "bits": fmt.bits,
        "exp_bits": fmt.exp_bits,
        "man_bits": fmt.man_bits,
        "bias": fmt.bias,
        "emin": fmt.emin,
        "emax": fmt.emax,
        "max_finite": float(fmt.max_finite),
        "min_normal": float(fmt.min_normal),
        "min_subnormal": None if fmt.min_subnormal is None else float(fmt.min_subnormal),
        "epsilon": float(fmt.epsilon),
        "dynamic_range_binades": round(fmt.dynamic_range_binades, 3),
        "overflow": fmt.overflow,
        "subnormals": fmt.subnormals,
        "rounding": fmt.rounding,
        "has_inf": fmt.has_inf,
        "has_nan": fmt.has_nan,
    }


_COLUMNS = [  # (header, key, how to show)
    ("spec", "spec", str),
    ("bits", "bits", str),
    ("E", "exp_bits", str),
    ("M", "man_bits", str),
    ("bias", "bias", str),
    ("max finite", "max_finite", lambda v: f"{v:.6g}"),
    ("min normal", "min_normal", lambda v: f"{v:.6g}"),
    ("min subnormal", "min_subnormal", lambda v: "-" if v is None else f"{v:.6g}"),
    ("epsilon", "epsilon", lambda v: f"{v:.6g}"),
    ("binades", "dynamic_range_binades", lambda v: f"{v:.1f}"),
    ("overflow", "overflow", str),
    ("rounding", "rounding", str),
]


def format_table(rows: list[dict]) -> str:
    """Markdown table of format properties (integer formats show their range)."""
    lines = [[h for h, _, _ in _COLUMNS]]
    for row in rows:
        if row["kind"] == "int":
            cells = [row["spec"], str(row["bits"]), "-", "-", "-", str(row["max"]),
                     "-", "-", "1", f"{row['bits'] - 1 if row['signed'] else row['bits']}.0",
                     row["overflow"], "-"]
        else:
            cells = [show(row[key]) for _, key, show in _COLUMNS]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


@command("format")
def cmd_format(args: argparse.Namespace) -> int:
    if args.candidates:
        formats = candidates()
    elif args.spec:
        formats = [_parse_spec(s) for s in args.spec]
    else:
        raise UsageError("psum format needs at least one SPEC, or --candidates")
    rows = [format_properties(f) for f in formats]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
        if args.candidates:
            print(f"\n{len(rows)} candidate accumulator formats")
    return 0


def _parse_spec(spec: str):
    try:
        return parse(spec)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


# -- psum models / train / eval ---------------------------------------------------------


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from emulator.data import DATASETS
    from emulator.models import MODELS, count_macs

    rows = []
    for spec in MODELS.values():
        model = spec.make(DATASETS[spec.datasets[0]].num_classes)
        rows.append({"name": spec.name, "datasets": list(spec.datasets),
                     "params": sum(p.numel() for p in model.parameters()),
                     "macs_per_image": count_macs(model, DATASETS[spec.datasets[0]].image_size),
                     "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| model | datasets | parameters | MACs / image | |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {', '.join(r['datasets'])} | {r['params']:,} | {r['macs_per_image']:,} "
              f"| {r['description']} |")
    print("(parameters and MACs for the first dataset listed)")
    return 0


def _data_errors():
    from emulator.checkpoint import CheckpointError
    from emulator.data import DataError

    return (DataError, CheckpointError)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from emulator import data
    from emulator.models import build
    from emulator.train import TrainConfig, train

    from emulator.device import resolve_device

    resolve_device(args.device)  # a missing GPU is an error before any data is read
    try:
        cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit,
                          bf16=not args.no_bf16, checkpoint_every=args.checkpoint_every)
        _, dataset = build(args.model, args.dataset)
        train_source = data.load(dataset, "train", args.data_dir, download=args.download)
        test_source = data.load(dataset, "test", args.data_dir, download=args.download)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = args.out or f"checkpoints/{args.model}-{dataset}.pt"
    command_line = "psum " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    meta = train(cfg, train_source, out, test_source=test_source, progress=not args.quiet,
                 command=command_line, device=args.device)
    print(f"wrote {out}: {meta['model']}/{meta['dataset']}, {meta['epochs']} epochs, "
          f"test top-1 {100 * meta['accuracy']:.2f}% on {meta['test_images']} images, "
          f"{meta['train_seconds']:.0f} s")
    return 0


def _layer_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--layer takes NAME=SPEC (e.g. 'features.0=e5m10' or 'fc=float'), not {item!r}")
        overrides[name] = spec
    return overrides


def build_policies(args: argparse.Namespace) -> list[tuple[str, object]]:
    """(label, Policy) for every policy the eval options ask for."""
    from emulator import AccumConfig, IntAccumConfig, Policy
    from psum.formats import IntFormat

    overrides = _layer_overrides(args.layer)

    def layer_config(spec: str, base):
        if spec == "float":
            return None
        fmt = parse(spec)
        if isinstance(fmt, IntFormat):
            return IntAccumConfig(acc=fmt, weight_bits=args.weight_bits, act_bits=args.act_bits,
                                  chunk=args.chunk, order=args.order)
        return AccumConfig(acc=fmt, inputs=args.inputs, weights=args.weights, product=args.product,
                           chunk=args.chunk, chunk_acc=args.chunk_acc, order=args.order)

    policies = []
    try:
        for spec in (args.acc or []) + (args.int_acc or []):
            default = layer_config(spec, None)
            if args.int_acc and spec in args.int_acc and not isinstance(default, IntAccumConfig):
                raise UsageError(f"--int-acc takes integer formats (int16, int24:sat), not {spec!r}")
            if args.acc and spec in args.acc and isinstance(default, IntAccumConfig) and spec not in (args.int_acc or []):
                raise UsageError(f"--acc takes floating-point formats; use --int-acc for {spec!r}")
            layers = {name: layer_config(s, default) for name, s in overrides.items()}
            label = str(default) if not isinstance(default, IntAccumConfig) else \
                f"int{args.act_bits}xint{args.weight_bits} acc={default.acc}" + (
                    f" chunk={args.chunk}" if args.chunk else "")
            if overrides:
                label += " + " + ", ".join(f"{n}={s}" for n, s in overrides.items())
            policies.append((label, Policy(default, layers)))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    return policies


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from emulator import AccumConfig, IntAccumConfig, Policy, calibrate, convert
    from emulator import checkpoint, data
    from emulator.device import resolve_device
    from emulator.evaluate import evaluate
    from emulator.models import build

    torch.manual_seed(0)
    policies = build_policies(args)
    device = resolve_device(args.device)
    try:
        model, dataset = build(args.model, args.dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    meta = checkpoint.load_model(args.checkpoint, model)
    model.to(device)
    if meta.get("model") not in (None, args.model):
        raise UsageError(f"{args.checkpoint} holds a {meta['model']} model, not {args.model}")
    test = data.load(dataset, "test", args.data_dir, download=args.download)
    rows = []
    runs = [] if args.no_baselines else [("fp32", None), ("bf16 inputs, fp32 acc", Policy(AccumConfig(acc="fp32")))]
    for label, policy in runs + policies:
        emulated = model if policy is None else convert(model, policy)
        configs = [] if policy is None else [policy.default, *dict(policy.layers).values()]
        if any(isinstance(c, IntAccumConfig) for c in configs):
            train_source = data.load(dataset, "train", args.data_dir, download=args.download)
            batches = [x for x, _ in train_source.batches(args.batch_size, shuffle=True, seed=args.seed,
                                                           limit=args.calib_batches * args.batch_size)]
            calibrate(emulated, batches)
        result = evaluate(emulated, test, limit=args.limit, batch_size=args.batch_size,
                          progress=not args.quiet, label=label)
        rows.append({"policy": label, **result.as_dict()})
    if args.json:
        print(json.dumps({"model": args.model, "dataset": dataset, "checkpoint": str(args.checkpoint),
                          "device": str(device), "results": rows}, indent=2))
        return 0
    top5 = dataset == "imagenet"
    print(f"{args.model} on {dataset} ({rows[0]['total'] if rows else 0} test images, {device})")
    print("| policy | top-1 % | 95% CI |" + (" top-5 % | 95% CI |" if top5 else "") + " seconds |")
    print("|---|---|---|" + ("---|---|" if top5 else "") + "---|")
    for r in rows:
        line = f"| {r['policy']} | {100 * r['top1']:.2f} | {100 * r['top1_ci95'][0]:.2f}-{100 * r['top1_ci95'][1]:.2f} |"
        if top5:
            line += f" {100 * r['top5']:.2f} | {100 * r['top5_ci95'][0]:.2f}-{100 * r['top5_ci95'][1]:.2f} |"
        print(line + f" {r['seconds']:.1f} |")
    return 0


# -- psum verilog ----------------------------------------------------------------------


def build_mac(args: argparse.Namespace):
    """The MAC unit the --inputs/--acc/--int/... options describe."""
    from hwgen import FloatMAC, IntMAC

    try:
        if args.int is not None:
            return IntMAC(args.int, args.int if args.weight_int is None else args.weight_int,
                          args.acc or "int32", pipeline=args.pipeline)
        return FloatMAC(args.inputs, args.acc or "fp32", weights=args.weights, product=args.product,
                        pipeline=args.pipeline, chunk=args.chunk, chunk_acc=args.chunk_acc)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


@command("verilog")
def cmd_verilog(args: argparse.Namespace) -> int:
    from hwgen.verilog import write

    mac = build_mac(args)
    if args.vectors < 1:
        raise UsageError(f"--vectors must be positive, not {args.vectors}")
    try:
        paths = write(mac, args.output, with_testbench=args.testbench, n=args.vectors, seed=args.seed)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    for path in paths:
        print(f"wrote {path}")
    if args.testbench:
        print(f"run: cd {paths[0].parent} && iverilog -o tb {paths[0].name} {paths[1].name} && vvp tb")
    return 0


def _activity_streams(args, mac):
    """Operand streams of a real network's layer, as --activity asks."""
    import torch

    from emulator import checkpoint, data
    from emulator.models import build
    from emulator.streams import largest_layer, operand_streams

    try:
        model, dataset = build(args.activity, args.dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.checkpoint:
        raise UsageError("--activity needs --checkpoint")
    checkpoint.load_model(args.checkpoint, model)
    test = data.load(dataset, "test", args.data_dir)
    batch, _ = next(test.batches(64, shuffle=True, seed=args.seed))
    layer = args.layer or largest_layer(model, data.DATASETS[dataset].image_size)
    torch.manual_seed(args.seed)
    try:
        if args.int is not None:
            a, b = operand_streams(model, layer, batch, args.streams, seed=args.seed, int_bits=args.int)
        else:
            a, b = operand_streams(model, layer, batch, args.streams, seed=args.seed, inputs=mac.inputs,
                                   weights=mac.weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return a, b, f"{args.activity}/{dataset} layer {layer}, {len(batch)} test images"


@command("synth")
def cmd_synth(args: argparse.Namespace) -> int:
    from synth.flow import synthesize
    from synth.liberty import embedded, from_liberty
    from synth.power import estimate_energy, finite_patterns, uniform_streams

    mac = build_mac(args)
    if args.streams < 64:
        raise UsageError(f"--streams must be at least 64, not {args.streams}")
    library = from_liberty(args.liberty) if args.liberty else embedded()
    result = synthesize(mac, library, cache=not args.no_cache)
    finite = finite_patterns(getattr(mac, "inputs", None))
    width_a, width_b = len(mac.a), len(mac.b)
    energies = []
    rand_a = uniform_streams(width_a, finite, args.streams, args.k, seed=args.seed)
    rand_b = uniform_streams(width_b, finite, args.streams, args.k, seed=args.seed + 1)
    energies.append(estimate_energy(result.netlist, library, rand_a, rand_b, unit=mac.describe(),
                                    operands=f"uniform random finite patterns, K={args.k}",
                                    clock_mhz=args.clock_mhz, pipeline=mac.pipeline))
    if args.activity:
        a, b, label = _activity_streams(args, mac)
        energies.append(estimate_energy(result.netlist, library, a, b, unit=mac.describe(), operands=label,
                                        clock_mhz=args.clock_mhz, pipeline=mac.pipeline))
    report = {"synthesis": result.as_dict(), "energy": [e.as_dict() for e in energies],
              "library_notes": list(library.notes)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    r = result
    print(f"{r.unit} on {r.library}" + (" (cached)" if r.cached else f" ({r.synth_seconds:.1f} s)"))
    rows = [("cells", f"{r.num_cells}"), ("area", f"{r.area_um2:.1f} um^2 ({r.sequential_area_um2:.1f} sequential)"),
            ("transistors (CMOS estimate)", f"{r.transistors}"), ("flip-flops", f"{r.flip_flops}"),
            ("logic depth", f"{r.depth} cells"), ("critical path", f"{r.critical_path_ns:.3f} ns")]
    for e in energies:
        rows.append((f"energy/MAC, {e.operands}",
                     f"{e.energy_per_mac_pj:.4f} pJ (switching {e.switching_pj:.4f}, internal {e.internal_pj:.4f}, "
                     f"clock {e.clock_pj:.4f}, leakage {e.leakage_pj:.4f}); {e.power_mw:.3f} mW at "
                     f"{e.clock_mhz:g} MHz; {e.mac_cycles_per_s / 1e6:.2f} M MAC-cycles/s simulated"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print("  cells by type: " + ", ".join(f"{k} {v}" for k, v in sorted(r.cells.items(), key=lambda kv: -kv[1])))
    for note in library.notes:
        print(f"  note: {note}")
    return 0


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from reports.study import ModelRun, StudySpec, run_study

    try:
        overrides = {"limit": args.limit, "data_dir": args.data_dir, "seed": args.seed, "liberty": args.liberty,
                     "download": args.download or None, "device": args.device}
        spec = StudySpec.from_toml(args.config, **overrides) if args.config else StudySpec(
            **{k: v for k, v in overrides.items() if v is not None})
        if args.model:
            if not args.checkpoint:
                raise UsageError("--model needs --checkpoint")
            spec.models = [ModelRun(args.model, args.checkpoint, args.dataset)]
        if args.no_synth:
            spec.synth = False
        if args.no_per_layer:
            spec.per_layer = False
        if args.tolerance:
            spec.tolerances = args.tolerance
        if args.exp_bits:
            spec.exp_bits = args.exp_bits
        results = run_study(spec, args.out, workers=args.workers, scheduler=args.scheduler)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stats = results["stats"]
    print(f"wrote {args.out}/report.md (+ results.csv, results.json, plots); {stats['computed']} points computed, "
          f"{stats['reused']} reused, {stats['seconds']} s")
    return 0


def mac_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", default="bf16", help="operand format of a float MAC (default bf16)")
    p.add_argument("--weights", help="format of b (default: as --inputs)")
    p.add_argument("--acc", help="accumulator format (default fp32; int32 with --int)")
    p.add_argument("--product", help="round products to this format first (unfused)")
    p.add_argument("--int", type=int, metavar="BITS", help="an integer MAC with BITS-bit operands")
    p.add_argument("--weight-int", type=int, metavar="BITS", help="integer MAC: width of b (default --int)")
    p.add_argument("--pipeline", action="store_true", help="register between multiplier and adder")
    p.add_argument("--chunk", type=int, help="chunked MAC: spill the accumulator every CHUNK terms")
    p.add_argument("--chunk-acc", default="fp32", help="chunked MAC: outer accumulator (default fp32)")


# -- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psum",
        description="How few bits can a CNN's partial sums have, and what does each "
        "choice cost in silicon?",
    )
    parser.add_argument("--version", action="version", version=f"psum {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fmt = sub.add_parser("format", help="print the properties of number formats",
                         description="Print exact properties of formats given as spec "
                         "strings (e4m7, e5m10b12:sat:ftz:rz, bf16, int24:sat, ...).")
    fmt.add_argument("spec", nargs="*", metavar="SPEC", help="format spec strings")
    fmt.add_argument("--candidates", action="store_true",
                     help="list the study's default accumulator candidates")
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")

    models = sub.add_parser("models", help="list the networks", description="List the study's "
                            "networks: datasets, parameters and MACs per image.")
    models.add_argument("--json", action="store_true")

    def data_options(p):
        p.add_argument("--dataset", help="dataset (default: the model's first)")
        p.add_argument("--data-dir", help="data directory (default: $PSUM_DATA_DIR or ./data)")
        p.add_argument("--download", action="store_true", help="download CIFAR if missing")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser("train", help="train a network in BF16",
                        description="Train MODEL with BF16 autocast, SGD+Nesterov, cosine schedule; "
                        "checkpoints periodically to OUT.partial and resumes from it.")
    tr.add_argument("model")
    data_options(tr)
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=0.05)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--limit", type=int, help="train on N images only")
    tr.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    tr.add_argument("--no-bf16", action="store_true", help="train in fp32")
    tr.add_argument("--out", help="checkpoint path (default checkpoints/MODEL-DATASET.pt)")
    tr.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")

    ev = sub.add_parser("eval", help="accuracy under emulated accumulation",
                        description="Top-1 (top-5 on ImageNet) with 95%% Wilson intervals: fp32, "
                        "bf16 inputs with fp32 accumulation, and each policy asked for.")
    ev.add_argument("model")
    ev.add_argument("--checkpoint", required=True)
    data_options(ev)
    ev.add_argument("--limit", type=int, help="evaluate the first N test images")
    ev.add_argument("--batch-size", type=int, default=250)
    ev.add_argument("--acc", nargs="+", metavar="SPEC", help="floating-point accumulator(s)")
    ev.add_argument("--int-acc", nargs="+", metavar="SPEC", help="integer accumulator(s): int32, int16:sat")
    ev.add_argument("--inputs", default="bf16", help="activation format (default bf16)")
    ev.add_argument("--weights", help="weight format (default: as --inputs)")
    ev.add_argument("--product", help="round products to this format (unfused MAC)")
    ev.add_argument("--chunk", type=int, help="chunk size of chunked accumulation")
    ev.add_argument("--chunk-acc", default="fp32", help="outer accumulator when chunked")
    ev.add_argument("--order", default="im2col", choices=["im2col", "nhwc"])
    ev.add_argument("--layer", action="append", metavar="NAME=SPEC",
                    help="per-layer accumulator (name or glob; SPEC 'float' keeps it float); repeatable")
    ev.add_argument("--weight-bits", type=int, default=8, help="integer path: weight bits")
    ev.add_argument("--act-bits", type=int, default=8, help="integer path: activation bits")
    ev.add_argument("--calib-batches", type=int, default=4, help="training batches to calibrate on")
    ev.add_argument("--seed", type=int, default=0, help="calibration batch selection")
    ev.add_argument("--no-baselines", action="store_true")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (Triton kernels)")

    vl = sub.add_parser("verilog", help="write a MAC unit's Verilog",
                        description="Write synthesizable Verilog of a MAC unit (Amaranth), optionally "
                        "with a self-checking testbench and golden-model vectors for Icarus Verilog.")
    mac_options(vl)
    vl.add_argument("-o", "--output", default="mac.v", help="Verilog file (default mac.v)")
    vl.add_argument("--testbench", action="store_true", help="also write <stem>_tb.v and <stem>_vectors.hex")
    vl.add_argument("--vectors", type=int, default=2000, help="testbench vectors (default 2000)")
    vl.add_argument("--seed", type=int, default=0, help="seed of the vectors")

    sy = sub.add_parser("synth", help="synthesize a MAC: area, cells, timing, energy",
                        description="Synthesize a MAC unit with Yosys (pyosys) to a cell library and "
                        "estimate its energy per MAC by gate-level simulation of operand streams: "
                        "uniform random ones, and with --activity a real network's.")
    mac_options(sy)
    sy.add_argument("--liberty", help="Liberty file (default: embedded NanGate45 subset)")
    sy.add_argument("--activity", metavar="MODEL", help="operand streams from this network")
    sy.add_argument("--checkpoint", help="its weights")
    sy.add_argument("--layer", help="its layer (default: the one with the most MACs)")
    sy.add_argument("--dataset")
    sy.add_argument("--data-dir")
    sy.add_argument("--streams", type=int, default=16384, help="dot products simulated (default 16384)")
    sy.add_argument("--k", type=int, default=64, help="terms per random stream (default 64)")
    sy.add_argument("--clock-mhz", type=float, default=500.0, help="clock for power and leakage (default 500)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--no-cache", action="store_true", help="resynthesize even if cached")
    sy.add_argument("--json", action="store_true")

    st = sub.add_parser("study", help="the end-to-end study (the README's main job)",
                        description="Search the minimal FP and INT accumulators of each network within "
                        "accuracy tolerances, synthesize the MACs, and write report.md, results.csv/json, "
                        "Pareto plots and Verilog. Resumes from OUT/results.sqlite.")
    st.add_argument("--config", help="study spec (TOML); flags below override it")
    st.add_argument("--out", default="study", help="report folder (default ./study)")
    st.add_argument("--model", help="one model instead of the spec's (needs --checkpoint)")
    st.add_argument("--checkpoint")
    st.add_argument("--dataset")
    st.add_argument("--data-dir")
    st.add_argument("--download", action="store_true", help="download CIFAR if missing")
    st.add_argument("--limit", type=int, help="test images per point (default 2000)")
    st.add_argument("--tolerance", type=float, nargs="+", help="top-1 points (default 0.5 1.0)")
    st.add_argument("--exp-bits", type=int, nargs="+", help="exponent widths searched (default 3..8)")
    st.add_argument("--seed", type=int)
    st.add_argument("--liberty", help="Liberty file for synthesis (default embedded NanGate45)")
    st.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: in-process)")
    st.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port)")
    st.add_argument("--no-synth", action="store_true", help="accuracy only")
    st.add_argument("--no-per-layer", action="store_true", help="skip the per-layer search")
    st.add_argument("--device", help="evaluate on cpu (default), cuda or cuda:N: same bits, other speed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"psum: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # errors about the user's files and tools: one line, exit 2
        if type(exc).__name__ in _USER_ERRORS:
            print(f"psum: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("psum: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
