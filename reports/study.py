"""The end-to-end study: how many partial-sum bits does a network need, in floating point
and in integers, at every granularity, and what does each choice cost in silicon?

For each model of the :class:`~reports.spec.StudySpec` (docs/study.md, "Method"):

1. references on the decision images (the whole test split by default): fp32; bf16
   inputs with fp32 accumulation (the FP reference); int8 operands with int32
   accumulation, once per calibration seed (the INT references);
2. every search is a scan from the narrowest candidate up (:mod:`reports.search`),
   each candidate paired with its reference on the same images (:mod:`reports.stats`):
   screened on a subset, where it may only be rejected, then judged on the decision
   images; minimal M per exponent width; minimal INT width (wrapping for every
   calibration seed, saturating for the first); per-layer minima, FP and INT; the
   chunk-size sweep (inner and outer accumulators); the second accumulation order;
3. the accumulation error of each layer against exact sums (:mod:`reports.prediction`);
4. synthesis and energy of every MAC named (:mod:`reports.hardware`);
5. the report (:mod:`reports.report`).

Every point lands in the :class:`~reports.store.Store`, so a killed study resumes where
it stopped. Points run in this process (``workers=1``), a process pool (``workers>1``)
or on a Dask cluster (``scheduler``).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import asdict
from pathlib import Path

from reports.points import RunData, Runner, evaluate_task, run_data
from reports.search import search_model
from reports.spec import ModelRun, SpecError, StudySpec, _is_int
from reports.store import Store, study_lock

__all__ = ["ModelRun", "StudySpec", "SpecError", "run_study", "evaluate_task", "make_executor"]


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
    from reports.hardware import library as load_library

    data = {run.name: run_data(run, spec) for run in spec.models}
    library = load_library(spec) if spec.synth else None
    timing = None
    if spec.synth:
        from reports.hardware import timing_source

        timing = timing_source(spec)  # sta = true without OpenSTA: an error here, before any work
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"cannot use {out} as the study's folder: it is a file")
    started = time.monotonic()
    own = executor is None
    executor = executor or make_executor(workers, scheduler)
    try:
        _out_dir(out)
        with study_lock(out):
            results = _run_locked(spec, out, executor, data, library, timing, workers > 1 or scheduler is not None,
                                  log)
    finally:
        if own:
            (executor.close if hasattr(executor, "close") else executor.shutdown)()
    results["stats"]["seconds"] = round(time.monotonic() - started, 1)
    write_report(results, spec, out)
    return results


def _run_locked(spec: StudySpec, out: Path, executor, data: dict[str, RunData], library, timing: str | None,
                pooled: bool, log) -> dict:
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
            found = search_model(runner, run, log)
            if spec.finetune_epochs:
                from reports.finetune import finetune_search

                found["finetune"] = finetune_search(runner, run, found, out / "finetuned", log)
            if spec.prediction:
                from reports.prediction import predict

                log(f"{run.name}: accumulation error of each layer against exact sums")
                found["prediction"] = predict(runner, run, found)
            if spec.synth:
                from reports.hardware import hardware

                log(f"{run.name}: synthesis, timing and energy of the MACs found")
                found["hardware"] = hardware(runner, run, found, log, library, timing)
            results["models"][run.name] = found
        results["points"] = [{**f, **r} for f, r in runner.touched.values()]
        images = {name: {"decision": len(i.decision), "screen": 0 if i.screen is None else len(i.screen)}
                  for name, i in runner.images.items()}
        results["stats"] = {"computed": runner.computed, "reused": runner.reused, "images": images,
                            "screening": runner.screened}
    finally:
        store.close()
    return results


def _spec_dict(spec: StudySpec) -> dict:
    d = asdict(spec)
    d["models"] = [asdict(m) for m in spec.models]
    return d


