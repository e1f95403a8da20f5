"""``psum models``, ``psum train``, ``psum eval``: the networks, their training, and
their accuracy under emulated accumulation."""

from __future__ import annotations

import argparse
import json
import sys

from psum.cli._common import (UsageError, check_unit_options, command, dataset_arg, given, image_limit, option,
                              parse_spec, positive_float, positive_int, preprocessing_options, seed, seed_word,
                              unit_options)
from psum.formats import FloatFormat, IntFormat


def _layers(args: argparse.Namespace) -> int:
    """``psum models NAME --layers``: the MAC layers' names, kinds, K and MACs."""
    from emulator.data import dataset_spec
    from emulator.models import label, layer_table

    model, dataset = _build(args.name, dataset_arg(args, args.dataset, model=args.name))
    spec = dataset_spec(dataset)
    rows = layer_table(model, spec.image_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    total = sum(r["macs"] for r in rows)
    print(f"{label(args.name)} on {spec.name} ({spec.image_size}x{spec.image_size}, {spec.num_classes} classes): "
          f"{len(rows)} MAC layers, {total:,} MACs per image (names for --layer NAME=SPEC and policies)")
    print("| layer | kind | K | output (per image) | MACs / image | share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['kind']} | {r['k']} | {' x '.join(map(str, r['output']))} | {r['macs']:,} "
              f"| {100 * r['macs'] / total:.1f}% |")
    return 0


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from emulator.data import DATASETS
    from emulator.models import MODELS, count_macs

    if args.name is not None:
        return _layers(args)
    for name in given(args, "layers", "dataset", "image_size", "crop", "mean", "std"):
        raise UsageError(f"{option(name)} applies to one network: psum models NAME {option(name)}")

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


def _build(model: str, dataset: str | None):
    from emulator.models import build

    try:
        return build(model, dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from emulator import data
    from emulator.device import resolve_device
    from emulator.train import TrainConfig, train

    resolve_device(args.device)  # a missing GPU is an error before any data is read
    try:
        cfg = TrainConfig(model=args.model, dataset=dataset_arg(args, args.dataset), epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit,
                          bf16=not args.no_bf16, checkpoint_every=args.checkpoint_every)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _, dataset = _build(args.model, dataset_arg(args, args.dataset))
    train_source = data.load(dataset, "train", args.data_dir, download=args.download)
    test_source = data.load(dataset, "test", args.data_dir, download=args.download)
    from emulator.data import dataset_spec
    from emulator.models import label

    out = args.out or f"checkpoints/{label(args.model)}-{dataset_spec(dataset).name.replace(' ', '-')}.pt"
    command_line = "psum " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    meta = train(cfg, train_source, out, test_source=test_source, progress=not args.quiet,
                 command=command_line, device=args.device)
    print(f"wrote {out}: {meta['model']}/{meta['dataset']}, {meta['epochs']} epochs, "
          f"test top-1 {100 * meta['accuracy']:.2f}% on {meta['test_images']} images, "
          f"{meta['train_seconds']:.0f} s")
    return 0


# -- psum eval -------------------------------------------------------------------------------

#: Options that only a floating-point MAC has, and only an integer one.
FLOAT_ONLY = ("inputs", "weights", "product", "width")
INT_ONLY = ("weight_bits", "act_bits", "calib_batches", "seed")


def _layer_overrides(items: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--layer takes NAME=SPEC (e.g. 'features.0=e5m10' or 'fc=float'), not {item!r}")
        if name in overrides:
            raise UsageError(f"--layer {name} is given twice")
        if name.startswith("type:"):
            from emulator.convert import TYPE_SELECTORS

            if name not in TYPE_SELECTORS:
                raise UsageError(f"--layer {name}: unknown layer-type selector; choose from {', '.join(TYPE_SELECTORS)}")
        if spec != "float":
            parse_spec(spec, f"--layer {name}")
        overrides[name] = spec
    return overrides


def _check_applicable(args: argparse.Namespace, overrides: dict[str, str]) -> None:
    """Refuse options that none of the asked-for MACs use."""
    kinds = {type(parse_spec(s)) for s in (args.acc or []) + (args.int_acc or []) + list(overrides.values())
             if s != "float"}
    if not kinds and args.no_baselines:
        raise UsageError("nothing to evaluate: give --acc or --int-acc, or drop --no-baselines")
    for name in given(args, *FLOAT_ONLY):
        if FloatFormat not in kinds:
            raise UsageError(f"{option(name)} applies to floating-point accumulators (--acc), "
                             "and none is asked for")
    for name in given(args, *INT_ONLY):
        if IntFormat not in kinds:
            raise UsageError(f"{option(name)} applies to integer accumulators (--int-acc), and none is asked for")
    check_unit_options(args)
    specs = (args.acc or []) + [s for s in overrides.values() if s != "float"]
    stochastic = any(isinstance(f := parse_spec(s), FloatFormat) and f.rounding == "stochastic" for s in specs)
    if given(args, "sr_seed") and not stochastic:
        raise UsageError("--sr-seed applies to stochastically rounding accumulators (an --acc with :sr), "
                         "and none is asked for")
    if given(args, "chunk_acc") and args.chunk is None:
        raise UsageError("--chunk-acc applies to chunked accumulation: give --chunk too")
    if args.chunk_acc is not None:
        outer = parse_spec(args.chunk_acc, "--chunk-acc")
        if isinstance(outer, FloatFormat) and IntFormat in kinds:
            raise UsageError(f"--chunk-acc {outer} is a floating-point format; the outer accumulator of an "
                             "integer MAC (--int-acc) is an integer format such as int32")
        if isinstance(outer, IntFormat) and FloatFormat in kinds:
            raise UsageError(f"--chunk-acc {outer} is an integer format; the outer accumulator of a "
                             "floating-point MAC (--acc) is a floating-point format such as fp32")


def accum_config(args: argparse.Namespace, fmt, where: str):
    """The AccumConfig (a float ``fmt``) or IntAccumConfig the MAC options ask for, checked
    against what the emulator can run."""
    from emulator import AccumConfig, IntAccumConfig
    from emulator.config import DotUnit
    from emulator.matmul import check_config

    try:
        if isinstance(fmt, IntFormat):
            cfg = IntAccumConfig(acc=fmt, weight_bits=args.weight_bits, act_bits=args.act_bits,
                                 chunk=args.chunk, chunk_acc=args.chunk_acc or "int32", order=args.order)
        else:
            unit = None if args.width is None else DotUnit(args.width, args.align_bits, not args.acc_apart,
                                                             args.sticky)
            cfg = AccumConfig(acc=fmt, inputs=args.inputs or "bf16", weights=args.weights,
                              product=args.product, chunk=args.chunk, chunk_acc=args.chunk_acc or "fp32",
                              order=args.order, unit=unit, seed=args.sr_seed)
        check_config(cfg)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    return cfg


def build_policies(args: argparse.Namespace) -> list[tuple[str, object]]:
    """(label, Policy) for every policy the eval options ask for; every config is checked
    against what the emulator can run before any model or data is loaded."""
    from emulator import IntAccumConfig, Policy

    overrides = _layer_overrides(args.layer)
    _check_applicable(args, overrides)
    for flag, specs, kind in (("--acc", args.acc, FloatFormat), ("--int-acc", args.int_acc, IntFormat)):
        for spec in specs or []:
            if not isinstance(parse_spec(spec, flag), kind):
                raise UsageError(f"{flag} takes floating-point formats (e4m7, bf16); use --int-acc for {spec!r}"
                                 if kind is FloatFormat else
                                 f"--int-acc takes integer formats (int16, int24:sat), not {spec!r}")
        if specs and len(set(specs)) != len(specs):
            raise UsageError(f"{flag} names a format twice: {' '.join(specs)}")

    def layer_config(spec: str, where: str):
        return None if spec == "float" else accum_config(args, parse_spec(spec, where), where)

    policies = []
    for flag, spec in [("--acc", s) for s in args.acc or []] + [("--int-acc", s) for s in args.int_acc or []]:
        default = layer_config(spec, f"{flag} {spec}")
        layers = {name: layer_config(s, f"--layer {name}") for name, s in overrides.items()}
        label = str(default) if not isinstance(default, IntAccumConfig) else \
            f"int{args.act_bits}xint{args.weight_bits} acc={default.acc}" + (
                f" chunk={args.chunk} chunk_acc={default.chunk_acc}" if args.chunk else "")
        if overrides:
            label += " + " + ", ".join(f"{n}={s}" for n, s in overrides.items())
        policies.append((label, Policy(default, layers)))
    return policies


def _check_layer_names(model, name: str, overrides: dict[str, str]) -> None:
    """Every --layer selector must name (or match) a layer of the model."""
    import fnmatch

    from emulator.convert import SWAPS, TYPE_SELECTORS

    names = [n for n, _ in model.named_modules() if n]
    for pattern in overrides:
        if pattern.startswith("type:"):  # a known selector (_layer_overrides)
            found = any(TYPE_SELECTORS[pattern](m) for _, m in model.named_modules())
        else:
            found = pattern in names or any(fnmatch.fnmatchcase(n, pattern) for n in names)
        if not found:
            macs = [n for n, m in model.named_modules() if isinstance(m, tuple(SWAPS))]
            raise UsageError(f"--layer {pattern} matches no layer of {name}; its MAC layers are {', '.join(macs)}")


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from emulator import AccumConfig, IntAccumConfig, Policy, calibrate, convert
    from emulator import checkpoint, data
    from emulator.data import dataset_spec
    from emulator.device import resolve_device
    from emulator.evaluate import evaluate
    from emulator.models import MODELS, has_integer_reading, is_model_file
    from emulator.models import label as model_label

    torch.manual_seed(0)
    if is_model_file(args.model) and args.checkpoint:
        raise UsageError(f"--checkpoint: {args.model} carries its weights; give no checkpoint")
    if not is_model_file(args.model) and not args.checkpoint:
        raise UsageError("--checkpoint is needed: the weights of the network (a psum checkpoint or a state_dict)")
    policies = build_policies(args)
    if has_integer_reading(args.model):
        for name in given(args, *INT_ONLY):
            raise UsageError(f"{option(name)} does not apply to {args.model}: its integer reading takes the file's own "
                             "operands and scales (uint8/int8, no calibration)")
    device = resolve_device(args.device)
    model, dataset = _build(args.model, dataset_arg(args, args.dataset, model=args.model))
    meta = {} if is_model_file(args.model) else checkpoint.load_model(args.checkpoint, model)
    if meta.get("model") not in (None, args.model) and args.model in MODELS:
        raise UsageError(f"{args.checkpoint} holds a {meta['model']} model, not {args.model}")
    folded = kept = 0
    if args.fold_bn:
        from emulator.fold import fold_batchnorm

        try:
            model, folded, kept = fold_batchnorm(model)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    model.to(device)
    _check_layer_names(model, model_label(args.model), _layer_overrides(args.layer))
    runs = [] if args.no_baselines else [("fp32", None), ("bf16 inputs, fp32 acc", Policy(AccumConfig(acc="fp32")))]
    converted = []
    imported = has_integer_reading(args.model)
    for label, policy in runs + policies:  # every conversion (layer names, formats) is checked before any data
        try:
            if imported and policy is not None and isinstance(policy.default, IntAccumConfig):
                from emulator.tflite_import import TFLiteIntNet

                label = label.replace(f"int{args.act_bits}xint{args.weight_bits}", "integer reading")
                converted.append((label, policy, TFLiteIntNet.from_policy(args.model, policy).to(device)))
            else:
                converted.append((label, policy, model if policy is None else convert(model, policy)))
        except ValueError as exc:
            raise UsageError(f"{label}: {exc}") from None
    test = data.load(dataset, "test", args.data_dir, download=args.download)
    needs_calibration = not imported and any(isinstance(c, IntAccumConfig) for _, p, _ in converted if p is not None
                                             for c in [p.default, *dict(p.layers).values()])
    train_source = data.load(dataset, "train", args.data_dir, download=args.download) if needs_calibration else None
    rows = []
    for label, policy, emulated in converted:
        configs = [] if policy is None else [policy.default, *dict(policy.layers).values()]
        if not imported and any(isinstance(c, IntAccumConfig) for c in configs):
            batches = [x for x, _ in train_source.batches(args.batch_size, shuffle=True, seed=args.seed,
                                                           limit=args.calib_batches * args.batch_size)]
            calibrate(emulated, batches)
        result = evaluate(emulated, test, limit=args.limit, batch_size=args.batch_size,
                          progress=not args.quiet, label=label)
        rows.append({"policy": label, **result.as_dict()})
    if args.json:
        print(json.dumps({"model": args.model, "dataset": dataset, "checkpoint": str(args.checkpoint),
                          "device": str(device), "fold_bn": args.fold_bn, "results": rows}, indent=2))
        return 0
    top5 = dataset_spec(dataset).num_classes > 10
    bn = f"; batch norm folded into {folded} convolutions ({kept} kept)" if args.fold_bn else ""
    print(f"{model_label(args.model)} on {dataset_spec(dataset).name} ({rows[0]['total'] if rows else 0} test images, "
          f"{device}{bn})")
    print("| policy | top-1 % | 95% CI |" + (" top-5 % | 95% CI |" if top5 else "") + " seconds |")
    print("|---|---|---|" + ("---|---|" if top5 else "") + "---|")
    for r in rows:
        line = f"| {r['policy']} | {100 * r['top1']:.2f} | {100 * r['top1_ci95'][0]:.2f}-{100 * r['top1_ci95'][1]:.2f} |"
        if top5:
            line += f" {100 * r['top5']:.2f} | {100 * r['top5_ci95'][0]:.2f}-{100 * r['top5_ci95'][1]:.2f} |"
        print(line + f" {r['seconds']:.1f} |")
    return 0


# -- parsers --------------------------------------------------------------------------------


def training_options(p: argparse.ArgumentParser, *, epochs: int, lr: float, out: str) -> None:
    """psum train's recipe options (and psum finetune's), with these defaults."""
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"(default {epochs})")
    p.add_argument("--batch-size", type=positive_int, default=128, help="(default 128)")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--seed", type=seed, default=0, help="batch order, augmentation, initialization (default 0)")
    p.add_argument("--limit", type=positive_int, help="train on N images only")
    p.add_argument("--checkpoint-every", type=positive_int, default=200, help="steps between checkpoints "
                   "(default 200)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32, not with BF16 autocast")
    p.add_argument("--out", help=f"checkpoint path (default {out})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def mac_options(p: argparse.ArgumentParser) -> None:
    """What a MAC computes besides its accumulator format (:func:`accum_config`); the
    integer ones (--weight-bits, --act-bits) are added by each command."""
    p.add_argument("--inputs", help="float MACs: activation format (default bf16)")
    p.add_argument("--weights", help="float MACs: weight format (default: as --inputs)")
    p.add_argument("--product", help="float MACs: round products to this format (unfused MAC)")
    p.add_argument("--chunk", type=positive_int, help="chunk size of chunked accumulation (with --width: promotion "
                   "into --chunk-acc every CHUNK terms, a multiple of W)")
    p.add_argument("--chunk-acc", help="outer accumulator when chunked (default fp32 for float MACs, "
                   "int32 for integer ones)")
    unit_options(p)
    p.add_argument("--order", default="im2col", choices=["im2col", "nhwc"], help="(default im2col)")
    p.add_argument("--sr-seed", type=seed_word, default=0, help="seed of a stochastically rounding accumulator's "
                   "generators (an --acc with :sr or :srR; docs/semantics.md §13), 0..2^32-1 (default 0)")


#: What MODEL may be, in every command's help.
MODEL_HELP = ("a registered network (psum models) or one of your own: FILE.py:NAME or package.module:NAME, "
              "NAME a model class or a function returning the nn.Module (called with num_classes= where it takes it), "
              "or a model file: FILE.tflite (float reading, dequantized; --int-acc: its integer network) or FILE.onnx")
DATASET_HELP = ("cifar10, cifar100, imagenet, or the path of a folder of your own with train/ and test/ (or val/) "
                "ImageFolder trees (default: a registered model's first dataset)")


def data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=DATASET_HELP)
    preprocessing_options(p)
    p.add_argument("--data-dir", help="data directory of the registered datasets (default: $PSUM_DATA_DIR or ./data)")
    p.add_argument("--download", action="store_true", help="download CIFAR if missing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="list the networks, or one network's layers",
                            description="List the study's networks (datasets, parameters, MACs per image), "
                            "or with NAME one network's MAC layers: the names --layer and policies "
                            "take, their kind, K (each output's dot-product length), output shape and MACs.")
    models.add_argument("name", nargs="?", help="a network: list its layers; " + MODEL_HELP)
    models.add_argument("--layers", action="store_true", help="list NAME's Conv2d/Linear layers (what NAME does)")
    models.add_argument("--dataset", help="with NAME: " + DATASET_HELP)
    preprocessing_options(models)
    models.add_argument("--json", action="store_true")

    tr = sub.add_parser("train", help="train a network in BF16",
                        description="Train MODEL with BF16 autocast, SGD+Nesterov, cosine schedule; "
                        "checkpoints periodically to OUT.partial and resumes from it.")
    tr.add_argument("model", help=MODEL_HELP)
    data_options(tr)
    training_options(tr, epochs=30, lr=0.05, out="checkpoints/MODEL-DATASET.pt")

    ev = sub.add_parser("eval", help="accuracy under emulated accumulation",
                        description="Top-1 (top-5 on ImageNet) with 95% Wilson intervals: fp32, "
                        "bf16 inputs with fp32 accumulation, and each policy asked for.")
    ev.add_argument("model", help=MODEL_HELP)
    ev.add_argument("--checkpoint", help="the weights: a psum checkpoint or a plain state_dict file (none for a "
                    ".tflite file, which carries its own)")
    data_options(ev)
    ev.add_argument("--limit", type=image_limit, help="evaluate N test images (default all)")
    ev.add_argument("--batch-size", type=positive_int, default=250, help="(default 250)")
    ev.add_argument("--acc", nargs="+", metavar="SPEC", help="floating-point accumulator(s)")
    ev.add_argument("--int-acc", nargs="+", metavar="SPEC", help="integer accumulator(s): int32, int16:sat")
    mac_options(ev)
    ev.add_argument("--layer", action="append", metavar="NAME=SPEC",
                    help="per-layer accumulator: NAME a layer name, a glob or a type selector (type:Linear, type:Conv2d, "
                         "type:depthwise, type:grouped, type:pointwise); SPEC 'float' keeps it float; repeatable")
    ev.add_argument("--fold-bn", action="store_true",
                    help="fold batch norm into the convolution before it, as deployed inference does")
    ev.add_argument("--weight-bits", type=int, default=8, help="integer MACs: weight bits (default 8)")
    ev.add_argument("--act-bits", type=int, default=8, help="integer MACs: activation bits (default 8)")
    ev.add_argument("--calib-batches", type=positive_int, default=4,
                    help="integer MACs: training batches to calibrate on (default 4)")
    ev.add_argument("--seed", type=seed, default=0, help="integer MACs: calibration batch selection (default 0)")
    ev.add_argument("--no-baselines", action="store_true", help="skip the fp32 and bf16/fp32 rows")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (Triton kernels)")
