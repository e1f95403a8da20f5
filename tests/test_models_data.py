"""Models, data sources, checkpoints, training and evaluation, on synthetic data."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from emulator import AccumConfig, IntAccumConfig, Policy, calibrate, checkpoint, convert, data
from emulator.evaluate import evaluate, wilson_interval
from emulator.models import MODELS, ResNet18, build, count_macs
from emulator.train import TrainConfig, train


@pytest.mark.parametrize("name, dataset", [("lenet5", "cifar10"), ("alexnet-cifar", "cifar10"),
                                           ("alexnet-cifar", "cifar100"), ("resnet18-cifar", "cifar100"),
                                           ("resnet18-imagenet", "imagenet")])
def test_every_study_network_trains_a_step_and_evaluates_emulated(name, dataset):
    torch.manual_seed(0)
    model, _ = build(name, dataset)
    source = data.synthetic(dataset, 4, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = next(source.batches(4, augment=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    small = data.synthetic(dataset, 2, seed=2)
    emulated = convert(model, "e5m10")
    result = evaluate(emulated, small, batch_size=2)
    assert result.total == 2 and 0 <= result.top1 <= 1


def test_mac_counts_and_torchvision_names():
    # conv1 6*28*28*75 + conv2 16*10*10*150 + fc 400*120 + 120*84 + 84*10
    assert count_macs(build("lenet5")[0], 32) == 651_720
    assert count_macs(ResNet18(1000), 224) == 1_814_073_344  # torchvision's ResNet-18: 1.81 GMAC
    names = set(ResNet18(1000).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.num_batches_tracked", "fc.bias"} <= names
    assert len(names) == 122  # as torchvision.models.resnet18().state_dict()
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build("vgg")
    with pytest.raises(ValueError, match="model lenet5 is for cifar10, not 'imagenet'"):
        build("lenet5", "imagenet")
    assert set(MODELS) == {"lenet5", "alexnet-cifar", "resnet18-cifar", "resnet18-imagenet"}


def write_npz(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    src = data.synthetic("cifar10", n, seed=seed)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=src.images.numpy(), labels=src.labels.numpy().astype(np.uint8))
    return src


def test_npz_layout(tmp_path):
    src = write_npz(tmp_path / "cifar10", 20, seed=3)
    loaded = data.load("cifar10", "test", tmp_path)
    assert len(loaded) == 20 and torch.equal(loaded.images, src.images)
    x, y = next(loaded.batches(8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def write_torchvision_cifar10(root, n_per_file=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_file).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    return folder


def test_torchvision_layout(tmp_path):
    folder = write_torchvision_cifar10(tmp_path)
    train_src = data.load("cifar10", "train", tmp_path)
    assert len(train_src) == 20
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    first = raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)  # CHW -> HWC
    assert np.array_equal(train_src.images[0].numpy(), first)


def test_data_errors_say_what_was_expected_where(tmp_path):
    with pytest.raises(data.DataError, match=r"no cifar10 data under .*cifar-10-batches-py"):
        data.load("cifar10", "test", tmp_path / "empty")
    folder = write_torchvision_cifar10(tmp_path / "bad")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(data.DataError, match="malformed CIFAR batch file"):
        data.load("cifar10", "test", tmp_path / "bad")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(data.DataError, match="unexpected object builtins.print"):
        data.load("cifar10", "test", tmp_path / "bad")
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "test.npz", pictures=np.zeros(3))
    with pytest.raises(data.DataError, match="expected an .npz archive with arrays 'images' and 'labels'"):
        data.load("cifar10", "test", tmp_path / "npz")
    with pytest.raises(data.DataError, match="ImageFolder layout"):
        data.load("imagenet", "test", tmp_path)


def test_cifar_archive_extraction_refuses_other_paths(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in [("cifar-10-batches-py/test_batch", b"x"), ("../escape", b"y"),
                              ("cifar-10-batches-py/../../escape2", b"z")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data.extract_cifar_archive(buf.getvalue(), tmp_path / "root", "cifar-10-batches-py")
    assert (tmp_path / "root" / "cifar-10-batches-py" / "test_batch").read_bytes() == b"x"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape2").exists()


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 60, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    with pytest.raises(data.DataError, match="has 2 class folders, not 1000: a label is its wnid's position"):
        data.load("imagenet", "test", tmp_path)
    # the labels are positions in the full list of 1,000 wnids, not among the folders present
    wnids = [f"n{i:08d}" for i in range(998)] + ["n02", "n01"]
    (tmp_path / "imagenet" / "synset_words.txt").write_text("".join(f"{w} some words, more\n" for w in wnids))
    val = data.load("imagenet", "test", tmp_path)
    assert len(val) == 4 and len(val.classes) == 1000
    x, y = next(val.batches(4))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [999, 999, 998, 998]
    x2, _ = next(data.load("imagenet", "train", tmp_path).batches(4, shuffle=True, augment=True, seed=1))
    assert x2.shape == (4, 3, 224, 224)


def test_augmentation_is_deterministic_given_the_seed():
    src = data.synthetic("cifar10", 16, seed=4)
    a = [x for x, _ in src.batches(8, shuffle=True, augment=True, seed=9)]
    b = [x for x, _ in src.batches(8, shuffle=True, augment=True, seed=9)]
    c = [x for x, _ in src.batches(8, shuffle=True, augment=True, seed=10)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_checkpoints_round_trip_and_fail_clearly(tmp_path):
    model = build("lenet5")[0]
    path = tmp_path / "m.pt"
    checkpoint.save(path, model.state_dict(), {"model": "lenet5", "seed": 0}, weights_dtype=torch.bfloat16)
    fresh = build("lenet5")[0]
    meta = checkpoint.load_model(path, fresh)
    assert meta["model"] == "lenet5" and meta["weights_dtype"] == "torch.bfloat16"
    w = model.features[0].weight.detach()
    assert torch.equal(fresh.features[0].weight.detach(), w.to(torch.bfloat16).float())
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state_dict (torchvision style)
    checkpoint.load_model(tmp_path / "plain.pt", build("lenet5")[0])
    (tmp_path / "corrupt.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="is not a readable checkpoint"):
        checkpoint.load_model(tmp_path / "corrupt.pt", fresh)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_model(tmp_path / "missing.pt", fresh)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit the model"):
        checkpoint.load_model(path, build("alexnet-cifar")[0])


class Interrupting:
    """A source whose training batches stop (as Ctrl-C would) after ``after`` batches."""

    def __init__(self, source, after):
        self.source, self.after = source, after

    def __len__(self):
        return len(self.source)

    def batches(self, *args, **kwargs):
        for i, batch in enumerate(self.source.batches(*args, **kwargs)):
            if i == self.after:
                raise KeyboardInterrupt
            yield batch


def test_training_resumes_to_the_same_weights(tmp_path):
    source = data.synthetic("cifar10", 48, seed=5)
    cfg = TrainConfig(model="lenet5", epochs=2, batch_size=8, lr=0.01, checkpoint_every=1)
    train(cfg, source, tmp_path / "straight.pt", progress=False, log=lambda *_: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Interrupting(source, after=4), tmp_path / "resumed.pt", progress=False, log=lambda *_: None)
    assert (tmp_path / "resumed.pt.partial").exists()
    train(cfg, source, tmp_path / "resumed.pt", progress=False, log=lambda *_: None)
    assert not (tmp_path / "resumed.pt.partial").exists()
    a = checkpoint.read(tmp_path / "straight.pt")["state_dict"]
    b = checkpoint.read(tmp_path / "resumed.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = TrainConfig(model="lenet5", epochs=3, batch_size=8, lr=0.01, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Interrupting(source, after=1), tmp_path / "x.pt", progress=False, log=lambda *_: None)
    with pytest.raises(checkpoint.CheckpointError, match="different training configuration"):
        train(other, source, tmp_path / "x.pt", progress=False, log=lambda *_: None)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.40383, abs=1e-5) and hi == pytest.approx(0.59617, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_evaluate_counts_top1_top5_and_stops_early():
    class Fixed(nn.Module):  # always ranks class 3 first, then 0, 1, 2, 4
        def forward(self, x):
            scores = torch.tensor([5.0, 4, 3, 9, 2, 1, 0, -1, -2, -3])
            return scores.expand(len(x), 10)

    src = data.synthetic("cifar10", 100, seed=6)
    result = evaluate(Fixed(), src, batch_size=10)
    labels = src.labels
    assert result.correct == int((labels == 3).sum())
    assert result.correct5 == int(((labels == 3) | (labels <= 2) | (labels == 4)).sum())
    stopped = evaluate(Fixed(), src, batch_size=10, stop=lambda correct, seen, total: seen >= 30)
    assert stopped.total == 30
    assert torch.equal(result.hits, labels == 3)  # per image, in evaluation order
    chosen = [97, 3, 50, 3]
    picked = evaluate(Fixed(), src, batch_size=3, indices=chosen)
    assert picked.total == 4 and torch.equal(picked.hits, labels[chosen] == 3)
    with pytest.raises(data.DataError, match="positions in 0..99"):
        evaluate(Fixed(), src, indices=[100])


def test_int8_post_training_quantization_baseline():
    torch.manual_seed(7)
    model = build("lenet5")[0].eval()
    src = data.synthetic("cifar10", 64, seed=8)
    calib = [x for x, _ in src.batches(32, limit=64)]
    x, _ = next(src.batches(16))
    with torch.no_grad():
        ref = model(x)
        int32 = calibrate(convert(model, IntAccumConfig(acc="int32")), calib)(x)
        int4 = calibrate(convert(model, IntAccumConfig(acc="int32", weight_bits=4, act_bits=4)), calib)(x)
    err8, err4 = (int32 - ref).abs().mean(), (int4 - ref).abs().mean()
    assert err8 < 0.1 * ref.abs().mean() and err4 > err8
    mixed = convert(model, Policy(AccumConfig(acc="e4m7"), {"classifier.*": IntAccumConfig(acc="int24")}))
    calibrate(mixed, calib)
    assert mixed(x).shape == (16, 10)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_plain_lines_off_a_terminal_and_redrawn_on_one(monkeypatch):
    from emulator import train as train_module

    clock = iter(range(0, 1000, 10))  # every update 10 s later than the last
    monkeypatch.setattr(train_module.time, "monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    bar = train_module._Progress(100, "eval lenet5", True, every=30.0, stream=log)
    for done in range(10, 101, 10):
        bar.update(done, f"top-1 {done}%")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert lines[0].startswith("eval lenet5 10/100 [") and lines[-1].startswith("eval lenet5 100/100 [")
    assert len(lines) == 4  # the first, one per 30 s, the last
    term = _Terminal()
    bar = train_module._Progress(3, "train", True, stream=term)
    for done in (1, 2, 3):
        bar.update(done)
    assert term.getvalue().count("\r") == 3 and term.getvalue().endswith("\n")
    quiet = io.StringIO()
    train_module._Progress(3, "x", False, stream=quiet).update(3)
    assert quiet.getvalue() == ""


def test_eval_progress_in_a_log_file_is_one_line_per_report(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    src = data.synthetic("cifar10", 64, seed=1)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=src.images.numpy(), labels=src.labels.numpy())
    model, _ = build("lenet5")
    ckpt = tmp_path / "lenet5.pt"
    checkpoint.save(ckpt, model.state_dict(), {"model": "lenet5"})
    proc = subprocess.run([sys.executable, "-m", "psum", "eval", "lenet5", "--checkpoint", str(ckpt),
                           "--data-dir", str(tmp_path / "data"), "--acc", "e4m7", "--batch-size", "16"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    reports = [line for line in proc.stderr.splitlines() if "64/64" in line]
    assert reports, proc.stderr


def test_equal_logits_rank_by_lower_class_index():
    from emulator.evaluate import ranked

    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    assert ranked(logits)[:, :5].tolist() == [[1, 2, 4, 5, 0], [0, 1, 2, 3, 4]]
    scores = torch.zeros(64, 1000)
    scores[:, 500:] = 1.0  # 500 tied maxima: the first is argmax's
    assert (ranked(scores)[:, 0] == 500).all()
