"""The study's unit of work, a *point*: one policy of one network evaluated on one set
of test images, with its per-image hits; and the :class:`Runner` that takes points from
the store or has them computed, and judges candidates against their references.

Image sets (docs/study.md, "Statistics"): the **decision** images are the whole test
split (``limit = None``) or the first ``limit`` of a ``seed`` permutation; the
**screening** images are the first ``screen`` of a ``screen_seed`` permutation of the
decision images. A reference is always evaluated on the decision images; a candidate
first on the screening images, where it is rejected only if its paired drop's lower
bound already exceeds every tolerance, and otherwise on the decision images, where it
is judged.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reports.spec import ModelRun, SpecError, StudySpec
from reports.stats import Paired, pack_hits, pair, unpack_hits
from reports.store import Store, point_key

__all__ = ["evaluate_task", "Runner", "RunData", "CALIBRATION", "run_data"]

#: How integer points calibrate their activation scales: this many training images
#: (the first of a permutation seeded by the point's calibration seed), in batches of
#: this size, on the int32-accumulator reference; every accumulator width of that seed
#: shares these scales, so that two INT points differ in their accumulator only.
CALIBRATION = {"images": 1000, "batch_size": 250, "on": "int32 reference"}


# -- in a worker ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _model(ref: str, dataset: str | None, checkpoint: str, fold_bn: bool = False):
    """The trained network (``ref``: :attr:`ModelRun.ref`) in eval mode, its batch norms
    folded into the convolutions before them with ``fold_bn`` (:mod:`emulator.fold`),
    and its dataset."""
    from emulator import checkpoint as ckpt
    from emulator.fold import fold_batchnorm
    from emulator.models import build, is_model_file

    model, dataset = build(ref, dataset)
    if not is_model_file(ref):  # an imported file carries its weights
        ckpt.load_model(checkpoint, model)
    if fold_bn:
        model = fold_batchnorm(model)[0]
    return model.eval(), dataset


@functools.lru_cache(maxsize=4)
def _source(dataset: str, split: str, data_dir: str | None, download: bool = False):
    from emulator import data

    return data.load(dataset, split, data_dir, download=download)


def _float_config(acc: str, policy: dict):
    from emulator import AccumConfig
    from emulator.config import DotUnit

    unit = DotUnit(**policy["unit"]) if policy.get("unit") else None  # a fused dot-product unit
    return AccumConfig(acc=acc, inputs=policy["inputs"], chunk=policy.get("chunk"),
                       chunk_acc=policy.get("chunk_acc") or "fp32", order=policy.get("order", "im2col"), unit=unit,
                       seed=policy.get("sr_seed", 0))


def _int_config(acc: str, policy: dict):
    from emulator import IntAccumConfig

    return IntAccumConfig(acc=acc, weight_bits=policy["bits"], act_bits=policy["bits"])


def _policy(policy: dict):
    """The emulator :class:`~emulator.Policy` a point's policy dict names (None: fp32)."""
    from emulator import Policy

    if policy["kind"] == "fp32":
        return None
    make = _int_config if policy["kind"] == "int" else _float_config
    layers = {name: make(acc, policy) for name, acc in policy.get("layers", {}).items()}
    return Policy(make(policy["acc"], policy), layers)


@functools.lru_cache(maxsize=8)
def _scales(name: str, dataset: str | None, checkpoint: str, bits: int, seed: int, data_dir, download: bool,
            fold_bn: bool = False):
    """Activation scales of the int``bits``/int32 reference calibrated with ``seed``."""
    from emulator import calibrate, convert
    from emulator.convert import emulated_layers

    model, dataset = _model(name, dataset, checkpoint, fold_bn)
    reference = convert(model, _policy({"kind": "int", "acc": "int32", "bits": bits}))
    train = _source(dataset, "train", data_dir, download)
    calibrate(reference, [x for x, _ in train.batches(CALIBRATION["batch_size"], shuffle=True, seed=seed,
                                                      limit=CALIBRATION["images"])])
    return {layer: module.act_scale.clone() for layer, module in emulated_layers(reference)}


def evaluate_task(task: dict) -> dict:
    """Top-1 and per-image hits of one (model, policy, images) point."""
    import torch

    from emulator import convert
    from emulator.convert import emulated_layers
    from emulator.device import resolve_device
    from emulator.evaluate import evaluate
    from emulator.models import has_integer_reading

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    torch.manual_seed(task["seed"])
    device = resolve_device(task.get("device", "cpu"))
    model, dataset = _model(task["model"], task["dataset"], task["checkpoint"], task.get("fold_bn", False))
    policy = _policy(task["policy"])
    integer_reading = task["policy"]["kind"] == "int" and has_integer_reading(task["model"])
    if integer_reading:  # the file's integer network: its own scales, no calibration
        from emulator.tflite_import import TFLiteIntNet

        emulated = TFLiteIntNet.from_policy(task["model"], policy)
    else:
        emulated = model if policy is None else convert(model, policy)
    test = _source(dataset, "test", task["data_dir"], task.get("download", False))
    expect = task.get("expect")
    if expect and test.fingerprint() != expect["test"]:  # a worker that sees other data than the key says
        raise SpecError(f"worker's {dataset} test split differs from the one the study keyed its points by "
                        f"(fingerprint {test.fingerprint()[:12]}, expected {expect['test'][:12]})")
    if task["policy"]["kind"] == "int" and not integer_reading:
        train = _source(dataset, "train", task["data_dir"], task.get("download", False))
        if expect and train.fingerprint() != expect["calibration"]["train"]:
            raise SpecError(f"worker's {dataset} training split differs from the one the study keyed its points by")
        scales = _scales(task["model"], task["dataset"], task["checkpoint"], task["policy"]["bits"],
                         task["policy"]["calibration_seed"], task["data_dir"], task.get("download", False))
        for layer, module in emulated_layers(emulated):
            module.act_scale = scales[layer].clone()
    emulated.to(device)
    result = evaluate(emulated, test, indices=task["indices"], batch_size=task["batch_size"])
    return {**result.as_dict(), "hits": pack_hits(result.hits.numpy()), "device": str(device)}


# -- in the study's process ----------------------------------------------------------------


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
    checkpoint's bytes, the resolved dataset, the fingerprints of the test split and of
    the training split the integer points calibrate on, the test split's size, and for
    a network of one's own the digest of its source file."""

    dataset: str
    checkpoint: str
    test: str
    train: str
    test_images: int
    architecture: str | None = None


def run_data(run: ModelRun, spec: StudySpec) -> RunData:
    """Loads what ``run`` needs (model, checkpoint, both splits) and digests it; a missing
    or malformed checkpoint or data set raises here, before anything is evaluated."""
    if not Path(run.checkpoint).is_file():
        raise SpecError(f"checkpoint {run.checkpoint} of model {run.name} does not exist")
    from emulator.models import architecture_digest, has_integer_reading

    _, dataset = _model(run.ref, run.dataset, run.checkpoint)
    test = _source(dataset, "test", spec.data_dir, spec.download)
    if has_integer_reading(run.ref):  # integer points read the file's scales: no training split is read
        train = NO_CALIBRATION
    else:
        train = _source(dataset, "train", spec.data_dir, spec.download).fingerprint()
    return RunData(dataset, _digest(run.checkpoint), test.fingerprint(), train, len(test),
                   architecture_digest(run.ref))


#: What an imported model file's integer points calibrate on: nothing (the file's scales).
NO_CALIBRATION = "none: the model file's own scales"


def _dataset_key(dataset: str) -> str:
    """A dataset as point keys name it: a folder dataset by its preprocessing, not its
    path (the splits' fingerprints pin down its content), so that a copy elsewhere
    reuses the points."""
    from emulator.data import is_folder_dataset

    return "folder?" + dataset.rpartition("?")[2] if is_folder_dataset(dataset) else dataset


def _indices_digest(indices: np.ndarray) -> str:
    return hashlib.blake2b(np.asarray(indices, dtype="<i8").tobytes(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Images:
    """A model's decision images (indices into its test split) and the screening subset
    (positions into the decision images)."""

    decision: np.ndarray
    screen: np.ndarray | None  # None: no screening

    @classmethod
    def of(cls, spec: StudySpec, test_images: int) -> Images:
        order = np.arange(test_images) if spec.limit is None or spec.limit >= test_images else \
            np.random.default_rng(spec.seed).permutation(test_images)[:spec.limit]
        screen = None
        if 0 < spec.screen < len(order):
            screen = np.sort(np.random.default_rng(spec.screen_seed).permutation(len(order))[:spec.screen])
        return cls(order, screen)


@dataclass
class Judged:
    """A candidate judged against its reference: where it was evaluated (``stage``
    ``"screen"`` if screening rejected it, else ``"decision"``), its point, and the
    paired comparison on the images of that stage."""

    policy: dict
    stage: str
    point: dict
    paired: Paired
    tolerances: list

    def within(self, tolerance: float) -> bool:
        return self.stage == "decision" and self.paired.within(tolerance)

    def confidently_within(self, tolerance: float) -> bool:
        return self.stage == "decision" and self.paired.confidently_within(tolerance)

    def as_dict(self) -> dict:
        return {"acc": self.policy.get("acc"), "stage": self.stage, "top1": self.point["top1"],
                "images": self.point["total"], "paired": self.paired.as_dict(),
                "within": {str(t): self.within(t) for t in self.tolerances},
                "confidently_within": {str(t): self.confidently_within(t) for t in self.tolerances}}


class Runner:
    """Asks for points: from the store, or computed by the executor and then stored."""

    def __init__(self, spec: StudySpec, store: Store, executor, data: dict[str, RunData], log=print,
                 threads: int | None = None):
        from psum import __version__

        self.spec, self.store, self.executor, self.log = spec, store, executor, log
        self.version, self.threads = __version__, threads
        self.data = data  # model name -> what its points are keyed by
        self.images = {name: Images.of(spec, d.test_images) for name, d in data.items()}
        self.computed = self.reused = 0
        self.screened = {"rejected": 0, "image_evaluations_saved": 0}  # by this study, stored or not
        self.touched: dict[str, tuple[dict, dict]] = {}  # this run's points, by key
        #: fine-tuned checkpoints by content digest: a policy's "finetuned" entry names one
        #: (reports.finetune), which its points evaluate instead of the model's checkpoint
        self.checkpoints: dict[str, str] = {}

    def _indices(self, run: ModelRun, stage: str) -> np.ndarray:
        images = self.images[run.name]
        return images.decision if stage == "decision" else images.decision[images.screen]

    def key_fields(self, run: ModelRun, policy: dict, stage: str = "decision") -> dict:
        """Everything that determines a point's result (docs/study.md, "What a point's key covers")."""
        data = self.data[run.name]
        indices = self._indices(run, stage)
        from emulator.evaluate import TIES

        fields = {"model": run.name, "dataset": _dataset_key(data.dataset), "checkpoint": data.checkpoint,
                  "ties": TIES,
                  "data": {"test": data.test, "preprocessing": "eval"}, "policy": policy,
                  "images": {"count": len(indices), "digest": _indices_digest(indices)},
                  "seed": self.spec.seed, "psum": self.version}
        if policy["kind"] == "int":
            fields["data"]["calibration"] = {"train": data.train, **CALIBRATION} if data.train != NO_CALIBRATION \
                else {"train": NO_CALIBRATION}
        if self.spec.fold_bn:  # absent when off: stores made before the option stay valid
            fields["fold_bn"] = True
        if data.architecture is not None:  # a network of one's own: its source file
            fields["architecture"] = data.architecture
        return fields

    def point(self, run: ModelRun, policy: dict, stage: str = "decision") -> dict:
        """The point of ``policy`` on the ``stage`` images of ``run`` (stored or computed)."""
        fields = self.key_fields(run, policy, stage)
        key = point_key(fields)
        if key in self.touched:  # asked before in this run (references: by every judgement)
            return self.touched[key][1]
        found = self.store.get(key)
        if found is not None:
            self.reused += 1
            self.touched[key] = (fields, found)
            return found
        tuned = policy.get("finetuned")
        checkpoint = self.checkpoints[tuned["digest"]] if tuned else str(run.checkpoint)
        task = {"model": run.ref, "dataset": run.dataset, "checkpoint": checkpoint, "policy": policy,
                "indices": self._indices(run, stage).tolist(), "seed": self.spec.seed,
                "data_dir": self.spec.data_dir, "download": self.spec.download, "batch_size": self.spec.batch_size,
                "threads": self.threads, "device": self.spec.device, "expect": fields["data"],
                "fold_bn": self.spec.fold_bn}
        start = time.monotonic()
        result = self.executor.submit(evaluate_task, task).result()
        self.store.put(key, "accuracy", fields, result)
        self.touched[key] = (fields, result)
        self.computed += 1
        self.log(f"  {run.name} {describe(policy)}: {100 * result['top1']:.2f}% on {result['total']} "
                 f"({stage}) [{time.monotonic() - start:.1f} s]")
        return result

    def hits(self, run: ModelRun, point: dict, stage: str) -> np.ndarray:
        """A point's hits on the ``stage`` images (a decision point restricted to the
        screening images where ``stage`` is ``"screen"``)."""
        hits = unpack_hits(point["hits"], point["total"])
        images = self.images[run.name]
        if stage == "screen" and point["total"] == len(images.decision):
            return hits[images.screen]
        return hits

    def judge(self, run: ModelRun, policy: dict, reference: dict, screen: bool = True) -> Judged:
        """``policy`` against the ``reference`` policy, paired on the same images: the
        screening images first (when the spec screens and ``screen``), where a clearly
        failing candidate stops, then the decision images."""
        tolerances = sorted(self.spec.tolerances)
        ref = self.point(run, reference)
        if screen and self.images[run.name].screen is not None:
            screen = self.point(run, policy, "screen")
            paired = pair(self.hits(run, ref, "screen"), self.hits(run, screen, "screen"))
            if paired.clearly_beyond(max(tolerances)):
                self.screened["rejected"] += 1
                self.screened["image_evaluations_saved"] += len(self.images[run.name].decision) - paired.n
                return Judged(policy, "screen", screen, paired, tolerances)
        point = self.point(run, policy)
        return Judged(policy, "decision", point, pair(self.hits(run, ref, "decision"),
                                                       self.hits(run, point, "decision")), tolerances)

    def compare(self, run: ModelRun, a: Judged, b: Judged) -> Paired:
        """Two judged candidates paired with each other (on the decision images if both
        reached them, else on the screening images)."""
        stage = "decision" if a.stage == b.stage == "decision" else "screen"
        return pair(self.hits(run, a.point, stage), self.hits(run, b.point, stage))


def describe(policy: dict) -> str:
    """A point's policy in a few words, for progress lines and tables."""
    if policy["kind"] == "fp32":
        return "fp32"
    text = policy["acc"]
    if policy.get("unit"):
        u = policy["unit"]
        text += f" on a W={u['width']} L={u['align_bits']} unit, {policy['inputs']} operands"
    if policy.get("chunk"):
        text += f" chunk {policy['chunk']} into {policy.get('chunk_acc') or 'fp32'}"
    if policy.get("order", "im2col") != "im2col":
        text += f" {policy['order']}"
    if policy["kind"] == "int":
        text += f" (int{policy['bits']}, calibration seed {policy['calibration_seed']})"
    if "sr_seed" in policy:
        text += f" (stochastic rounding seed {policy['sr_seed']})"
    if policy.get("finetuned"):
        text += f", fine-tuned {policy['finetuned']['epochs']} epochs"
    if policy.get("layers"):
        text += " with " + ", ".join(f"{n}={a}" for n, a in policy["layers"].items())
    return text
