"""What every ``psum`` command shares: the error type, the command registry, the
argument parser that reports every mistake in one line, and argument types that
refuse values no command can mean (a zero batch, a negative seed, a NaN clock).

Every option a user gives is taken once: giving it twice (``--acc a --acc b``) is an
error rather than the last one silently winning. Options that do not apply to what
was asked are refused by the commands themselves.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

# Exceptions of psum's packages that describe bad input (a missing or malformed data
# set, checkpoint, library or cache, a missing tool); the CLI reports them in one line.
# Matched by name so that this module imports none of those packages.
USER_ERRORS = {"DataError", "CheckpointError", "KernelBuildError", "LibraryError", "SynthToolError",
               "YosysError", "NetlistError", "DeviceError", "CacheError", "StudyLocked", "StoreMismatch",
               "ModelImportError", "StaError", "AccelError", "MappingError", "TrainingDiverged"}

#: Seeds psum accepts: what both torch and numpy generators take.
SEED_RANGE = (0, 2**63 - 1)


class UsageError(Exception):
    """An error in what the user asked for; reported in one line, exit status 2."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_spec(spec: str, what: str = ""):
    """A format spec parsed, or a UsageError naming the option it came from."""
    from psum.formats import parse

    try:
        return parse(spec)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{what}: {exc}" if what else str(exc)) from None


# -- argument types -----------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def seed_word(text: str) -> int:
    """A 32-bit seed: 0..2^32-1."""
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{2**32 - 1}, not {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {value}")
    return value


def seed(text: str) -> int:
    value = _integer(text)
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be an integer in {low}..2^63-1, not {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, not {text}")
    return value


def image_limit(text: str) -> int | None:
    """``--limit``: a positive number of images, or ``all``."""
    return None if text.strip().lower() == "all" else positive_int(text)


# -- the parser ----------------------------------------------------------------------------


def _refuse_repeat(action: argparse.Action, namespace: argparse.Namespace) -> None:
    seen = getattr(namespace, "_given", set())
    if action.dest in seen:
        raise argparse.ArgumentError(action, "given more than once (an option that takes several "
                                     "values takes them after one flag)")
    namespace._given = seen | {action.dest}


class _StoreOnce(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_repeat(self, namespace)
        super().__call__(parser, namespace, values, option_string)


class _StoreTrueOnce(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_repeat(self, namespace)
        super().__call__(parser, namespace, values, option_string)


class _AppendGiven(argparse._AppendAction):
    """``action="append"`` options repeat by design; they are still marked as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace._given = getattr(namespace, "_given", set()) | {self.dest}
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``psum: error: ...``, exit 2) and options that
    may be given once (``action="append"`` options repeat by design)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self.register("action", "store_true", _StoreTrueOnce)
        self.register("action", "append", _AppendGiven)

    def error(self, message: str):
        where = self.prog.removeprefix("psum").strip()
        hint = f" (psum {where} --help)" if where else " (psum --help)"
        print(f"psum: error: {message}{hint}", file=sys.stderr)
        sys.exit(2)


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The options among ``names`` (dests) that the user gave on the command line."""
    seen = getattr(args, "_given", set())
    return [n for n in names if n in seen]


def option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


#: The options of a fused dot-product unit (docs/semantics.md §11), besides --width.
UNIT_OPTIONS = ("align_bits", "acc_apart", "sticky")


def unit_options(p: argparse.ArgumentParser) -> None:
    """--width, --align-bits, --acc-apart, --sticky: a fused dot-product unit."""
    p.add_argument("--width", type=positive_int, metavar="W",
                   help="a fused dot-product unit of W terms a cycle (docs/semantics.md §11) instead of a MAC")
    p.add_argument("--align-bits", type=nonnegative_int, metavar="L",
                   help="dot-product unit: bits each term keeps below the largest exponent's leading bit")
    p.add_argument("--acc-apart", action="store_true",
                   help="dot-product unit: the accumulator is added whole, not aligned with the products")
    p.add_argument("--sticky", action="store_true",
                   help="dot-product unit: each term keeps one more bit, set when anything was dropped")


def check_unit_options(args: argparse.Namespace) -> None:
    """Unit options need --width; a unit wider than one term needs --align-bits."""
    unit = given(args, *UNIT_OPTIONS)
    if args.width is None and unit:
        raise UsageError(f"{option(unit[0])} applies to dot-product units: give --width W too")
    if args.width is not None and args.width > 1 and args.align_bits is None:
        raise UsageError("a dot-product unit (--width) needs --align-bits L")


# -- datasets ------------------------------------------------------------------------------

#: The options that set a folder dataset's preprocessing (emulator.data.folder_dataset).
PREPROCESSING = ("image_size", "crop", "mean", "std")


def preprocessing_options(p: argparse.ArgumentParser, what: str = "--dataset") -> None:
    """``--image-size``, ``--crop``, ``--mean``, ``--std``: how a folder dataset's images
    become the network's input."""
    p.add_argument("--image-size", type=positive_int,
                   help=f"a folder {what}: the network's input size (default: the first test image's, if square)")
    p.add_argument("--crop", type=positive_float, help=f"a folder {what}: center crop as a share of the "
                   "shorter side after resizing it to image-size/crop (default 1: no margin cut; 0.875 as torchvision)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                   help=f"a folder {what}: channel means on the 0-1 scale (default ImageNet's 0.485 0.456 0.406)")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                   help=f"a folder {what}: channel standard deviations (default ImageNet's 0.229 0.224 0.225)")


def dataset_arg(args: argparse.Namespace, dataset: str | None, flag: str = "--dataset",
                model: str | None = None) -> str | None:
    """The dataset the options name: a registered name as it is, a folder's path as its
    :func:`emulator.data.folder_dataset` id (with the preprocessing options, else what an
    imported ``model`` file records), or None. A preprocessing option without a folder
    dataset is refused."""
    from emulator.data import DATASETS, folder_dataset

    options = given(args, *PREPROCESSING)
    if dataset is None or dataset in DATASETS:
        for name in options:
            raise UsageError(f"{option(name)} sets a folder dataset's preprocessing: give {flag} PATH "
                             f"(registered datasets have their own)")
        return dataset
    from pathlib import Path

    if not Path(dataset).expanduser().exists() and not dataset.startswith("folder:"):
        raise UsageError(f"{flag} {dataset}: no such dataset; choose from {', '.join(DATASETS)}, or give the path "
                         "of a folder with train/ and test/ (or val/) ImageFolder trees")
    prep = {name: getattr(args, name) for name in PREPROCESSING}
    if model is not None:
        from emulator.models import preprocessing

        try:
            recorded = preprocessing(model) or {}
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        prep = {name: recorded.get(name) if value is None else value for name, value in prep.items()}
    return folder_dataset(dataset, **prep)
