"""``psum study``: the end-to-end study, from a TOML spec and/or flags."""

from __future__ import annotations

import argparse

from psum.cli._common import (PREPROCESSING, UsageError, command, given, image_limit, nonnegative_float,
                              nonnegative_int, positive_float, positive_int, preprocessing_options, seed)


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from reports.study import StudySpec, run_study

    for name in given(args, "checkpoint", "dataset", *PREPROCESSING):
        if not args.model:
            raise UsageError(f"--{name.replace('_', '-')} applies to --model: give --model too")
    from emulator.models import is_model_file

    if args.model and not args.checkpoint and not is_model_file(args.model):
        raise UsageError("--model needs --checkpoint")
    if args.model and args.checkpoint and is_model_file(args.model):
        raise UsageError(f"--checkpoint: {args.model} carries its weights; give no checkpoint")
    if args.scheduler and given(args, "workers"):
        raise UsageError("--workers sets local worker processes; with --scheduler the Dask cluster's workers "
                         "run the points")
    limit = {"limit": args.limit} if given(args, "limit") else {}
    sweep = {"chunk_sizes": args.chunk_sizes} if given(args, "chunk_sizes") else {}
    overrides = {"inputs": args.inputs, "operand_formats": args.operand_formats, "dpu_widths": args.dpu_widths,
                 "dpu_inputs": args.dpu_inputs, "dpu_acc": args.dpu_acc, "dpu_hopper_bits": args.dpu_hopper_bits,
                 "dpu_promote": args.dpu_promote, "finetune_epochs": args.finetune_epochs,
                 "finetune_lr": args.finetune_lr, "finetune_steps": args.finetune_steps,
                 "finetune_overflow_penalty": args.finetune_overflow_penalty,
                 "dpu_align_range": tuple(args.dpu_align_range) if args.dpu_align_range else None, "mode": args.mode, "chunk": args.chunk, "int_bits": args.int_bits,
                 "max_width": args.max_width, "streams": args.streams, "orders": args.orders,
                 "calibration_seeds": args.calibration_seeds, "batch_size": args.batch_size,
                 "int_width_range": tuple(args.int_width_range) if args.int_width_range else None,
                 "prediction": False if args.no_prediction else None,
                 "data_dir": args.data_dir, "seed": args.seed, "liberty": args.liberty,
                 "download": args.download or None, "device": args.device,
                 "synth": False if args.no_synth else None, "per_layer": False if args.no_per_layer else None,
                 "sta": args.sta,
                 "fold_bn": True if args.fold_bn else None,
                 "tolerances": args.tolerance, "exp_bits": args.exp_bits, "screen": args.screen,
                 "screen_seed": args.screen_seed,
                 "models": [_model_run(args)] if args.model else None}
    overrides = {k: v for k, v in overrides.items() if v is not None} | limit | sweep
    try:
        spec = StudySpec.from_toml(args.config, **overrides) if args.config else StudySpec(**overrides)
        results = run_study(spec, args.out, workers=args.workers, scheduler=args.scheduler)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stats = results["stats"]
    print(f"wrote {args.out}/report.md (+ results.csv, results.json, plots); {stats['computed']} points computed, "
          f"{stats['reused']} reused, {stats['seconds']} s")
    return 0


def _model_run(args: argparse.Namespace):
    """The --model network: registered by name, or of one's own (FILE.py:NAME,
    labelled by NAME), with its checkpoint, dataset and a folder dataset's preprocessing."""
    from emulator.models import MODELS, is_entry_point, is_model_file, label
    from reports.study import ModelRun

    prep = {"image_size": args.image_size, "crop": args.crop, "mean": args.mean, "std": args.std}
    if args.model not in MODELS and (is_entry_point(args.model) or is_model_file(args.model)):
        return ModelRun(label(args.model), args.checkpoint or args.model, args.dataset, factory=args.model, **prep)
    return ModelRun(args.model, args.checkpoint, args.dataset, **prep)


#: The spec's TOML keys with their defaults (reports.spec.StudySpec; a test keeps this
#: list whole and its defaults true).
TOML_KEYS = """\
TOML keys of --config (default): models ([[models]] tables: name, checkpoint, dataset,
and for a network of one's own factory ("FILE.py:NAME" or a .tflite/.onnx file; name then
labels it; a file needs no checkpoint) and a folder
dataset's image_size, crop, mean, std; lenet5 with checkpoints/lenet5-cifar10.pt), inputs ("bf16"), operand_formats (["e4m3"]), exp_bits ([4, 5, 6]),
dpu_widths ([]), dpu_inputs ("e4m3"), dpu_acc ("fp32"), dpu_align_range ([0, 24]), dpu_hopper_bits (13),
dpu_promote (128), finetune_epochs (0), finetune_lr (0.005), finetune_steps (3), finetune_overflow_penalty (10),
max_width (24), mode (""), chunk (none), int_bits (8), int_width_range ([8, 32]),
tolerances ([0.5, 1.0]), limit ("all"), seed (0), screen (1000), screen_seed (1),
window (2), calibration_seeds ([0, 1, 2]), chunk_sizes ([16, 64]), orders (["im2col",
"nhwc"]), prediction (true), per_layer (true), fold_bn (false), synth (true), sta ("auto"), liberty
(embedded NanGate45), streams (4096), data_dir ($PSUM_DATA_DIR or ./data), download
(false), batch_size (500), device ("cpu"). Example: studies/cifar10.toml; docs/study.md."""


def add_parser(sub) -> None:
    st = sub.add_parser("study", help="the end-to-end study (the README's main job)",
                        description="Search the minimal FP and INT accumulators of each network within "
                        "accuracy tolerances (paired with the reference on the same images), per network, layer, "
                        "chunk size and order; synthesize the MACs; write report.md, results.csv/json, plots and "
                        "Verilog. Resumes from OUT/results.sqlite.", epilog=TOML_KEYS,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--config", help="study spec (TOML); flags below override it")
    st.add_argument("--out", default="study", help="report folder (default ./study)")
    st.add_argument("--model", help="one model instead of the spec's: a registered network or one of your own, "
                    "FILE.py:NAME or package.module:NAME (both need --checkpoint), or a model file FILE.tflite or "
                    "FILE.onnx (its weights inside)")
    st.add_argument("--checkpoint", help="with --model: its checkpoint (psum checkpoint or plain state_dict)")
    st.add_argument("--dataset", help="with --model: its dataset (default: a registered model's first): cifar10, "
                    "cifar100, imagenet, or a folder of your own with train/ and test/ (or val/) ImageFolder trees")
    preprocessing_options(st)
    st.add_argument("--data-dir", help="data directory (default: $PSUM_DATA_DIR or ./data)")
    st.add_argument("--download", action="store_true", help="download CIFAR if missing")
    st.add_argument("--limit", type=image_limit, help="decision images per point, or 'all' (default: all)")
    st.add_argument("--tolerance", type=nonnegative_float, nargs="+", help="top-1 points (default 0.5 1.0)")
    st.add_argument("--exp-bits", type=int, nargs="+", help="exponent widths searched (default 4 5 6; studies/cifar10.toml: 3..8)")
    st.add_argument("--seed", type=seed, help="(default 0)")
    st.add_argument("--liberty", help="Liberty file for synthesis (default embedded NanGate45)")
    st.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default 1: in-process)")
    st.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port)")
    st.add_argument("--no-synth", action="store_true", help="accuracy only")
    st.add_argument("--sta", action=argparse.BooleanOptionalAction, default=None,
                    help="time every MAC with OpenSTA (--no-sta: psum's per-cell estimate only; default: OpenSTA "
                    "when installed, the report says which)")
    st.add_argument("--no-per-layer", action="store_true", help="skip the per-layer search")
    st.add_argument("--fold-bn", action="store_true",
                    help="fold batch norm into the convolution before it, as deployed inference does "
                         "(default: batch norm stays in fp32 after the convolution); recorded in every point's key")
    st.add_argument("--screen", type=nonnegative_int, help="screening images (default 1000; 0: none)")
    st.add_argument("--screen-seed", type=seed, help="seed of the screening subset (default 1)")
    st.add_argument("--device", help="evaluate on cpu (default), cuda or cuda:N: same bits, other speed")
    st.add_argument("--inputs", help="FP MACs' activation and weight format (default bf16)")
    st.add_argument("--operand-formats", nargs="*", metavar="FMT",
                    help="more FP operand formats (default e4m3; none given: no other): each gets its own "
                    "network-level FP search and its minimal MAC costed beside the main pair")
    st.add_argument("--dpu-widths", type=positive_int, nargs="*", metavar="W",
                    help="fused dot-product units of these widths: fewest align bits each, and the Hopper-like unit "
                    "with and without promotion (default none; docs/semantics.md §11)")
    st.add_argument("--dpu-inputs", help="the units' operand format (default e4m3)")
    st.add_argument("--dpu-acc", help="the units' accumulator (default fp32)")
    st.add_argument("--dpu-align-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
                    help="align bits searched (default 0 24)")
    st.add_argument("--dpu-hopper-bits", type=int, metavar="L", help="the Hopper-like unit's align bits (default 13)")
    st.add_argument("--dpu-promote", type=positive_int, metavar="C",
                    help="the Hopper-like unit's promotion into fp32 every C terms (default 128)")
    st.add_argument("--finetune-epochs", type=nonnegative_int, metavar="N",
                    help="fine-tune N epochs through each accumulator below the zero-shot FP and INT minima "
                    "(default 0: none; docs/semantics.md §12)")
    st.add_argument("--finetune-lr", type=positive_float, metavar="LR", help="its peak learning rate (default 0.005)")
    st.add_argument("--finetune-steps", type=positive_int, metavar="S",
                    help="at most S accumulators below each minimum (default 3)")
    st.add_argument("--finetune-overflow-penalty", type=nonnegative_float, metavar="LAMBDA",
                    help="INT candidates' overflow penalty (default 10; 0: none)")
    st.add_argument("--mode", help="appended to every FP candidate, e.g. :sat or :ftz:rz (default none)")
    st.add_argument("--max-width", type=positive_int, help="FP candidates: 1 + E + M <= this (default 24)")
    st.add_argument("--chunk", type=positive_int,
                    help="main searches accumulate in chunks of this many products, fp32 outer (default: unchunked)")
    st.add_argument("--chunk-sizes", type=positive_int, nargs="*", metavar="C",
                    help="the chunk sweep's sizes (default 16 64; none: no sweep)")
    st.add_argument("--orders", nargs="+", choices=["im2col", "nhwc"],
                    help="accumulation orders, the first the main one (default im2col nhwc)")
    st.add_argument("--int-bits", type=positive_int, help="INT MACs' operand bits (default 8)")
    st.add_argument("--int-width-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
                    help="INT accumulator widths searched (default 8 32)")
    st.add_argument("--calibration-seeds", type=seed, nargs="+", help="INT calibration seeds (default 0 1 2)")
    st.add_argument("--streams", type=positive_int, help="operand streams per energy simulation (default 4096)")
    st.add_argument("--batch-size", type=positive_int, help="images per evaluation batch (default 500)")
    st.add_argument("--no-prediction", action="store_true", help="skip the per-layer K and accumulation-error "
                    "prediction")
