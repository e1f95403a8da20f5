"""The ``psum`` command line.

One module per group of commands (:mod:`~psum.cli.formats`, :mod:`~psum.cli.network`, :mod:`~psum.cli.finetune`,
:mod:`~psum.cli.hardware`, :mod:`~psum.cli.study`, :mod:`~psum.cli.accel`), each registering its commands in
:data:`COMMANDS`; each command gets the parsed arguments and returns an exit code. The
layers below (emulator, hwgen, synth, reports) are imported lazily, inside the commands.
Errors a user can cause (a malformed format spec, an impossible width, a repeated or
inapplicable option, a missing or malformed file) print one line ``psum: error: ...``
and exit with status 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from psum import __version__
from psum.cli import accel, finetune, formats, hardware, network, study
from psum.cli._common import COMMANDS, USER_ERRORS, Parser, UsageError, first_line
from psum.cli.formats import format_properties, format_table
from psum.cli.hardware import build_mac
from psum.cli.network import build_policies

__all__ = ["main", "build_parser", "COMMANDS", "UsageError", "build_policies", "build_mac",
           "format_properties", "format_table"]


def build_parser() -> Parser:
    parser = Parser(
        prog="psum",
        description="How few bits can a CNN's partial sums have, and what does each "
        "choice cost in silicon?",
    )
    parser.add_argument("--version", action="version", version=f"psum {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    formats.add_parser(sub)
    network.add_parsers(sub)
    finetune.add_parsers(sub)
    hardware.add_parsers(sub)
    study.add_parser(sub)
    accel.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"psum: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (psum ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file or folder the user named cannot be read or written
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"psum: error: {where}{exc.strerror or first_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # errors about the user's files and tools: one line, exit 2
        if type(exc).__name__ in USER_ERRORS:
            print(f"psum: error: {first_line(exc)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("psum: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
