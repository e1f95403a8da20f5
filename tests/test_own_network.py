"""A researcher's own network and data: a CNN defined in a file outside the project
(``FILE.py:NAME`` or ``package.module:NAME``) and an ImageFolder dataset of their own,
through ``psum models``, ``psum eval`` and ``psum study`` as a user types them."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from emulator import data
from emulator.models import build, entry_point, is_entry_point, label
from psum.cli import main

NETWORK = textwrap.dedent('''\
    """A user's own CNN, in a file of their own."""
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(6, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.features(x))


    def three_way():
        return TinyCNN(3)
    ''')

CLASSES = ("cat", "dog", "eel")


def write_images(root, split: str, per_class: int, size=(12, 12), seed=0, classes=CLASSES):
    """Random PNGs whose dominant channel is the class (so a trained net can tell them apart)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size[1], size[0], 3)).astype(np.uint8)
            img[..., c % 3] += rng.integers(40, 120, dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: tinynet.py, an ImageFolder dataset shapes/{train,test}, and the
    weights of TinyCNN trained on it (a plain state_dict, as torch.save leaves it)."""
    root = tmp_path_factory.mktemp("user")
    (root / "tinynet.py").write_text(NETWORK)
    write_images(root / "shapes", "train", 12, seed=1)
    write_images(root / "shapes", "test", 10, seed=2)
    dataset = data.folder_dataset(root / "shapes")
    model, _ = build(f"{root}/tinynet.py:TinyCNN", dataset)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    train = data.load(dataset, "train")
    for epoch in range(10):
        for x, y in train.batches(12, shuffle=True, seed=epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    torch.save(model.state_dict(), root / "tiny.pt")
    return root


def psum(*args, cwd):
    return subprocess.run([sys.executable, "-m", "psum", *args], capture_output=True, text=True, cwd=cwd)


# -- entry points ------------------------------------------------------------------------------


def test_entry_point_forms():
    for ref in ("net.py:Net", "dir/my net.py:make", "pkg.mod:Net", "mod:factory.inner", "/abs/x.py:A_1"):
        assert is_entry_point(ref), ref
    for ref in ("lenet5", "net.py", "net.py:", ":Net", "net.py:1x", "pkg/mod:Net", "a..b:Net", "x.py:a-b", None):
        assert not is_entry_point(ref), ref
    assert label("dir/net.py:Net") == "Net" and label("pkg.mod:nets.small") == "small" and label("lenet5") == "lenet5"


def test_a_network_of_ones_own_is_built_for_the_dataset(user):
    dataset = data.folder_dataset(user / "shapes")
    model, ds = build(f"{user}/tinynet.py:TinyCNN", dataset)  # takes num_classes: built for 3
    assert ds == dataset and model.head.out_features == 3
    model, _ = build(f"{user}/tinynet.py:three_way", dataset)  # no num_classes: called bare
    assert model.head.out_features == 3
    model, _ = build(f"{user}/tinynet.py:TinyCNN", "cifar10")  # a registered dataset: 10 classes
    assert model.head.out_features == 10
    assert entry_point(f"{user}/tinynet.py:TinyCNN") is entry_point(f"{user}/tinynet.py:TinyCNN")  # imported once


def test_package_module_entry_point(tmp_path, monkeypatch):
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "small.py").write_text(NETWORK)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, _ = build("mynets.small:TinyCNN", "cifar100")
    assert model.head.out_features == 100


@pytest.mark.parametrize("source, ref, message", [
    (None, "missing.py:Net", "missing.py does not exist"),
    (NETWORK, "net.py:Nope", "net.py has no Nope"),
    ("raise RuntimeError('broken at import')\n", "net.py:Net", "running .*net.py failed: RuntimeError: broken at import"),
    ("import sys\nsys.exit(3)\n", "net.py:Net", "running .*net.py failed: SystemExit: 3"),
    ("Net = 3\n", "net.py:Net", "Net is not callable"),
    ("def Net():\n    return 'a string'\n", "net.py:Net", "gave a str, not a torch.nn.Module"),
    ("def Net(num_classes):\n    raise ValueError('no')\n", "net.py:Net", "building the network failed: ValueError: no"),
    ("from torch import nn\ndef Net(num_classes):\n    return nn.Linear(3, num_classes)\n", "net.py:Net",
     "cannot run on one 3x32x32 image"),
    ("from torch import nn\ndef Net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 7))\n", "net.py:Net",
     r"gives outputs of shape \(1, 7\) for one image; the dataset has 10 classes"),
    (None, "no_such_package_xyz.mod:Net", "cannot import no_such_package_xyz.mod: ModuleNotFoundError"),
])
def test_bad_networks_of_ones_own_are_one_line_errors(tmp_path, source, ref, message):
    if source is not None:
        (tmp_path / "net.py").write_text(source)
    where = ref if ref.rpartition(":")[0].count(".") > 1 or not ref.split(":")[0].endswith(".py") \
        else str(tmp_path / ref)
    with pytest.raises(ValueError, match=message):
        build(where, "cifar10")
    proc = psum("eval", ref, "--checkpoint", "w.pt", "--dataset", "cifar10", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_network_of_ones_own_needs_its_dataset():
    with pytest.raises(ValueError, match="is a network of your own: give its dataset"):
        build("net.py:Net")


# -- folder datasets ---------------------------------------------------------------------------


def test_folder_dataset_ids_labels_and_preprocessing(tmp_path):
    write_images(tmp_path / "d", "train", 2, classes=("a", "b", "c"))
    write_images(tmp_path / "d", "val", 2, classes=("a", "c"), size=(20, 20))  # val/ serves as test; b missing
    ident = data.folder_dataset(tmp_path / "d")
    spec = data.dataset_spec(ident)
    assert ident.startswith(f"folder:{tmp_path / 'd'}?size=20&crop=1.0&mean=")  # size: the first test image's
    assert spec.classes == ("a", "b", "c") and spec.num_classes == 3 and spec.mean == data.FOLDER_MEAN
    assert data.folder_dataset(ident) == ident  # ids are idempotent
    test = data.load(ident, "test")
    x, y = next(test.batches(10))
    assert x.shape == (4, 3, 20, 20) and y.tolist() == [0, 0, 2, 2]  # c keeps label 2 though b has no test images
    from PIL import Image

    raw = np.array(Image.open(tmp_path / "d" / "val" / "a" / "0.png"))
    expect = (torch.from_numpy(raw).permute(2, 0, 1).float() / 255 - torch.tensor(spec.mean).view(3, 1, 1)) \
        / torch.tensor(spec.std).view(3, 1, 1)
    assert torch.allclose(x[0], expect)  # at its own size: no resampling, exactly normalized
    small = data.folder_dataset(tmp_path / "d", image_size=8, crop=0.5, mean=[0.5] * 3, std=(0.25, 0.25, 0.25))
    s = data.dataset_spec(small)
    assert (s.image_size, s.crop, s.mean, s.std) == (8, 0.5, (0.5,) * 3, (0.25,) * 3)
    assert next(data.load(small, "train").batches(2))[0].shape == (2, 3, 8, 8)
    assert data.load(small, "test").fingerprint() != test.fingerprint()  # preprocessing is in the fingerprint
    with pytest.raises(data.DataError, match="image_size 9 differs from the id's 8"):
        data.folder_dataset(small, image_size=9)
    (tmp_path / "d" / "classes.txt").write_text("c\nb\na\nz\n")  # an explicit class list orders the labels
    data.dataset_spec.cache_clear()
    assert next(data.load(ident, "test").batches(10))[1].tolist() == [2, 2, 0, 0]
    assert data.dataset_spec(ident).num_classes == 4


@pytest.mark.parametrize("setup, kwargs, message", [
    (lambda d: None, {}, "dataset folder .* does not exist"),
    (lambda d: write_images(d, "train", 1), {}, r"expected .*/test/<class>/<image> \(or val/\)"),
    (lambda d: write_images(d, "test", 1, size=(12, 10)), {}, "is 12x10, not square: give the image size"),
    (lambda d: write_images(d, "test", 1), {"image_size": 0}, "image size must be an integer in 1..4096"),
    (lambda d: write_images(d, "test", 1), {"crop": 1.5}, r"crop must be a fraction in \(0, 1\]"),
    (lambda d: write_images(d, "test", 1), {"mean": [0.5, 0.5]}, "mean must be three numbers"),
    (lambda d: write_images(d, "test", 1), {"std": [0.5, 0, 0.5]}, "std must be positive"),
])
def test_bad_folder_datasets(tmp_path, setup, kwargs, message):
    setup(tmp_path / "d")
    with pytest.raises(data.DataError, match=message):
        data.folder_dataset(tmp_path / "d", **kwargs)


def test_a_folder_without_a_training_split_evaluates_but_cannot_calibrate(tmp_path):
    write_images(tmp_path / "d", "test", 1)
    ident = data.folder_dataset(tmp_path / "d")
    assert len(data.load(ident, "test")) == 3
    with pytest.raises(data.DataError, match="no train split in .*integer calibration and training read it"):
        data.load(ident, "train")


# -- the command line, as a user types it --------------------------------------------------------


def test_first_hour_models_and_eval_from_the_users_folder(user):
    out = psum("models", "tinynet.py:TinyCNN", "--dataset", "shapes", cwd=user)
    assert out.returncode == 0, out.stderr
    assert "TinyCNN on folder shapes (12x12, 3 classes): 3 MAC layers" in out.stdout
    assert "| features.0 | Conv2d 3x3 | 27 | 6 x 12 x 12 |" in out.stdout and "| head | Linear | 8 | 3 |" in out.stdout
    ev = psum("eval", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt", "--dataset", "shapes", "--acc", "e4m3",
              "--int-acc", "int16", "--layer", "head=float", "--json", "--quiet", cwd=user)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    rows = {r["policy"]: r for r in result["results"]}
    assert result["dataset"].startswith(f"folder:{user / 'shapes'}?size=12")
    assert rows["fp32"]["total"] == 30 and rows["fp32"]["top1"] > 0.6  # it learned the classes
    assert set(rows) == {"fp32", "bf16 inputs, fp32 acc", "acc=e4m3 inputs=bf16 + head=float",
                         "int8xint8 acc=int16 + head=float"}


@pytest.mark.parametrize("args, message", [
    (["eval", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt"], "is a network of your own: give its dataset"),
    (["eval", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt", "--dataset", "shapez"],
     "--dataset shapez: no such dataset; choose from cifar10, cifar100, imagenet, or give the path"),
    (["eval", "lenet5", "--checkpoint", "tiny.pt", "--image-size", "32"],
     "--image-size sets a folder dataset's preprocessing: give --dataset PATH"),
    (["eval", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt", "--dataset", "cifar10", "--mean", "0", "0", "0"],
     "--mean sets a folder dataset's preprocessing"),
    (["eval", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt", "--dataset", "shapes", "--layer", "fc=e5m2",
      "--acc", "e4m3"], "--layer fc matches no layer of TinyCNN; its MAC layers are features.0, features.3, head"),
    (["eval", "tinynet.py:three_way", "--checkpoint", "tiny.pt", "--dataset", "cifar10"],
     "gives outputs of shape (1, 3) for one image; the dataset has 10 classes"),
    (["models", "--image-size", "8"], "--image-size applies to one network"),
    (["study", "--image-size", "8"], "--image-size applies to --model: give --model too"),
    (["synth", "--acc", "e4m3", "--dataset", "shapes"], "--dataset chooses real operand streams"),
])
def test_first_hour_mistakes_are_one_line(user, args, message):
    proc = psum(*args, cwd=user)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_first_hour_study_of_ones_own_network(user, tmp_path):
    args = ["study", "--model", "tinynet.py:TinyCNN", "--checkpoint", "tiny.pt", "--dataset", "shapes",
            "--out", str(tmp_path / "st"), "--exp-bits", "4", "--max-width", "9", "--int-width-range", "10", "14",
            "--calibration-seeds", "0", "--chunk-sizes", "--orders", "im2col", "--no-synth", "--no-prediction",
            "--no-per-layer"]
    proc = psum(*args, cwd=user)
    assert proc.returncode == 0, proc.stderr
    assert "0 reused" in proc.stdout
    report = (tmp_path / "st" / "report.md").read_text()
    assert "## TinyCNN" in report and "network of your own `tinynet.py:TinyCNN`" in report
    assert f"dataset folder `{user / 'shapes'}` (3 classes; images resized to 12/1" in report
    assert (tmp_path / "st" / "TinyCNN_drop_vs_bits.png").is_file()
    results = json.loads((tmp_path / "st" / "results.json").read_text())
    assert results["data"]["TinyCNN"]["architecture"] and results["data"]["TinyCNN"]["test_images"] == 30
    assert all(p["architecture"] == results["data"]["TinyCNN"]["architecture"] for p in results["points"])
    again = psum(*args, cwd=user)
    assert again.returncode == 0 and " 0 points computed" in again.stdout, again.stdout
    # editing the network's source changes every point's key: nothing stale is reused
    edited = user / "edited"
    edited.mkdir()
    (edited / "tinynet.py").write_text(NETWORK + "\n# a comment changes the digest\n")
    (edited / "tiny.pt").write_bytes((user / "tiny.pt").read_bytes())
    (edited / "shapes").symlink_to(user / "shapes")
    third = psum(*args, cwd=edited)
    assert third.returncode == 0 and " 0 reused" in third.stdout, third.stdout + third.stderr


def test_study_spec_with_a_network_of_ones_own(user, tmp_path):
    from reports.spec import SpecError, StudySpec

    spec_path = tmp_path / "own.toml"
    spec_path.write_text(textwrap.dedent(f'''\
        [[models]]
        name = "tiny"
        factory = "{user}/tinynet.py:TinyCNN"
        checkpoint = "{user}/tiny.pt"
        dataset = "{user}/shapes"
        image_size = 10
        mean = [0.5, 0.5, 0.5]
        std = [0.25, 0.25, 0.25]
        '''))
    spec = StudySpec.from_toml(spec_path)
    run = spec.models[0]
    assert run.ref.endswith("tinynet.py:TinyCNN") and run.dataset.startswith(f"folder:{user / 'shapes'}?size=10&")
    assert data.dataset_spec(run.dataset).mean == (0.5,) * 3
    StudySpec.from_toml(spec_path)  # checked twice, the same id
    for text, message in [
        ('name = "lenet5"\nfactory = "x.py:Net"\ncheckpoint = "c.pt"\ndataset = "cifar10"',
         "not a registered model's name"),
        ('name = "a/b"\nfactory = "x.py:Net"\ncheckpoint = "c.pt"\ndataset = "cifar10"', "letters, digits"),
        ('name = "tiny"\nfactory = "x.py"\ncheckpoint = "c.pt"\ndataset = "cifar10"', "must be FILE.py:NAME"),
        ('name = "tiny"\nfactory = "x.py:Net"\ncheckpoint = "c.pt"', "is a network of your own: give its dataset"),
        ('name = "lenet5"\ncheckpoint = "c.pt"\nimage_size = 32', "image_size set a folder dataset's preprocessing"),
        (f'name = "lenet5"\ncheckpoint = "c.pt"\ndataset = "{tmp_path}/none"', "dataset folder .* does not exist"),
    ]:
        spec_path.write_text("[[models]]\n" + text + "\n")
        with pytest.raises(SpecError, match=message):
            StudySpec.from_toml(spec_path)


def test_registered_networks_run_on_folder_datasets(user):
    model, dataset = build("lenet5", data.folder_dataset(user / "shapes", image_size=32))
    assert model.classifier[-1].out_features == 3 and data.dataset_spec(dataset).image_size == 32
