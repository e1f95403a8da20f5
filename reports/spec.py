"""What a study searches, on which networks, and how: :class:`StudySpec` (TOML or
flags), checked as a whole before anything runs (docs/study.md, "Spec")."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModelRun", "StudySpec", "SpecError", "MODEL_KEYS", "CHUNK_SIZES", "DEFAULT_CHUNK_SIZES"]

#: The chunk sizes of the full chunk sweep (studies/cifar10.toml; the whole K, unchunked,
#: is the main search). The default spec (``make study``) sweeps ``DEFAULT_CHUNK_SIZES``.
CHUNK_SIZES = [4, 8, 16, 32, 64, 128, 256]
DEFAULT_CHUNK_SIZES = [16, 64]


@dataclass
class ModelRun:
    """One network of the study: a registered model ``name``, or with ``factory`` a
    network of one's own (``FILE.py:NAME`` or ``package.module:NAME``, see
    :func:`emulator.models.entry_point`) that ``name`` labels in tables and file names;
    its checkpoint; its dataset (``None``: a registered model's first; a name of
    :data:`emulator.data.DATASETS`, or a folder's path, whose preprocessing
    ``image_size``, ``crop``, ``mean``, ``std`` may set; checking the spec turns it into
    the folder's :func:`emulator.data.folder_dataset` id)."""

    name: str
    checkpoint: str
    dataset: str | None = None
    factory: str | None = None
    image_size: int | None = None
    crop: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def ref(self) -> str:
        """What :func:`emulator.models.build` takes: the entry point, or the registered name."""
        return self.factory or self.name


#: The keys a ``[[models]]`` table of a TOML spec may hold (name and checkpoint required).
MODEL_KEYS = ("name", "checkpoint", "dataset", "factory", "image_size", "crop", "mean", "std")


class SpecError(ValueError):
    """A study spec that cannot be run; raised before anything is evaluated or written."""


@dataclass
class StudySpec:
    """What a study searches, on which networks, and how.

    Checked as a whole on creation (:meth:`validate`): every value's type and range,
    every FP candidate and the operand format against what the emulator can run, so
    that a bad spec fails in one line before any evaluation.
    """

    models: list[ModelRun] = field(default_factory=lambda: [ModelRun("lenet5", "checkpoints/lenet5-cifar10.pt")])
    inputs: str = "bf16"
    #: More FP operand formats (e.g. ["e4m3", "e5m2"]): for each, the network-level FP
    #: search with those operands against their own fp32-accumulator reference, and its
    #: minimal MAC costed beside the main pair (reports.search.operand_searches).
    operand_formats: list[str] = field(default_factory=lambda: ["e4m3"])  # []: the main inputs only
    exp_bits: list[int] = field(default_factory=lambda: [4, 5, 6])  # studies/cifar10.toml: 3..8
    #: Fused dot-product units (docs/semantics.md §11): per width W, the fewest align bits
    #: within tolerance (reports.search.dpu_search), and the Hopper-like unit
    #: (dpu_hopper_bits, truncation, accumulator aligned) with and without promotion
    #: into fp32 every dpu_promote terms. [] : none.
    dpu_widths: list[int] = field(default_factory=list)
    dpu_inputs: str = "e4m3"
    dpu_acc: str = "fp32"
    dpu_align_range: tuple[int, int] = (0, 24)
    dpu_hopper_bits: int = 13
    dpu_promote: int = 128
    #: Fine-tuning through the emulated accumulation (docs/semantics.md §12,
    #: reports.finetune): below the zero-shot FP and INT minima (tightest tolerance),
    #: up to finetune_steps narrower accumulators, each fine-tuned for finetune_epochs
    #: epochs at peak learning rate finetune_lr (INT ones with an overflow penalty) and
    #: judged against the reference. 0: none.
    finetune_epochs: int = 0
    finetune_lr: float = 0.005
    finetune_steps: int = 3
    #: INT candidates' overflow penalty (lambda; emulator.layers overflow, WrapNet's)
    finetune_overflow_penalty: float = 10.0
    max_width: int = 24  # FP candidates: 1 + E + M <= max_width
    mode: str = ""  # appended to every FP candidate, e.g. ":sat" or ":ftz:rz"
    chunk: int | None = None
    int_bits: int = 8
    int_width_range: tuple[int, int] = (8, 32)
    tolerances: list[float] = field(default_factory=lambda: [0.5, 1.0])  # top-1 points
    limit: int | None = None  # decision images: None, the whole test split; else a seeded subset
    seed: int = 0
    screen: int = 1000  # screening images (a seeded subset of the decision images); 0: none
    screen_seed: int = 1
    window: int = 2  # mantissa widths / INT widths evaluated beyond the tightest minimum
    calibration_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    chunk_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_CHUNK_SIZES))  # []: no chunk sweep
    orders: list[str] = field(default_factory=lambda: ["im2col", "nhwc"])  # first: the main order
    prediction: bool = True  # per-layer K, error of accumulation against exact sums
    per_layer: bool = True
    fold_bn: bool = False  # fold batch norm into the convolution before it (emulator.fold), as deployed
    synth: bool = True
    sta: bool | str = "auto"  # OpenSTA critical paths: true, false, or "auto" (when installed; the report says which)
    liberty: str | None = None
    streams: int = 4096
    data_dir: str | None = None
    download: bool = False  # fetch CIFAR into data_dir when missing (a user's machine)
    batch_size: int = 500
    device: str = "cpu"  # where points are evaluated; results are the same bits on any

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> StudySpec:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpecError(f"study spec {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read study spec {path}: {getattr(exc, 'strerror', None) or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"study spec {path} is not valid TOML: {exc}") from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise SpecError(f"study spec {path}: unknown keys {', '.join(sorted(unknown))}")
        if "models" in raw:
            raw["models"] = _model_runs(raw["models"], path)
        if isinstance(raw.get("int_width_range"), list):
            raw["int_width_range"] = tuple(raw["int_width_range"])
        if isinstance(raw.get("limit"), str) and raw["limit"].strip().lower() == "all":
            raw["limit"] = None
        try:
            return cls(**{**raw, **overrides})
        except SpecError as exc:
            raise SpecError(f"study spec {path}: {str(exc).removeprefix('study spec: ')}") from None

    def validate(self) -> None:
        """Raise :class:`SpecError` (one line naming the key) for any value the study
        cannot run with."""
        _validate(self)

    def main_chunk(self) -> tuple[int | None, str | None]:
        """(chunk size, outer format) of the main searches' FP points and of the MACs
        costed for them: ``chunk`` with the emulator's fp32 outer accumulator, or
        ``(None, None)`` unchunked."""
        return (self.chunk, "fp32") if self.chunk else (None, None)

    def candidates(self, exp_bits: int) -> list[str]:
        """The FP accumulators searched with ``exp_bits`` exponent bits, narrowest first."""
        return [f"e{exp_bits}m{m}{self.mode}" for m in range(0, self.max_width - exp_bits)]

    def int_candidates(self, mode: str = "") -> list[str]:
        """The INT accumulators searched (``mode`` ``""`` wraps, ``":sat"`` saturates)."""
        low, high = self.int_width_range
        return [f"int{w}{mode}" for w in range(low, high + 1)]


def _model_runs(tables, path) -> list[ModelRun]:
    from emulator.models import is_model_file

    if not isinstance(tables, list) or not tables:
        raise SpecError(f"study spec {path}: models must be one or more [[models]] tables")
    runs = []
    for i, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise SpecError(f"study spec {path}: [[models]] entry {i} must be a table with keys "
                            f"{', '.join(MODEL_KEYS)}")
        unknown = sorted(set(table) - set(MODEL_KEYS))
        if unknown:
            raise SpecError(f"study spec {path}: [[models]] entry {i} has unknown keys {', '.join(unknown)} "
                            f"(known: {', '.join(MODEL_KEYS)})")
        if "checkpoint" not in table and is_model_file(table.get("factory")):
            table = {**table, "checkpoint": table["factory"]}  # an imported file carries its weights
        missing = [k for k in ("name", "checkpoint") if k not in table]
        if missing:
            raise SpecError(f"study spec {path}: [[models]] entry {i} lacks {' and '.join(missing)}")
        runs.append(ModelRun(**table))
    return runs


def _fail(message: str):
    raise SpecError(f"study spec: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(name: str, value, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        _fail(f"{name} must be an integer {bounds}, not {value!r}")


def _validate_run(run: ModelRun) -> None:
    """One model of the spec; its folder dataset's path becomes the dataset's id."""
    import re

    from emulator.data import DATASETS, DataError, folder_dataset
    from emulator.models import MODELS, is_entry_point, is_model_file, preprocessing

    if run.factory is None:
        if not isinstance(run.name, str) or run.name not in MODELS:
            _fail(f"unknown model {run.name!r}; choose from {', '.join(MODELS)}, or name a network of your own "
                  "with factory = \"FILE.py:NAME\"")
    else:
        if not is_entry_point(run.factory) and not is_model_file(run.factory):
            _fail(f"factory of model {run.name!r} must be FILE.py:NAME, package.module:NAME or FILE.tflite, "
                  f"not {run.factory!r}")
        if not isinstance(run.name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", run.name) \
                or run.name in MODELS:
            _fail(f"the name of a network of your own labels it in tables and file names: letters, digits, "
                  f"'_', '.', '-', and not a registered model's name; not {run.name!r}")
        if run.dataset is None:
            _fail(f"model {run.name} is a network of your own: give its dataset")
    if not isinstance(run.checkpoint, str) or not run.checkpoint:
        _fail(f"the checkpoint of model {run.name} must be a path, not {run.checkpoint!r}")
    options = {k: getattr(run, k) for k in ("image_size", "crop", "mean", "std") if getattr(run, k) is not None}
    if run.dataset is None or run.dataset in DATASETS:
        if options:
            _fail(f"model {run.name}: {', '.join(options)} set a folder dataset's preprocessing; "
                  f"{run.dataset or 'its default dataset'} has its own")
        if run.factory is None and run.dataset is not None and run.dataset not in MODELS[run.name].datasets:
            _fail(f"model {run.name} is trained on {', '.join(MODELS[run.name].datasets)}, not {run.dataset!r}")
        return
    if not isinstance(run.dataset, str):
        _fail(f"the dataset of model {run.name} must be a name or a folder's path, not {run.dataset!r}")
    if is_model_file(run.factory):  # what the file records, where the spec does not say
        try:
            recorded = preprocessing(run.factory) or {}
        except ValueError as exc:
            _fail(f"model {run.name}: {exc}")
        options = {**recorded, **options}
    try:
        run.dataset = folder_dataset(run.dataset, **options)
    except DataError as exc:
        _fail(f"model {run.name}: {exc}")


def _validate(spec: StudySpec) -> None:
    import math

    from emulator import AccumConfig
    from emulator.matmul import check_config
    from psum.formats import FloatFormat, parse

    if not isinstance(spec.models, list) or not spec.models:
        _fail("models must be a non-empty list of models")
    names = []
    for run in spec.models:
        if not isinstance(run, ModelRun):
            _fail(f"models must hold ModelRun entries, not {run!r}")
        _validate_run(run)
        names.append(run.name)
    if len(set(names)) != len(names):
        _fail(f"each model may be listed once (results are reported by model name): {', '.join(names)}")
    for name in ("mode", "device"):
        if not isinstance(getattr(spec, name), str):
            _fail(f"{name} must be a string, not {getattr(spec, name)!r}")
    for name in ("liberty", "data_dir"):
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(f"{name} must be a path, not {value!r}")
    for name in ("per_layer", "synth", "download", "fold_bn"):
        if not isinstance(getattr(spec, name), bool):
            _fail(f"{name} must be true or false, not {getattr(spec, name)!r}")
    if not isinstance(spec.sta, bool) and spec.sta != "auto":
        _fail(f"sta must be true, false or \"auto\", not {spec.sta!r}")
    if spec.limit is not None:
        _int_in("limit (test images per point, or 'all')", spec.limit, 1)
    _int_in("seed", spec.seed, 0, 2**63 - 1)
    _int_in("screen (screening images, 0 for none)", spec.screen, 0)
    _int_in("screen_seed", spec.screen_seed, 0, 2**63 - 1)
    _int_in("window", spec.window, 0, 64)
    if not isinstance(spec.prediction, bool):
        _fail(f"prediction must be true or false, not {spec.prediction!r}")
    seeds = spec.calibration_seeds
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and 0 <= s < 2**63 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        _fail(f"calibration_seeds must be a non-empty list of distinct seeds, not {seeds!r}")
    sizes = spec.chunk_sizes
    if not isinstance(sizes, list) or not all(_is_int(c) and c >= 1 for c in sizes) or len(set(sizes)) != len(sizes):
        _fail(f"chunk_sizes must be a list of distinct positive integers, not {sizes!r}")
    from emulator.config import ORDERS

    if not isinstance(spec.orders, list) or not spec.orders or any(o not in ORDERS for o in spec.orders) \
            or len(set(spec.orders)) != len(spec.orders):
        _fail(f"orders must be a non-empty list of distinct orders from {', '.join(ORDERS)}, not {spec.orders!r}")
    _int_in("batch_size", spec.batch_size, 1)
    _int_in("streams", spec.streams, 64)
    _int_in("int_bits", spec.int_bits, 2, 16)
    if spec.chunk is not None:
        _int_in("chunk", spec.chunk, 1)
    _int_in("max_width", spec.max_width, 2, 64)
    widths = spec.int_width_range
    if not isinstance(widths, (tuple, list)) or len(widths) != 2 or not all(_is_int(w) for w in widths):
        _fail(f"int_width_range must be two integers [low, high], not {widths!r}")
    if not 2 <= widths[0] <= widths[1] <= 62:
        _fail(f"int_width_range must satisfy 2 <= low <= high <= 62, not {list(widths)}")
    tolerances = spec.tolerances
    if not isinstance(tolerances, list) or not tolerances:
        _fail(f"tolerances must be a non-empty list of top-1 points, not {tolerances!r}")
    for tol in tolerances:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) \
                or not 0 <= tol < 100:
            _fail(f"tolerances are top-1 points in [0, 100), not {tol!r}")
    if not isinstance(spec.inputs, (str, FloatFormat)):
        _fail(f"inputs must be a format spec, not {spec.inputs!r}")
    try:
        inputs = parse(spec.inputs)
    except (ValueError, TypeError) as exc:
        _fail(f"inputs: {exc}")
    if not isinstance(inputs, FloatFormat):
        _fail(f"inputs must be a floating-point format (the INT side takes int_bits), not {inputs}")
    try:
        check_config(AccumConfig(acc="fp32", inputs=inputs))
    except ValueError as exc:
        _fail(f"inputs: {exc}")
    if not isinstance(spec.operand_formats, list):
        _fail(f"operand_formats must be a list of FP formats (e.g. [\"e4m3\", \"e5m2\"]), not {spec.operand_formats!r}")
    for fmt in spec.operand_formats:
        if not isinstance(fmt, str):
            _fail(f"operand_formats must list format specs, not {fmt!r}")
        try:
            other = parse(fmt)
        except (ValueError, TypeError) as exc:
            _fail(f"operand_formats: {exc}")
        if not isinstance(other, FloatFormat):
            _fail(f"operand_formats must list floating-point formats, not {fmt}")
        if fmt == spec.inputs or spec.operand_formats.count(fmt) > 1:
            _fail(f"operand_formats lists {fmt} twice (the main inputs count once)")
    _validate_dpu(spec)
    _int_in("finetune_epochs", spec.finetune_epochs, 0)
    _int_in("finetune_steps", spec.finetune_steps, 1)
    lr = spec.finetune_lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        _fail(f"finetune_lr must be a positive finite number, not {lr!r}")
    lam = spec.finetune_overflow_penalty
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < math.inf:
        _fail(f"finetune_overflow_penalty must be a finite number at least 0, not {lam!r}")
    if spec.mode and not spec.mode.startswith(":"):
        _fail(f"mode is appended to every FP candidate and starts with ':' (':sat', ':ftz:rz'), not {spec.mode!r}")
    if not isinstance(spec.exp_bits, list) or not spec.exp_bits or not all(_is_int(e) for e in spec.exp_bits):
        _fail(f"exp_bits must be a non-empty list of integers, not {spec.exp_bits!r}")
    if len(set(spec.exp_bits)) != len(spec.exp_bits):
        _fail(f"exp_bits lists a width twice: {spec.exp_bits}")
    for exp_bits in spec.exp_bits:
        if not 2 <= exp_bits <= 11:
            _fail(f"exp_bits must lie in 2..11, not {exp_bits}")
        if spec.max_width < exp_bits + 1:
            _fail(f"max_width {spec.max_width} leaves no FP candidate with {exp_bits} exponent bits "
                  f"(1 + E + M <= max_width needs max_width >= {exp_bits + 1})")
        for acc in spec.candidates(exp_bits):
            for fmt in [inputs, *spec.operand_formats]:
                try:
                    check_config(AccumConfig(acc=acc, inputs=fmt, chunk=spec.chunk))
                except (ValueError, TypeError) as exc:
                    _fail(f"candidate {acc} (exp_bits {exp_bits}, max_width {spec.max_width}, inputs {fmt}): {exc}")


def _validate_dpu(spec: StudySpec) -> None:
    """The dot-product unit keys: widths 1..64, a range of align bits, formats the unit's
    emulation takes (emulator.dpu.check_dpu), a promotion a multiple of every width."""
    from emulator import AccumConfig
    from emulator.dpu import MAX_WIDTH, check_dpu
    from emulator.matmul import check_config
    from psum.formats import FloatFormat, parse

    if not isinstance(spec.dpu_widths, list) or not all(_is_int(w) and 1 <= w <= MAX_WIDTH for w in spec.dpu_widths):
        _fail(f"dpu_widths must be a list of integers from 1 to {MAX_WIDTH}, not {spec.dpu_widths!r}")
    if len(set(spec.dpu_widths)) != len(spec.dpu_widths):
        _fail(f"dpu_widths lists a width twice: {spec.dpu_widths}")
    bits = spec.dpu_align_range
    if isinstance(bits, list):
        bits = spec.dpu_align_range = tuple(bits)
    if not isinstance(bits, tuple) or len(bits) != 2 or not all(_is_int(b) for b in bits) or not 0 <= bits[0] <= bits[1]:
        _fail(f"dpu_align_range must be two integers [low, high], 0 <= low <= high, not {bits!r}")
    _int_in("dpu_hopper_bits", spec.dpu_hopper_bits, 0)
    _int_in("dpu_promote", spec.dpu_promote, 1)
    if not spec.dpu_widths:
        return
    try:
        inputs, acc = parse(spec.dpu_inputs), parse(spec.dpu_acc)
    except (ValueError, TypeError) as exc:
        _fail(f"dpu_inputs/dpu_acc: {exc}")
    if not isinstance(inputs, FloatFormat) or not isinstance(acc, FloatFormat):
        _fail(f"dpu_inputs and dpu_acc must be floating-point formats, not {spec.dpu_inputs} and {spec.dpu_acc}")
    for width in spec.dpu_widths:
        if spec.dpu_promote % width:
            _fail(f"dpu_promote {spec.dpu_promote} must be a multiple of every width, not of {width}")
        for align_bits in (bits[1], spec.dpu_hopper_bits):
            try:
                check_dpu(width, align_bits, inputs, inputs, spec.dpu_promote)
                check_config(AccumConfig(acc=acc, inputs=inputs))
            except ValueError as exc:
                _fail(f"dot-product unit W={width} L={align_bits}: {exc}")
