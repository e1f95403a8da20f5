"""``psum study``: the end-to-end study, from a TOML spec and/or flags."""

from __future__ import annotations

import argparse

from psum.cli._common import (UsageError, command, given, image_limit, nonnegative_float, nonnegative_int, positive_int,
                              seed)


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from reports.study import ModelRun, StudySpec, run_study

    for name in given(args, "checkpoint", "dataset"):
        if not args.model:
            raise UsageError(f"--{name} applies to --model: give --model too")
    if args.model and not args.checkpoint:
        raise UsageError("--model needs --checkpoint")
    if args.scheduler and given(args, "workers"):
        raise UsageError("--workers sets local worker processes; with --scheduler the Dask cluster's workers "
                         "run the points")
    limit = {"limit": args.limit} if given(args, "limit") else {}
    overrides = {"data_dir": args.data_dir, "seed": args.seed, "liberty": args.liberty,
                 "download": args.download or None, "device": args.device,
                 "synth": False if args.no_synth else None, "per_layer": False if args.no_per_layer else None,
                 "fold_bn": True if args.fold_bn else None,
                 "tolerances": args.tolerance, "exp_bits": args.exp_bits, "screen": args.screen,
                 "screen_seed": args.screen_seed,
                 "models": [ModelRun(args.model, args.checkpoint, args.dataset)] if args.model else None}
    overrides = {k: v for k, v in overrides.items() if v is not None} | limit
    try:
        spec = StudySpec.from_toml(args.config, **overrides) if args.config else StudySpec(**overrides)
        results = run_study(spec, args.out, workers=args.workers, scheduler=args.scheduler)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stats = results["stats"]
    print(f"wrote {args.out}/report.md (+ results.csv, results.json, plots); {stats['computed']} points computed, "
          f"{stats['reused']} reused, {stats['seconds']} s")
    return 0


def add_parser(sub) -> None:
    st = sub.add_parser("study", help="the end-to-end study (the README's main job)",
                        description="Search the minimal FP and INT accumulators of each network within "
                        "accuracy tolerances (paired with the reference on the same images), per network, layer, "
                        "chunk size and order; synthesize the MACs; write report.md, results.csv/json, plots and "
                        "Verilog. Resumes from OUT/results.sqlite.")
    st.add_argument("--config", help="study spec (TOML); flags below override it")
    st.add_argument("--out", default="study", help="report folder (default ./study)")
    st.add_argument("--model", help="one model instead of the spec's (needs --checkpoint)")
    st.add_argument("--checkpoint", help="with --model: its checkpoint")
    st.add_argument("--dataset", help="with --model: its dataset (default: the model's first)")
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
    st.add_argument("--no-per-layer", action="store_true", help="skip the per-layer search")
    st.add_argument("--fold-bn", action="store_true",
                    help="fold batch norm into the convolution before it, as deployed inference does "
                         "(default: batch norm stays in fp32 after the convolution); recorded in every point's key")
    st.add_argument("--screen", type=nonnegative_int, help="screening images (default 1000; 0: none)")
    st.add_argument("--screen-seed", type=seed, help="seed of the screening subset (default 1)")
    st.add_argument("--device", help="evaluate on cpu (default), cuda or cuda:N: same bits, other speed")
