"""The end-to-end study: how many partial-sum bits does a network need, in floating point
and in integers, and what does each choice cost in silicon?

For each model of the :class:`StudySpec`:

1. baselines: fp32, bf16 inputs with fp32 accumulation (the FP reference), int8
   operands with int32 accumulation (the INT reference);
2. minimal FP accumulator: for each exponent width E, bisect the mantissa width M over
   the candidates (1 + E + M <= ``max_width``) for the smallest M whose top-1 is within
   each tolerance of the FP reference; then the neighbours of each minimum are
   evaluated too, and any pair (M1 < M2) where M1 passes and M2 fails is reported as
   non-monotone;
3. minimal INT accumulator width (wrap and saturate), bisected the same way against the
   INT reference;
4. per-layer minima: with every other layer at the network's minimal format, the
   smallest M each layer tolerates, and the MAC-weighted average accumulator bits;
5. hardware: synthesis and energy per MAC (real operand streams of the model's largest
   layer, and uniform random ones) of the reference MACs and of every minimum found.

Points are evaluated on ``limit`` test images. A point whose Wilson 95% upper bound
falls below the most permissive pass threshold after at least 250 images stops early
(it fails every tolerance). Every result lands in the :class:`~reports.store.Store`, so
a killed study resumes where it stopped. Points run in this process (``workers=1``), a
process pool (``workers>1``) or on a Dask cluster (``scheduler``).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reports.store import Store, point_key, study_lock

__all__ = ["ModelRun", "StudySpec", "SpecError", "run_study", "evaluate_task"]


@dataclass
class ModelRun:
    """One network of the study: a registered model name, its checkpoint, its dataset
    (``None``: the model's first)."""

    name: str
    checkpoint: str
    dataset: str | None = None


#: The keys a ``[[models]]`` table of a TOML spec may hold (name and checkpoint required).
MODEL_KEYS = ("name", "checkpoint", "dataset")


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
    exp_bits: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    max_width: int = 24  # FP candidates: 1 + E + M <= max_width
    mode: str = ""  # appended to every FP candidate, e.g. ":sat" or ":ftz:rz"
    chunk: int | None = None
    int_bits: int = 8
    int_width_range: tuple[int, int] = (8, 32)
    tolerances: list[float] = field(default_factory=lambda: [0.5, 1.0])  # top-1 points
    limit: int | None = 2000  # test images per point; None: the whole test split
    seed: int = 0
    per_layer: bool = True
    synth: bool = True
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

    def candidates(self, exp_bits: int) -> list[str]:
        return [f"e{exp_bits}m{m}{self.mode}" for m in range(0, self.max_width - exp_bits)]


def _model_runs(tables, path) -> list[ModelRun]:
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


def _validate(spec: StudySpec) -> None:
    import math

    from emulator import AccumConfig
    from emulator.data import DATASETS
    from emulator.matmul import check_config
    from emulator.models import MODELS
    from psum.formats import FloatFormat, parse

    if not isinstance(spec.models, list) or not spec.models:
        _fail("models must be a non-empty list of models")
    names = []
    for run in spec.models:
        if not isinstance(run, ModelRun):
            _fail(f"models must hold ModelRun entries, not {run!r}")
        if not isinstance(run.name, str) or run.name not in MODELS:
            _fail(f"unknown model {run.name!r}; choose from {', '.join(MODELS)}")
        if not isinstance(run.checkpoint, str) or not run.checkpoint:
            _fail(f"the checkpoint of model {run.name} must be a path, not {run.checkpoint!r}")
        if run.dataset is not None and (not isinstance(run.dataset, str) or run.dataset not in DATASETS
                                        or run.dataset not in MODELS[run.name].datasets):
            _fail(f"model {run.name} is trained on {', '.join(MODELS[run.name].datasets)}, not {run.dataset!r}")
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
    for name in ("per_layer", "synth", "download"):
        if not isinstance(getattr(spec, name), bool):
            _fail(f"{name} must be true or false, not {getattr(spec, name)!r}")
    if spec.limit is not None:
        _int_in("limit (test images per point, or 'all')", spec.limit, 1)
    _int_in("seed", spec.seed, 0, 2**63 - 1)
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
            try:
                check_config(AccumConfig(acc=acc, inputs=inputs, chunk=spec.chunk))
            except (ValueError, TypeError) as exc:
                _fail(f"candidate {acc} (exp_bits {exp_bits}, max_width {spec.max_width}): {exc}")


# -- one evaluation (runs in a worker) --------------------------------------------------


@functools.lru_cache(maxsize=4)
def _model(name: str, dataset: str | None, checkpoint: str):
    from emulator import checkpoint as ckpt
    from emulator.models import build

    model, dataset = build(name, dataset)
    ckpt.load_model(checkpoint, model)
    return model.eval(), dataset


@functools.lru_cache(maxsize=4)
def _source(dataset: str, split: str, data_dir: str | None, download: bool = False):
    from emulator import data

    return data.load(dataset, split, data_dir, download=download)


def _policy(spec: dict):
    from emulator import AccumConfig, IntAccumConfig, Policy

    if spec["kind"] == "fp32":
        return None
    layers = {}
    for name, acc in spec.get("layers", {}).items():
        layers[name] = AccumConfig(acc=acc, inputs=spec["inputs"], chunk=spec.get("chunk"))
    if spec["kind"] == "int":
        default = IntAccumConfig(acc=spec["acc"], weight_bits=spec["bits"], act_bits=spec["bits"])
    else:
        default = AccumConfig(acc=spec["acc"], inputs=spec["inputs"], chunk=spec.get("chunk"))
    return Policy(default, layers)


#: How integer points calibrate their activation scales: this many training images
#: (the first of a seeded shuffle), in batches of this size.
CALIBRATION = {"images": 1000, "batch_size": 250}


def evaluate_task(task: dict) -> dict:
    """Top-1 of one (model, policy) point; the unit of work a worker runs."""
    import torch

    from emulator import calibrate, convert
    from emulator.device import resolve_device
    from emulator.evaluate import evaluate, wilson_interval

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    torch.manual_seed(task["seed"])
    device = resolve_device(task.get("device", "cpu"))
    model, dataset = _model(task["model"], task["dataset"], task["checkpoint"])
    model.to(device)
    policy = _policy(task["policy"])
    emulated = model if policy is None else convert(model, policy)
    test = _source(dataset, "test", task["data_dir"], task.get("download", False))
    expect = task.get("expect")
    if expect and test.fingerprint() != expect["test"]:  # a worker that sees other data than the key says
        raise SpecError(f"worker's {dataset} test split differs from the one the study keyed its points by "
                        f"(fingerprint {test.fingerprint()[:12]}, expected {expect['test'][:12]})")
    if task["policy"]["kind"] == "int":
        train = _source(dataset, "train", task["data_dir"], task.get("download", False))
        if expect and train.fingerprint() != expect["calibration"]["train"]:
            raise SpecError(f"worker's {dataset} training split differs from the one the study keyed its points by")
        calibrate(emulated, [x for x, _ in train.batches(CALIBRATION["batch_size"], shuffle=True, seed=task["seed"],
                                                         limit=CALIBRATION["images"])])
    threshold = task.get("threshold")

    def clearly_failing(correct: int, seen: int, total: int) -> bool:
        return threshold is not None and seen >= 250 and wilson_interval(correct, seen)[1] < threshold

    result = evaluate(emulated, test, limit=task["limit"], batch_size=task["batch_size"], stop=clearly_failing)
    n = len(test) if task["limit"] is None else min(task["limit"], len(test))
    return {**result.as_dict(), "early_stopped": result.total < n, "device": str(device)}


# -- the search --------------------------------------------------------------------------


def _digest(path: str) -> str:
    """Content digest of a checkpoint (part of every point's key)."""
    stat = Path(path).stat()
    return _digest_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class RunData:
    """What a model run is evaluated on, as digests (part of every point's key): the
    checkpoint's bytes, the resolved dataset, and the fingerprints of the test split and
    of the training split the integer points calibrate on (images, labels, preprocessing)."""

    dataset: str
    checkpoint: str
    test: str
    train: str


def _run_data(run: ModelRun, spec: StudySpec) -> RunData:
    """Loads what ``run`` needs (model, checkpoint, both splits) and digests it; a missing
    or malformed checkpoint or data set raises here, before anything is evaluated."""
    if not Path(run.checkpoint).is_file():
        raise SpecError(f"checkpoint {run.checkpoint} of model {run.name} does not exist")
    _, dataset = _model(run.name, run.dataset, run.checkpoint)
    test = _source(dataset, "test", spec.data_dir, spec.download)
    train = _source(dataset, "train", spec.data_dir, spec.download)
    return RunData(dataset, _digest(run.checkpoint), test.fingerprint(), train.fingerprint())


class Runner:
    """Asks for points: from the store, or computed by the executor and then stored."""

    def __init__(self, spec: StudySpec, store: Store, executor, data: dict[str, RunData], log=print,
                 threads: int | None = None):
        from psum import __version__

        self.spec, self.store, self.executor, self.log = spec, store, executor, log
        self.version, self.threads = __version__, threads
        self.data = data  # model name -> what its points are keyed by
        self.computed = self.reused = 0
        self.touched: dict[str, tuple[dict, dict]] = {}  # this run's points, by key

    def key_fields(self, run: ModelRun, policy: dict, threshold: float | None) -> dict:
        """Everything that determines a point's result (docs/study.md, "What a point's key covers")."""
        data = self.data[run.name]
        fields = {"model": run.name, "dataset": data.dataset, "checkpoint": data.checkpoint,
                  "data": {"test": data.test, "preprocessing": "eval"},
                  "policy": policy, "limit": self.spec.limit, "seed": self.spec.seed,
                  "threshold": None if threshold is None else round(threshold, 6), "psum": self.version}
        if policy["kind"] == "int":
            fields["data"]["calibration"] = {"train": data.train, **CALIBRATION}
        return fields

    def lookup(self, run: ModelRun, policy: dict, threshold: float | None = None) -> dict | None:
        """A stored point, or None; nothing is computed."""
        fields = self.key_fields(run, policy, threshold)
        key = point_key(fields)
        found = self.store.get(key)
        if found is not None:
            self.touched[key] = (fields, found)
        return found

    def accuracy(self, run: ModelRun, policy: dict, threshold: float | None = None) -> dict:
        fields = self.key_fields(run, policy, threshold)
        key = point_key(fields)
        found = self.store.get(key)
        if found is not None:
            self.reused += 1
            self.touched[key] = (fields, found)
            return found
        task = {"model": run.name, "dataset": run.dataset, "checkpoint": str(run.checkpoint), "policy": policy,
                "limit": self.spec.limit, "seed": self.spec.seed, "threshold": threshold,
                "data_dir": self.spec.data_dir, "download": self.spec.download, "batch_size": self.spec.batch_size,
                "threads": self.threads, "device": self.spec.device, "expect": fields["data"]}
        start = time.monotonic()
        result = self.executor.submit(evaluate_task, task).result()
        self.store.put(key, "accuracy", fields, result)
        self.touched[key] = (fields, result)
        self.computed += 1
        label = policy.get("acc", "fp32") + (f" +{len(policy.get('layers', {}))} layer overrides"
                                             if policy.get("layers") else "")
        stop = " (stopped early)" if result["early_stopped"] else ""
        self.log(f"  {run.name} {policy['kind']} {label}: {100 * result['top1']:.2f}% on {result['total']}"
                 f"{stop} [{time.monotonic() - start:.1f} s]")
        return result


def bisect_minimum(options: list, passes) -> int | None:
    """Index of the first passing option, assuming passing is monotone (None if the last
    option fails). ``passes(i)`` is called O(log n) times."""
    if not options or not passes(len(options) - 1):
        return None
    lo, hi = -1, len(options) - 1  # options[hi] passes; options[lo] fails (or lo = -1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _search_model(runner: Runner, run: ModelRun, out: dict, log) -> None:
    spec = runner.spec
    fp_ref = runner.accuracy(run, {"kind": "float", "acc": "fp32", "inputs": spec.inputs, "chunk": None})
    int_ref = runner.accuracy(run, {"kind": "int", "acc": "int32", "bits": spec.int_bits})
    fp32 = runner.accuracy(run, {"kind": "fp32"})
    loosest = max(spec.tolerances) / 100
    fp_threshold, int_threshold = fp_ref["top1"] - loosest, int_ref["top1"] - loosest
    out.update({"baselines": {"fp32": fp32, "bf16_fp32acc": fp_ref, f"int{spec.int_bits}_int32acc": int_ref},
                "fp": {}, "int": {}, "nonmonotone": [], "per_layer": {}})

    def fp_policy(acc: str, layers: dict | None = None) -> dict:
        return {"kind": "float", "acc": acc, "inputs": spec.inputs, "chunk": spec.chunk, **({"layers": layers} if layers else {})}

    def search_e(exp_bits: int) -> dict:
        cands = spec.candidates(exp_bits)
        found = {}
        for tol in sorted(spec.tolerances):
            need = fp_ref["top1"] - tol / 100
            index = bisect_minimum(cands, lambda i: runner.accuracy(run, fp_policy(cands[i]), fp_threshold)["top1"] >= need)
            found[tol] = None if index is None else cands[index]
            if index is not None:  # the neighbours, for the monotonicity check
                for j in (index - 2, index - 1, index + 1, index + 2):
                    if 0 <= j < len(cands):
                        runner.accuracy(run, fp_policy(cands[j]), fp_threshold)
        return found

    with cf.ThreadPoolExecutor(max_workers=len(spec.exp_bits)) as pool:  # exponent widths in parallel
        for exp_bits, found in zip(spec.exp_bits, pool.map(search_e, spec.exp_bits)):
            out["fp"][exp_bits] = found

    for mode in ("", ":sat"):
        widths = [f"int{w}{mode}" for w in range(spec.int_width_range[0], spec.int_width_range[1] + 1)]
        out["int"][mode or ":wrap"] = {}
        for tol in sorted(spec.tolerances):
            need = int_ref["top1"] - tol / 100
            index = bisect_minimum(widths, lambda i: runner.accuracy(
                run, {"kind": "int", "acc": widths[i], "bits": spec.int_bits}, int_threshold)["top1"] >= need)
            out["int"][mode or ":wrap"][tol] = None if index is None else widths[index]

    # Non-monotone pairs among every FP point evaluated for this model.
    for exp_bits in spec.exp_bits:
        points = []
        for m, acc in enumerate(spec.candidates(exp_bits)):
            found = runner.lookup(run, fp_policy(acc), fp_threshold)
            if found is not None:
                points.append((m, acc, found))
        for tol in spec.tolerances:
            need = fp_ref["top1"] - tol / 100
            for (m1, a1, r1) in points:
                for (m2, a2, r2) in points:
                    if m1 < m2 and r1["top1"] >= need > r2["top1"]:
                        out["nonmonotone"].append({"tolerance": tol, "passes": a1, "fails": a2,
                                                   "top1": [r1["top1"], r2["top1"]]})
    if spec.per_layer:
        _per_layer(runner, run, out, fp_policy, fp_ref, fp_threshold)


def _per_layer(runner: Runner, run: ModelRun, out: dict, fp_policy, fp_ref: dict, threshold: float) -> None:
    from emulator.data import DATASETS
    from emulator.models import layer_macs

    spec = runner.spec
    tol = min(spec.tolerances)
    best = [(e, f[tol]) for e, f in out["fp"].items() if f.get(tol)]
    if not best:
        return
    exp_bits, acc = min(best, key=lambda item: (int(item[1].split("m")[1].split(":")[0]) + item[0], item[0]))
    model, dataset = _model(run.name, run.dataset, run.checkpoint)
    macs = layer_macs(model, DATASETS[dataset].image_size)
    m_net = int(acc.split("m")[1].split(":")[0])
    need = fp_ref["top1"] - tol / 100
    layers = {}
    for name in macs:
        options = [f"e{exp_bits}m{m}{spec.mode}" for m in range(0, m_net + 1)]
        index = bisect_minimum(options, lambda i: runner.accuracy(
            run, fp_policy(acc, {name: options[i]}), threshold)["top1"] >= need)
        layers[name] = options[index] if index is not None else acc
    bits = {n: 1 + exp_bits + int(s.split("m")[1].split(":")[0]) for n, s in layers.items()}
    total = sum(macs.values())
    out["per_layer"] = {"tolerance": tol, "network_format": acc, "layers": layers, "macs": macs,
                        "weighted_bits": sum(macs[n] * bits[n] for n in macs) / total,
                        "network_bits": 1 + exp_bits + m_net}


# -- hardware -----------------------------------------------------------------------------


def _library(spec: StudySpec):
    from synth.liberty import embedded, from_liberty

    return from_liberty(spec.liberty) if spec.liberty else embedded()


def _hardware(runner: Runner, run: ModelRun, found: dict, log, library) -> list[dict]:
    """Synthesis and energy of every MAC the study names for ``run``, on ``library``."""
    from emulator import data
    from emulator.streams import largest_layer, operand_streams
    from hwgen import FloatMAC, IntMAC
    from synth.flow import synthesize
    from synth.power import estimate_energy, finite_patterns, uniform_streams

    spec = runner.spec
    accs = {"fp32"} | {a for f in found["fp"].values() for a in f.values() if a}
    ints = {"int32"} | {a for f in found["int"].values() for a in f.values() if a}
    units = [("fp", a, FloatMAC(spec.inputs, a)) for a in sorted(accs)] + \
            [("int", a, IntMAC(spec.int_bits, spec.int_bits, a)) for a in sorted(ints)]
    model, dataset = _model(run.name, run.dataset, run.checkpoint)
    batch, _ = next(_source(dataset, "test", spec.data_dir, spec.download).batches(64, shuffle=True, seed=spec.seed))
    layer = largest_layer(model, data.DATASETS[dataset].image_size)
    rows = []
    for family, acc, mac in units:
        fields = {"unit": mac.describe(), "library": library.digest, "model": run.name,
                  "checkpoint": runner.data[run.name].checkpoint, "data": {"test": runner.data[run.name].test},
                  "layer": layer, "streams": spec.streams, "seed": spec.seed, "psum": runner.version}
        key = point_key(fields)
        row = runner.store.get(key)
        if row is None:
            start = time.monotonic()
            r = synthesize(mac, library)
            if family == "int":
                a, b = operand_streams(model, layer, batch, spec.streams, seed=spec.seed, int_bits=spec.int_bits)
            else:
                a, b = operand_streams(model, layer, batch, spec.streams, seed=spec.seed, inputs=spec.inputs)
            finite = finite_patterns(getattr(mac, "inputs", None))
            real = estimate_energy(r.netlist, library, a, b, unit=mac.describe(), operands=f"{run.name} {layer}")
            ra = uniform_streams(len(mac.a), finite, spec.streams, 64, seed=spec.seed + 1)
            rb = uniform_streams(len(mac.b), finite, spec.streams, 64, seed=spec.seed + 2)
            rand = estimate_energy(r.netlist, library, ra, rb, unit=mac.describe(), operands="uniform random")
            row = {"family": family, "acc": acc, "unit": mac.describe(), "library": library.name,
                   "area_um2": r.area_um2, "cells": r.num_cells, "transistors": r.transistors, "depth": r.depth,
                   "critical_path_ns": r.critical_path_ns, "energy_pj": real.energy_per_mac_pj,
                   "energy_random_pj": rand.energy_per_mac_pj, "synth_seconds": r.synth_seconds}
            runner.store.put(key, "hardware", fields, row)
            log(f"  {mac.describe()}: {r.area_um2:.0f} um^2, {real.energy_per_mac_pj:.3f} pJ/MAC "
                f"[{time.monotonic() - start:.1f} s]")
        rows.append(row)
    return rows


# -- the whole study ----------------------------------------------------------------------


class _InProcess:
    """An executor that runs each task right away in this process."""

    def submit(self, fn, *args):
        future = cf.Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self):
        pass


def make_executor(workers: int = 1, scheduler: str | None = None):
    """Where points run: this process, a local process pool, or a Dask cluster (an
    unreachable scheduler is a one-line error after ``SCHEDULER_TIMEOUT_S``)."""
    if scheduler:
        from dask.distributed import Client

        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 (OSError, TimeoutError, ValueError for bad addresses)
            text = str(exc).strip().splitlines()
            raise SpecError(f"cannot reach the Dask scheduler at {scheduler!r}: "
                            f"{text[0] if text else type(exc).__name__}") from None
    if workers > 1:
        import multiprocessing

        return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _InProcess()


#: Seconds to wait for a Dask scheduler before giving up.
SCHEDULER_TIMEOUT_S = 10


def _out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"cannot use {out} as the study's folder: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise SpecError(f"cannot use {out} as the study's folder: it is not a directory")


def run_study(spec: StudySpec, out: str | Path, *, workers: int = 1, scheduler: str | None = None,
              executor=None, log=print) -> dict:
    """Run (or resume) the study into ``out``; returns the results and writes the report.

    Before anything is evaluated or written, the whole spec is checked and everything it
    names is loaded: each model's checkpoint, its test and training splits (digested
    for the points' keys), the Liberty library, the device and the executor. Then
    ``out`` is locked against a second study (:class:`~reports.store.StudyLocked`) and
    its store is checked to hold results of the same data (:class:`~reports.store.StoreMismatch`).
    """
    from emulator.device import resolve_device
    from reports.report import write_report

    spec.validate()
    if not _is_int(workers) or workers < 1:
        raise SpecError(f"workers must be a positive integer, not {workers!r}")
    resolve_device(spec.device)  # a missing GPU is an error here, before any work
    data = {run.name: _run_data(run, spec) for run in spec.models}
    library = _library(spec) if spec.synth else None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"cannot use {out} as the study's folder: it is a file")
    started = time.monotonic()
    own = executor is None
    executor = executor or make_executor(workers, scheduler)
    try:
        _out_dir(out)
        with study_lock(out):
            results = _run_locked(spec, out, executor, data, library, workers > 1 or scheduler is not None, log)
    finally:
        if own:
            (executor.close if hasattr(executor, "close") else executor.shutdown)()
    results["stats"]["seconds"] = round(time.monotonic() - started, 1)
    write_report(results, spec, out)
    return results


def _run_locked(spec: StudySpec, out: Path, executor, data: dict[str, RunData], library, pooled: bool,
                log) -> dict:
    store = Store(out / "results.sqlite")
    try:
        for run in spec.models:
            d = data[run.name]
            store.claim(f"data {run.name}/{d.dataset} test", d.test, out)
            store.claim(f"data {run.name}/{d.dataset} train", d.train, out)
        runner = Runner(spec, store, executor, log=log, threads=1 if pooled else None, data=data)
        results = {"spec": _spec_dict(spec), "models": {},
                   "data": {name: asdict(d) for name, d in data.items()}}
        for run in spec.models:
            log(f"{run.name}: accuracy search ({len(spec.exp_bits)} exponent widths, "
                f"{sum(len(spec.candidates(e)) for e in spec.exp_bits)} FP candidates, tolerances {spec.tolerances})")
            found: dict = {}
            _search_model(runner, run, found, log)
            if spec.synth:
                log(f"{run.name}: synthesis and energy of the MACs found")
                found["hardware"] = _hardware(runner, run, found, log, library)
            results["models"][run.name] = found
        results["points"] = [{**f, **r} for f, r in runner.touched.values()]
        results["stats"] = {"computed": runner.computed, "reused": runner.reused}
    finally:
        store.close()
    return results


def _spec_dict(spec: StudySpec) -> dict:
    d = asdict(spec)
    d["models"] = [asdict(m) for m in spec.models]
    return d


