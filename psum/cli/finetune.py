"""``psum finetune``: a trained network trained on through an emulated accumulator
(docs/semantics.md §12), so that a narrower accumulator keeps its accuracy."""

from __future__ import annotations

import argparse
import sys

from psum.cli._common import UsageError, check_unit_options, command, dataset_arg, given, nonnegative_float, \
    option, parse_spec, positive_float
from psum.cli.network import _build, accum_config, data_options, mac_options, training_options
from psum.formats import FloatFormat, IntFormat

#: MAC options that only a floating-point, and only an integer, accumulator has.
_FLOAT_ONLY = ("inputs", "weights", "product", "width")
_INT_ONLY = ("weight_bits", "act_bits", "overflow_penalty")


def _policy(args: argparse.Namespace):
    """The one accumulator asked for (--acc or --int-acc), as a Policy for every layer."""
    from emulator import Policy

    if (args.acc is None) == (args.int_acc is None):
        raise UsageError("give one accumulator to fine-tune for: --acc SPEC (floating point) or --int-acc SPEC")
    flag, spec, kind = ("--acc", args.acc, FloatFormat) if args.acc else ("--int-acc", args.int_acc, IntFormat)
    fmt = parse_spec(spec, flag)
    if not isinstance(fmt, kind):
        raise UsageError(f"{flag} takes {'floating-point' if kind is FloatFormat else 'integer'} formats, "
                         f"not {spec!r}")
    for name in given(args, *(_INT_ONLY if kind is FloatFormat else _FLOAT_ONLY)):
        raise UsageError(f"{option(name)} does not apply to {'a float' if kind is FloatFormat else 'an integer'}"
                         f" accumulator ({flag} {spec})")
    check_unit_options(args)
    if given(args, "chunk_acc") and args.chunk is None:
        raise UsageError("--chunk-acc applies to chunked accumulation: give --chunk too")
    return Policy(accum_config(args, fmt, f"{flag} {spec}"))


@command("finetune")
def cmd_finetune(args: argparse.Namespace) -> int:
    from emulator import checkpoint, data
    from emulator.data import dataset_spec
    from emulator.device import resolve_device
    from emulator.finetune import finetune
    from emulator.models import MODELS, label
    from emulator.train import TrainConfig

    policy = _policy(args)
    if args.model not in MODELS:
        raise UsageError(f"psum finetune takes a registered network ({', '.join(MODELS)}), not {args.model!r}")
    resolve_device(args.device)
    meta = checkpoint.read(args.checkpoint)["meta"]  # a missing or corrupt file: one line, before any data
    if meta.get("model") not in (None, args.model):
        raise UsageError(f"{args.checkpoint} holds a {meta['model']} model, not {args.model}")
    try:
        cfg = TrainConfig(model=args.model, dataset=dataset_arg(args, args.dataset) or meta.get("dataset"),
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          limit=args.limit, bf16=not args.no_bf16, checkpoint_every=args.checkpoint_every,
                          warmup=args.warmup)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _, dataset = _build(args.model, cfg.dataset)
    train_source = data.load(dataset, "train", args.data_dir, download=args.download)
    test_source = data.load(dataset, "test", args.data_dir, download=args.download)
    unit = policy.default.unit if hasattr(policy.default, "unit") else None
    tag = (str(policy.default.acc).replace(":", "_") + (f"-c{args.chunk}" if args.chunk else "")
           + (f"-w{unit.width}l{unit.align_bits}" if unit else ""))
    out = args.out or f"checkpoints/{label(args.model)}-{dataset_spec(dataset).name.replace(' ', '-')}-ft-{tag}.pt"
    command_line = "psum " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["finetune"] else ""
    result = finetune(cfg, args.checkpoint, policy, train_source, out, test_source=test_source,
                      progress=not args.quiet, command=command_line, device=args.device,
                      overflow_penalty=args.overflow_penalty)
    print(f"wrote {out}: {result['model']}/{result['dataset']} fine-tuned {result['epochs']} epochs for "
          f"{result['finetuned_for']}; test top-1 under it {100 * result['accuracy']:.2f}% on "
          f"{result['test_images']} images, {result['train_seconds']:.0f} s")
    return 0


def add_parsers(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a trained network through an emulated accumulator",
                        description="Train a trained network on for a few epochs with every MAC accumulating in "
                        "the given format: forward bit for bit the emulated accumulator, backward the float "
                        "layer's gradient (a straight-through estimator). BF16 autocast, SGD+Nesterov, cosine "
                        "schedule; checkpoints to OUT.partial and resumes from it. The result's metadata records "
                        "the accumulator it was tuned for.")
    ft.add_argument("model", help="a registered network (psum models)")
    ft.add_argument("--checkpoint", required=True, help="the trained weights to start from (psum train's checkpoint)")
    data_options(ft)
    ft.add_argument("--acc", metavar="SPEC", help="the floating-point accumulator to fine-tune for (e.g. e4m4)")
    ft.add_argument("--int-acc", metavar="SPEC", help="the integer accumulator to fine-tune for (e.g. int14)")
    mac_options(ft)
    ft.add_argument("--weight-bits", type=int, default=8, help="integer MACs: weight bits (default 8)")
    ft.add_argument("--act-bits", type=int, default=8, help="integer MACs: activation bits (default 8)")
    ft.add_argument("--overflow-penalty", type=nonnegative_float, default=0.0, metavar="LAMBDA",
                    help="integer MACs: add LAMBDA times the layers' mean overflow beyond the accumulator's range "
                    "to the loss (WrapNet's penalty; default 0)")
    training_options(ft, epochs=2, lr=0.005, out="checkpoints/MODEL-DATASET-ft-ACC.pt")
    ft.add_argument("--warmup", type=positive_float, default=0.1, help="epochs of linear warm-up (default 0.1)")
