"""``psum verilog`` and ``psum synth``: a MAC unit's Verilog, its gates, area, timing
and switching energy."""

from __future__ import annotations

import argparse
import json

from psum.cli._common import (PREPROCESSING, UsageError, check_unit_options, command, dataset_arg, given,
                              option, positive_float, positive_int, preprocessing_options, seed,
                              unit_options)

#: Options of a floating-point MAC that an integer one (--int) does not have.
FLOAT_MAC_ONLY = ("inputs", "weights", "product", "chunk", "chunk_acc")


def build_mac(args: argparse.Namespace):
    """The MAC unit the --inputs/--acc/--int/... options describe."""
    from hwgen import FloatMAC, IntMAC

    if args.int is not None:
        for name in given(args, *FLOAT_MAC_ONLY):
            raise UsageError(f"{option(name)} applies to floating-point MACs, not to an integer one (--int)")
    elif given(args, "weight_int"):
        raise UsageError("--weight-int applies to integer MACs: give --int BITS too")
    if given(args, "chunk_acc") and args.chunk is None:
        raise UsageError("--chunk-acc applies to chunked MACs: give --chunk too")
    for name in ("inputs", "weights"):
        fmt = _integer_format(getattr(args, name))
        if fmt is not None and args.int is None:
            raise UsageError(f"{option(name)} {getattr(args, name)} is an integer format: an integer MAC is "
                             + (f"--int BITS --weight-int {fmt.bits}" if name == "weights" else f"--int {fmt.bits}"))
    check_unit_options(args)
    if args.width is not None:
        if args.int is not None:
            raise UsageError("--width builds a floating-point dot-product unit, not an integer MAC (--int)")
        for name in given(args, "product", "chunk", "pipeline"):
            raise UsageError(f"{option(name)} applies to MACs, not to a dot-product unit (--width)")
        if args.align_bits is None:
            raise UsageError("a dot-product unit (--width) needs --align-bits L")
        from hwgen.dpu import DotProductUnit

        try:
            return DotProductUnit(args.inputs, args.acc or "fp32", weights=args.weights, width=args.width,
                                  align_bits=args.align_bits, include_acc=not args.acc_apart, sticky=args.sticky)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    try:
        if args.int is not None:
            return IntMAC(args.int, args.int if args.weight_int is None else args.weight_int,
                          args.acc or "int32", pipeline=args.pipeline)
        return FloatMAC(args.inputs, args.acc or "fp32", weights=args.weights, product=args.product,
                        pipeline=args.pipeline, chunk=args.chunk, chunk_acc=args.chunk_acc)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _integer_format(spec: str | None):
    """The IntFormat ``spec`` names, or None (a float format, no spec, or a malformed
    one, which the MAC's own check reports)."""
    from psum.formats import IntFormat, parse

    try:
        fmt = parse(spec) if spec else None
    except ValueError:
        return None
    return fmt if isinstance(fmt, IntFormat) else None


@command("verilog")
def cmd_verilog(args: argparse.Namespace) -> int:
    from hwgen.verilog import write

    mac = build_mac(args)
    if given(args, "vectors", "seed") and not args.testbench:
        raise UsageError(f"{option(given(args, 'vectors', 'seed')[0])} applies to the testbench: give --testbench too")
    try:
        paths = write(mac, args.output, with_testbench=args.testbench, n=args.vectors, seed=args.seed)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path the testbench cannot name
        raise UsageError(str(exc)) from None
    for path in paths:
        print(f"wrote {path}")
    if args.testbench:
        print(f"run: cd {paths[0].parent} && iverilog -o tb {paths[0].name} {paths[1].name} && vvp -n tb"
              "  (exit status 0: PASS; 1: a mismatch or an unreadable vectors file)")
    return 0


def _activity_streams(args, mac):
    """Operand streams of a real network's layer, as --activity asks."""
    import torch

    from emulator import checkpoint, data
    from emulator.models import build, is_model_file, label
    from emulator.streams import largest_layer, operand_streams

    try:
        model, dataset = build(args.activity, dataset_arg(args, args.dataset, model=args.activity))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not is_model_file(args.activity):  # an imported file carries its weights
        checkpoint.load_model(args.checkpoint, model)
    test = data.load(dataset, "test", args.data_dir)
    batch, _ = next(test.batches(64, shuffle=True, seed=args.seed))
    layer = args.activity_layer or largest_layer(model, data.dataset_spec(dataset).image_size)
    torch.manual_seed(args.seed)
    try:
        if args.int is not None:
            a, b = operand_streams(model, layer, batch, args.streams, seed=args.seed, int_bits=args.int)
        else:
            a, b = operand_streams(model, layer, batch, args.streams, seed=args.seed, inputs=mac.inputs,
                                   weights=mac.weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return a, b, f"{label(args.activity)}/{data.dataset_spec(dataset).name} layer {layer}, {len(batch)} test images"


#: Options that choose the real operand streams; they need --activity.
ACTIVITY_ONLY = ("checkpoint", "activity_layer", "dataset", "data_dir", *PREPROCESSING)


def _is_model_file(ref: str) -> bool:
    from emulator.models import is_model_file

    return is_model_file(ref)


@command("synth")
def cmd_synth(args: argparse.Namespace) -> int:
    from synth.flow import clock_check, synthesize
    from synth.liberty import embedded, from_liberty
    from synth.power import estimate_energy, pack_terms, random_operands
    from synth.timed import GLITCH_LANES

    mac = build_mac(args)
    if args.streams < 64:
        raise UsageError(f"--streams must be at least 64, not {args.streams}")
    if args.activity is None:
        for name in given(args, *ACTIVITY_ONLY):
            raise UsageError(f"{option(name)} chooses real operand streams: give --activity MODEL too")
    elif not args.checkpoint and not _is_model_file(args.activity):
        raise UsageError("--activity needs --checkpoint")
    elif args.checkpoint and _is_model_file(args.activity):
        raise UsageError(f"--checkpoint: {args.activity} carries its weights; give no checkpoint")
    if args.clock_mhz is None:
        from synth.power import DEFAULT_CLOCK_MHZ

        args.clock_mhz = args.target_mhz or DEFAULT_CLOCK_MHZ
    library = from_liberty(args.liberty) if args.liberty else embedded()
    result = synthesize(mac, library, cache=not args.no_cache, target_mhz=args.target_mhz)
    terms = getattr(mac, "macs_per_cycle", 1)
    if terms > 1 and args.parts:
        raise UsageError("--parts splits MACs; a dot-product unit (--width) is reported whole")
    energies = []
    streams = [(*random_operands(mac, args.streams, args.k, args.seed), f"uniform random finite patterns, K={args.k}")]
    if args.activity:
        a, b, label = _activity_streams(args, mac)
        if terms > 1:  # W consecutive terms a cycle: (S, cycles[, words]) streams
            a, b = pack_terms(a, len(mac.a) // terms, terms), pack_terms(b, len(mac.b) // terms, terms)
        streams.append((a, b, label))
    for a, b, label in streams:
        for glitches in (False, True) if args.glitches else (False,):
            energies.append(estimate_energy(result.netlist, library, a, b, unit=mac.describe(), operands=label,
                                            clock_mhz=args.clock_mhz, pipeline=mac.pipeline, glitches=glitches,
                                            max_lanes=GLITCH_LANES if glitches else 16384))
    sta = None
    if args.sta or args.target_mhz:  # a timing-driven run is timed with OpenSTA
        from synth.sta import static_timing

        sta = static_timing(result.netlist_verilog, library)
    timing = clock_check(sta.critical_path_ns if sta else result.critical_path_ns, args.clock_mhz)
    report = {"synthesis": result.as_dict(), "macs_per_cycle": terms,
              "energy": [{**e.as_dict(), "energy_per_term_pj": e.energy_per_mac_pj / terms, "timing": timing}
                         for e in energies], "library_notes": list(library.notes)}
    if sta:
        report["sta"] = {"critical_path_ns": sta.critical_path_ns, "fmax_mhz": round(sta.fmax_mhz, 1),
                         "startpoint": sta.startpoint, "endpoint": sta.endpoint, "tool": sta.tool}
    if args.parts:
        from synth.components import costs_by_part

        a, b, label = streams[-1]
        report["parts"] = costs_by_part(mac, library, a, b, operands=label, cache=not args.no_cache,
                                        clock_mhz=args.clock_mhz, pipeline=mac.pipeline)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    r = result
    print(f"{r.unit} on {r.library}" + (" (cached)" if r.cached else f" ({r.synth_seconds:.1f} s)"))
    rows = [("cells", f"{r.num_cells}"), ("area", f"{r.area_um2:.1f} um^2 ({r.sequential_area_um2:.1f} sequential)"),
            ("transistors (CMOS estimate)", f"{r.transistors}"), ("flip-flops", f"{r.flip_flops}"),
            ("logic depth", f"{r.depth} cells"),
            ("netlist", f"recipe {r.recipe}, {r.mapping}-oriented mapping" + (
                "" if r.target_mhz is None else f", synthesized for {r.target_mhz:g} MHz: "
                + ("met" if r.target_met else "NOT met, the fastest netlist kept"))),
            ("critical path", f"{r.critical_path_ns:.3f} ns (psum's estimate: one typical delay per cell), "
                              f"f_max {1e3 / r.critical_path_ns:.1f} MHz")]
    if sta:
        rows.append(("critical path (OpenSTA)", f"{sta.critical_path_ns:.3f} ns, f_max {sta.fmax_mhz:.1f} MHz "
                     f"({sta.startpoint} -> {sta.endpoint}; {sta.tool})"))
    met = f"slack {timing['slack_ns']:+.3f} ns" + ("" if timing["meets"] else ": the MAC does NOT meet this clock")
    for e in energies:
        delays = ", glitches counted (cell delays)" if e.delays != "zero" else ""
        per = "" if terms == 1 else f"per cycle ({terms} MACs; {e.energy_per_mac_pj / terms:.4f} pJ per MAC) "
        rows.append((f"energy/{'MAC' if terms == 1 else 'cycle'}, {e.operands}{delays}",
                     f"{per}{e.energy_per_mac_pj:.4f} pJ (switching {e.switching_pj:.4f}, internal {e.internal_pj:.4f}, "
                     f"clock {e.clock_pj:.4f}, leakage {e.leakage_pj:.4f}); {e.power_mw:.3f} mW at "
                     f"{e.clock_mhz:g} MHz ({met}); {e.mac_cycles_per_s / 1e6:.3g} M MAC-cycles/s simulated"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print("  cells by type: " + ", ".join(f"{k} {v}" for k, v in sorted(r.cells.items(), key=lambda kv: -kv[1])))
    for note in library.notes:
        print(f"  note: {note}")
    if args.parts:
        p = report["parts"]
        print(f"  by part (synthesized with its hierarchy: {p['area_um2']:.1f} um^2, {p['energy_pj']:.4f} pJ/MAC "
              f"on {p['operands']}):")
        for name, part in p["parts"].items():
            print(f"    {name.ljust(16)} {part['area_um2']:9.1f} um^2 {100 * part['area_um2'] / p['area_um2']:5.1f}%"
                  f"  {part['energy_pj']:.4f} pJ/MAC {100 * part['energy_pj'] / p['energy_pj']:5.1f}%")
    return 0


def mac_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", default="bf16", help="operand format of a float MAC (default bf16)")
    p.add_argument("--weights", help="format of b (default: as --inputs)")
    p.add_argument("--acc", help="accumulator format (default fp32; int32 with --int)")
    p.add_argument("--product", help="round products to this format first (unfused)")
    p.add_argument("--int", type=positive_int, metavar="BITS", help="an integer MAC with BITS-bit operands")
    p.add_argument("--weight-int", type=positive_int, metavar="BITS", help="integer MAC: width of b (default --int)")
    p.add_argument("--pipeline", action="store_true", help="register between multiplier and adder")
    p.add_argument("--chunk", type=positive_int, help="chunked MAC: spill the accumulator every CHUNK terms")
    p.add_argument("--chunk-acc", default="fp32", help="chunked MAC: outer accumulator (default fp32)")
    unit_options(p)


def add_parsers(sub) -> None:
    vl = sub.add_parser("verilog", help="write a MAC unit's Verilog",
                        description="Write synthesizable Verilog of a MAC unit (Amaranth), optionally "
                        "with a self-checking testbench and golden-model vectors for Icarus Verilog.")
    mac_options(vl)
    vl.add_argument("-o", "--output", default="mac.v", help="Verilog file (default mac.v)")
    vl.add_argument("--testbench", action="store_true", help="also write <stem>_tb.v and <stem>_vectors.hex")
    vl.add_argument("--vectors", type=positive_int, default=2000, help="testbench vectors (default 2000)")
    vl.add_argument("--seed", type=seed, default=0, help="seed of the vectors (default 0)")

    sy = sub.add_parser("synth", help="synthesize a MAC: area, cells, timing, energy",
                        description="Synthesize a MAC unit with Yosys (pyosys) to a cell library and "
                        "estimate its energy per MAC by gate-level simulation of operand streams: "
                        "uniform random ones, and with --activity a real network's.")
    mac_options(sy)
    sy.add_argument("--liberty", help="Liberty file (default: embedded NanGate45 subset)")
    sy.add_argument("--activity", metavar="MODEL", help="operand streams from this network (registered, or "
                    "FILE.py:NAME / package.module:NAME of your own)")
    sy.add_argument("--checkpoint", help="with --activity: its weights")
    sy.add_argument("--activity-layer", "--layer", dest="activity_layer", metavar="NAME",
                    help="with --activity: the layer whose operands drive the simulation (default: the one with "
                         "the most MACs; psum models MODEL lists them). --layer is the old name")
    sy.add_argument("--dataset", help="with --activity: its dataset (default: the model's first), or a folder "
                    "with train/ and test/ ImageFolder trees")
    preprocessing_options(sy)
    sy.add_argument("--data-dir", help="with --activity: the data directory")
    sy.add_argument("--streams", type=positive_int, default=16384, help="dot products simulated (default 16384)")
    sy.add_argument("--k", type=positive_int, default=64, help="terms per random stream (default 64)")
    sy.add_argument("--clock-mhz", type=positive_float,
                    help="clock for power and leakage (default: --target-mhz, else 500)")
    sy.add_argument("--seed", type=seed, default=0, help="(default 0)")
    sy.add_argument("--parts", action="store_true",
                    help="also split area and energy by part (decode, multiplier, align, add, normalize, round, "
                    "register), synthesized with the hierarchy kept")
    sy.add_argument("--glitches", action="store_true",
                    help="also simulate with the cells' delays (inertial, from the library's tables at each net's "
                    "load) and report the energy with every glitch counted beside the zero-delay figure")
    sy.add_argument("--sta", action="store_true",
                    help="also time the netlist with OpenSTA (apt-get install opensta): NLDM delays and slews "
                    "at each net's load, setup included; the clock check then uses its critical path")
    sy.add_argument("--target-mhz", type=positive_float, metavar="MHZ",
                    help="timing-driven synthesis: keep the smallest netlist (each recipe mapped for delay and for "
                    "area) that meets this clock under OpenSTA, or the fastest where none does")
    sy.add_argument("--no-cache", action="store_true", help="resynthesize even if cached")
    sy.add_argument("--json", action="store_true")
