"""``psum format``: the exact properties of number formats."""

from __future__ import annotations

import argparse
import json
import sys

from psum.cli._common import UsageError, command, parse_spec
from psum.formats import FloatFormat, IntFormat, candidates


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
        "random_bits": fmt.random_bits,
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


def _rounding(row: dict) -> str:
    """The rounding mode, with a stochastic rounding's random bits."""
    return row["rounding"] + (f" (R={row['random_bits']})" if row.get("random_bits") else "")


def format_table(rows: list[dict]) -> str:
    """Markdown table of format properties (integer formats show their range)."""
    lines = [[h for h, _, _ in _COLUMNS]]
    for row in rows:
        if row["kind"] == "int":
            cells = [row["spec"], str(row["bits"]), "-", "-", "-", str(row["max"]),
                     "-", "-", "1", f"{row['bits'] - 1 if row['signed'] else row['bits']}.0",
                     row["overflow"], "-"]
        else:
            cells = [show(row[key]) for _, key, show in _COLUMNS[:-1]] + [_rounding(row)]
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
    if args.candidates and args.spec:
        raise UsageError("give SPECs or --candidates, not both")
    if args.candidates:
        formats = candidates()
    elif args.spec:
        formats = [parse_spec(s) for s in args.spec]
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


def add_parser(sub) -> None:
    fmt = sub.add_parser("format", help="print the properties of number formats",
                         description="Print exact properties of formats given as spec "
                         "strings (e4m7, e5m10b12:sat:ftz:rz, bf16, int24:sat, ...).")
    fmt.add_argument("spec", nargs="*", metavar="SPEC", help="format spec strings")
    fmt.add_argument("--candidates", action="store_true",
                     help="list the study's default accumulator candidates")
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
