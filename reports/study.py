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

from reports.store import Store, point_key

__all__ = ["ModelRun", "StudySpec", "run_study", "evaluate_task"]


@dataclass
class ModelRun:
    name: str
    checkpoint: str
    dataset: str | None = None


@dataclass
class StudySpec:
    models: list[ModelRun] = field(default_factory=lambda: [ModelRun("lenet5", "checkpoints/lenet5-cifar10.pt")])
    inputs: str = "bf16"
    exp_bits: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    max_width: int = 24  # FP candidates: 1 + E + M <= max_width
    mode: str = ""  # appended to every FP candidate, e.g. ":sat" or ":ftz:rz"
    chunk: int | None = None
    int_bits: int = 8
    int_width_range: tuple[int, int] = (8, 32)
    tolerances: list[float] = field(default_factory=lambda: [0.5, 1.0])  # top-1 points
    limit: int | None = 2000
    seed: int = 0
    per_layer: bool = True
    synth: bool = True
    liberty: str | None = None
    streams: int = 4096
    data_dir: str | None = None
    download: bool = False  # fetch CIFAR into data_dir when missing (a user's machine)
    batch_size: int = 500
    device: str = "cpu"  # where points are evaluated; results are the same bits on any

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> StudySpec:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"study spec {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"study spec {path} is not valid TOML: {exc}") from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"study spec {path}: unknown keys {', '.join(sorted(unknown))}")
        if "models" in raw:
            raw["models"] = [ModelRun(**m) for m in raw["models"]]
        if "int_width_range" in raw:
            raw["int_width_range"] = tuple(raw["int_width_range"])
        return cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})

    def candidates(self, exp_bits: int) -> list[str]:
        return [f"e{exp_bits}m{m}{self.mode}" for m in range(0, self.max_width - exp_bits)]


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
    if task["policy"]["kind"] == "int":
        train = _source(dataset, "train", task["data_dir"], task.get("download", False))
        calibrate(emulated, [x for x, _ in train.batches(250, shuffle=True, seed=task["seed"], limit=1000)])
    threshold = task.get("threshold")

    def clearly_failing(correct: int, seen: int, total: int) -> bool:
        return threshold is not None and seen >= 250 and wilson_interval(correct, seen)[1] < threshold

    test = _source(dataset, "test", task["data_dir"], task.get("download", False))
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


class Runner:
    """Asks for points: from the store, or computed by the executor and then stored."""

    def __init__(self, spec: StudySpec, store: Store, executor, log=print, threads: int | None = None):
        from psum import __version__

        self.spec, self.store, self.executor, self.log = spec, store, executor, log
        self.version, self.threads = __version__, threads
        self.computed = self.reused = 0

    def accuracy(self, run: ModelRun, policy: dict, threshold: float | None = None) -> dict:
        fields = {"model": run.name, "dataset": run.dataset, "checkpoint": _digest(run.checkpoint),
                  "policy": policy, "limit": self.spec.limit, "seed": self.spec.seed,
                  "threshold": None if threshold is None else round(threshold, 6), "psum": self.version}
        key = point_key(fields)
        found = self.store.get(key)
        if found is not None:
            self.reused += 1
            return found
        task = {"model": run.name, "dataset": run.dataset, "checkpoint": str(run.checkpoint), "policy": policy,
                "limit": self.spec.limit, "seed": self.spec.seed, "threshold": threshold,
                "data_dir": self.spec.data_dir, "download": self.spec.download, "batch_size": self.spec.batch_size,
                "threads": self.threads, "device": self.spec.device}
        start = time.monotonic()
        result = self.executor.submit(evaluate_task, task).result()
        self.store.put(key, "accuracy", fields, result)
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
            found = runner.store.get(point_key({"model": run.name, "dataset": run.dataset,
                                                "checkpoint": _digest(run.checkpoint), "policy": fp_policy(acc),
                                                "limit": spec.limit, "seed": spec.seed,
                                                "threshold": round(fp_threshold, 6), "psum": runner.version}))
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


def _hardware(runner: Runner, run: ModelRun, found: dict, log) -> list[dict]:
    """Synthesis and energy of every MAC the study names for ``run``."""
    from emulator import data
    from emulator.streams import largest_layer, operand_streams
    from hwgen import FloatMAC, IntMAC
    from synth.flow import synthesize
    from synth.liberty import embedded, from_liberty
    from synth.power import estimate_energy, finite_patterns, uniform_streams

    spec = runner.spec
    library = from_liberty(spec.liberty) if spec.liberty else embedded()
    accs = {"fp32"} | {a for f in found["fp"].values() for a in f.values() if a}
    ints = {"int32"} | {a for f in found["int"].values() for a in f.values() if a}
    units = [("fp", a, FloatMAC(spec.inputs, a)) for a in sorted(accs)] + \
            [("int", a, IntMAC(spec.int_bits, spec.int_bits, a)) for a in sorted(ints)]
    model, dataset = _model(run.name, run.dataset, run.checkpoint)
    batch, _ = next(_source(dataset, "test", spec.data_dir).batches(64, shuffle=True, seed=spec.seed))
    layer = largest_layer(model, data.DATASETS[dataset].image_size)
    rows = []
    for family, acc, mac in units:
        fields = {"unit": mac.describe(), "library": library.digest, "model": run.name,
                  "checkpoint": _digest(run.checkpoint), "layer": layer, "streams": spec.streams, "seed": spec.seed,
                  "psum": runner.version}
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
    if scheduler:
        from dask.distributed import Client

        return Client(scheduler)
    if workers > 1:
        import multiprocessing

        return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _InProcess()


def run_study(spec: StudySpec, out: str | Path, *, workers: int = 1, scheduler: str | None = None,
              executor=None, log=print) -> dict:
    """Run (or resume) the study into ``out``; returns the results and writes the report."""
    from emulator.device import resolve_device
    from reports.report import write_report

    resolve_device(spec.device)  # a missing GPU is an error here, before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    own = executor is None
    executor = executor or make_executor(workers, scheduler)
    threads = 1 if (workers > 1 or scheduler) else None
    store = Store(out / "results.sqlite")
    runner = Runner(spec, store, executor, log=log, threads=threads)
    results = {"spec": _spec_dict(spec), "models": {}}
    try:
        for run in spec.models:
            if not Path(run.checkpoint).is_file():
                raise ValueError(f"checkpoint {run.checkpoint} of model {run.name} does not exist")
            log(f"{run.name}: accuracy search ({len(spec.exp_bits)} exponent widths, "
                f"{sum(len(spec.candidates(e)) for e in spec.exp_bits)} FP candidates, tolerances {spec.tolerances})")
            found: dict = {}
            _search_model(runner, run, found, log)
            if spec.synth:
                log(f"{run.name}: synthesis and energy of the MACs found")
                found["hardware"] = _hardware(runner, run, found, log)
            results["models"][run.name] = found
    finally:
        if own:
            (executor.close if hasattr(executor, "close") else executor.shutdown)()
    results["points"] = [{**f, **r} for f, r in store.all("accuracy")]
    results["stats"] = {"computed": runner.computed, "reused": runner.reused,
                        "seconds": round(time.monotonic() - started, 1)}
    store.close()
    write_report(results, spec, out)
    return results


def _spec_dict(spec: StudySpec) -> dict:
    d = asdict(spec)
    d["models"] = [asdict(m) for m in spec.models]
    return d


