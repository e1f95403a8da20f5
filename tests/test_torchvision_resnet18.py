"""A torchvision ``resnet18`` state_dict runs as psum's ``resnet18-imagenet``, unchanged.

The oracle is torchvision's own ResNet-18: called directly where torchvision imports, and
otherwise its recorded layout and logits (``data/torchvision_resnet18.json``, written by
``data/make_torchvision_resnet18.py`` from torchvision 0.28.0). A user with the published
weights (``resnet18-f37072fd.pth``) passes them to ``--checkpoint`` and gets the
ResNet18-ImageNet row.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import image_folder
from emulator import checkpoint, data
from emulator.models import build

DATA = Path(__file__).with_name("data")


def _maker():
    spec = importlib.util.spec_from_file_location("make_torchvision_resnet18", DATA / "make_torchvision_resnet18.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


def _live_torchvision():
    try:
        import torchvision
        return torchvision.models.resnet18().eval()
    except Exception:  # absent, or a CUDA build beside a CPU torch: use the recording
        return None


@pytest.fixture(scope="module")
def reference():
    """(layout, reference logits, where they came from)."""
    net = _live_torchvision()
    if net is not None:
        shapes = MAKER.layout(net.state_dict())
        net.load_state_dict(MAKER.reference_weights(shapes))
        with torch.no_grad():
            return shapes, net(MAKER.reference_inputs()), "torchvision"
    recorded = json.loads((DATA / "torchvision_resnet18.json").read_text())
    assert recorded["seed"] == MAKER.SEED
    shapes = {k: (tuple(s), getattr(torch, d)) for k, s, d in recorded["state_dict"]}
    return shapes, torch.tensor(recorded["logits"]), recorded["made_by"]


@pytest.fixture(scope="module")
def state_dict_file(reference, tmp_path_factory):
    """The reference weights as torchvision writes them: a plain ``torch.save`` of the state_dict."""
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(MAKER.reference_weights(reference[0]), path)
    return path


def test_the_layout_is_torchvisions_key_for_key(reference):
    shapes, _, _ = reference
    ours = MAKER.layout(build("resnet18-imagenet")[0].state_dict())
    assert list(ours) == list(shapes)
    assert ours == shapes


def test_the_weights_give_torchvisions_logits(reference, state_dict_file):
    _, logits, source = reference
    net = build("resnet18-imagenet")[0]
    checkpoint.load_model(state_dict_file, net)
    with torch.no_grad():
        ours = net.eval()(MAKER.reference_inputs())
    scale = logits.abs().max()
    # float32 rounding from a different summation order stays far below 2e-6 of the range;
    # a batch-norm eps of 2e-5 instead of 1e-5 moves the logits by 7e-5 of it
    assert torch.allclose(ours, logits, rtol=0, atol=2e-6 * scale), f"vs {source}"
    assert torch.equal(ours.argmax(1), logits.argmax(1))


def test_psum_eval_takes_the_state_dict(tmp_path, state_dict_file):
    """Each image sits in the folder of the class these weights predict for it, so the CLI
    scores 2 of 2 only if it ran these weights."""
    root = tmp_path / "data" / "imagenet"
    wnids = [f"n{i:08d}" for i in range(1000)]
    (root / "synset_words.txt").parent.mkdir(parents=True)
    (root / "synset_words.txt").write_text("".join(f"{w} class\n" for w in wnids))
    image_folder(root, ["val"], classes=1, per_class=2, size=64)
    (root / "val" / "c0").rename(root / "val" / wnids[0])
    net = build("resnet18-imagenet")[0]
    checkpoint.load_model(state_dict_file, net)
    x, _ = next(data.load("imagenet", "test", tmp_path / "data").batches(2))
    with torch.no_grad():
        predicted = net.eval()(x).argmax(1).tolist()
    for name, label in zip(["0.png", "1.png"], predicted):  # the loader's order: sorted file names
        (root / "val" / wnids[label]).mkdir(exist_ok=True)
        (root / "val" / wnids[0] / name).rename(root / "val" / wnids[label] / name)
    proc = subprocess.run([sys.executable, "-m", "psum", "eval", "resnet18-imagenet", "--checkpoint",
                           str(state_dict_file), "--dataset", "imagenet", "--data-dir", str(tmp_path / "data"),
                           "--json", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fp32 = json.loads(proc.stdout)["results"][0]
    assert (fp32["policy"], fp32["correct"], fp32["total"]) == ("fp32", 2, 2), predicted
