"""Fine-tuning through the emulated accumulation (docs/semantics.md §12): the layers'
straight-through gradient, and psum finetune end to end on synthetic data."""

import json

import pytest
import torch
from torch import nn

from conftest import tiny_lenet5
from emulator import AccumConfig, IntAccumConfig, Policy, calibrate, checkpoint, convert, data
from emulator.config import DotUnit
from emulator.finetune import finetune
from emulator.train import TrainConfig
from psum.cli import main

CONFIGS = [AccumConfig(acc="e4m3"), AccumConfig(acc="e5m2:sat", chunk=4), IntAccumConfig(acc="int12"),
           AccumConfig(acc="fp32", inputs="e4m3", unit=DotUnit(4, 5))]
LAYERS = [(nn.Conv2d(3, 5, 3, padding=1, stride=2), (2, 3, 8, 8)), (nn.Conv2d(4, 6, 3, groups=2), (2, 4, 6, 6)),
          (nn.Linear(20, 4), (6, 20))]


def passes(layer, x, y):
    """Where the straight-through gradient passes: everywhere for float accumulators; for
    integer ones where the emulated output is the exact integer dot product dequantized
    (not wrapped), computed here from exact int64 sums."""
    if not isinstance(layer.config, IntAccumConfig):
        return 1.0
    from emulator.layers import symmetric_quantize

    cfg, w = layer.config, layer.weight.detach()
    w_scale = w.reshape(len(w), -1).abs().amax(dim=1) / 127
    w_int = symmetric_quantize(w.reshape(len(w), -1), w_scale[:, None], 8).view_as(w).long()
    x_int = symmetric_quantize(x, layer.act_scale, 8).long()
    if isinstance(layer, nn.Linear) or w.dim() == 2:
        exact, scale = x_int @ w_int.t(), layer.act_scale * w_scale
    else:
        exact = torch.nn.functional.conv2d(x_int.double(), w_int.double(), None, layer.stride, layer.padding,
                                           layer.dilation, layer.groups).long()
        scale = (layer.act_scale * w_scale)[:, None, None]
    exact_out = exact.to(torch.float32) * scale + (layer.bias.detach()[:, None, None] if w.dim() > 2
                                                    else layer.bias.detach())
    assert not bool(torch.equal(exact_out, y)) or cfg.acc.bits > 30  # int12 overflows somewhere here
    return (exact_out == y).float()


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("layer, shape", LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_forward_is_the_emulated_value_and_backward_the_float_gradient(cfg, layer, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    emulated = convert(nn.Sequential(layer), cfg)
    if isinstance(cfg, IntAccumConfig):
        calibrate(emulated, [x])
    with torch.no_grad():
        want = emulated(x)
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = emulated(xe)
    assert y.requires_grad and torch.equal(y, want)  # bit for bit the inference value
    grad = torch.randn_like(y)
    y.backward(grad)
    layer.zero_grad()
    layer(xf).backward(grad * passes(emulated[0], x, want))
    assert torch.equal(xe.grad, xf.grad)
    assert torch.equal(emulated[0].weight.grad, layer.weight.grad)
    assert torch.equal(emulated[0].bias.grad, layer.bias.grad)


@pytest.mark.parametrize("layer, shape", LAYERS[:1] + LAYERS[2:], ids=["Conv2d", "Linear"])
def test_an_in_place_activation_after_the_layer_trains(layer, shape):
    """nn.ReLU(inplace=True) after an emulated layer (AlexNet's): the same gradients as
    after the float layer, masked where the ReLU cuts."""
    torch.manual_seed(3)
    x = torch.randn(shape)
    emulated = convert(nn.Sequential(layer, nn.ReLU(inplace=True)), AccumConfig(acc="e5m4"))
    y = emulated(x.clone().requires_grad_())
    y.sum().backward()
    layer.zero_grad()
    (layer(x) * (y > 0)).sum().backward()  # the emulated ReLU's mask, the float layer's gradient
    assert torch.equal(emulated[0].weight.grad, layer.weight.grad)


def test_a_wide_accumulator_trains_as_the_float_layer():
    """With fp32 operands and accumulator the emulated layer's value is the float one's up
    to fp32 rounding order, and a step of SGD moves the weights the same way."""
    torch.manual_seed(1)
    layer, x = nn.Conv2d(3, 4, 3), torch.randn(4, 3, 6, 6)
    emulated = convert(nn.Sequential(layer), AccumConfig(acc="fp32", inputs="fp32"))
    y, yf = emulated(x), layer(x)
    assert torch.allclose(y, yf, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    yf.square().sum().backward()
    assert torch.allclose(emulated[0].weight.grad, layer.weight.grad, rtol=1e-4, atol=1e-4)


def test_overflow_penalty_measures_and_shrinks_what_lies_beyond_the_range():
    """overflow(x): zero when every dot product fits the accumulator, the mean excess
    over its range otherwise; gradient steps on it alone bring it down."""
    torch.manual_seed(2)
    x = torch.rand(8, 3, 8, 8)
    layer = convert(nn.Sequential(nn.Conv2d(3, 4, 3)), IntAccumConfig(acc="int20"))[0]
    calibrate(nn.Sequential(layer), [x])
    assert layer.overflow(x).item() == 0  # 27 terms of at most 127 * 127 fit int20
    layer.config = IntAccumConfig(acc="int10")
    first = layer.overflow(x)
    units = torch.nn.functional.conv2d(x / layer.act_scale, layer.weight / (layer.weight.abs().amax(dim=(1, 2, 3))
                                                                            / 127)[:, None, None, None])
    assert first.item() == pytest.approx(torch.relu(units.abs() / 511 - 1).mean().item(), rel=1e-5)
    assert first.item() > 0
    opt = torch.optim.SGD(layer.parameters(), lr=1e-5)
    for _ in range(20):
        opt.zero_grad()
        layer.overflow(x).backward()
        opt.step()
    assert layer.overflow(x).item() < first.item()
    assert convert(nn.Sequential(nn.Linear(4, 2)), AccumConfig(acc="e4m3"))[0].overflow(torch.ones(1, 4)) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_lenet5(tmp_path_factory.mktemp("finetune"), 96, 3)


def _source(root, split="train"):
    return data.load("cifar10", split, root / "data")


def test_finetune_resumes_to_the_same_weights(tiny, tmp_path):
    root, ckpt = tiny
    cfg = TrainConfig(model="lenet5", epochs=2, batch_size=32, lr=0.01, checkpoint_every=1)
    policy = Policy(AccumConfig(acc="e4m2"))
    whole = finetune(cfg, ckpt, policy, _source(root), tmp_path / "whole.pt", progress=False, log=lambda *_: None)

    def interrupt(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, ckpt, policy, _source(root), tmp_path / "cut.pt", progress=False, log=interrupt)
    assert (tmp_path / "cut.pt.partial").exists()
    resumed = finetune(cfg, ckpt, policy, _source(root), tmp_path / "cut.pt", progress=False, log=lambda *_: None)
    a, b = checkpoint.read(tmp_path / "whole.pt"), checkpoint.read(tmp_path / "cut.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert whole["finetuned_for"] == resumed["finetuned_for"] == "acc=e4m2 inputs=bf16"
    changed = checkpoint.read(ckpt)["state_dict"]
    assert any(not torch.equal(changed[k].float(), a["state_dict"][k].float()) for k in changed)


@pytest.mark.parametrize("acc", [["--acc", "e4m3", "--chunk", "8"], ["--int-acc", "int14"],
                                 ["--int-acc", "int12", "--overflow-penalty", "10"]])
def test_psum_finetune_then_eval_reads_the_same_accuracy(tiny, tmp_path, capsys, acc):
    """The checkpoint loads in psum eval, and eval's accuracy under the accumulator it
    was tuned for (integer: eval's default calibration) is the one finetune recorded."""
    root, ckpt = tiny
    out = tmp_path / "ft.pt"
    assert main(["finetune", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), *acc,
                 "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    assert "fine-tuned 1 epochs for" in capsys.readouterr().out
    meta = checkpoint.read(out)["meta"]
    assert meta["init"] == str(ckpt) and meta["finetuned_for"].startswith("acc=")
    assert meta["train_config"].get("overflow_penalty") == (10.0 if "--overflow-penalty" in acc else None)
    assert main(["eval", "lenet5", "--checkpoint", str(out), "--data-dir", str(root / "data"), *acc[:2],
                 *(acc[2:] if "--overflow-penalty" not in acc else []), "--json",
                 "--quiet", "--no-baselines", "--batch-size", "32"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["top1"] == meta["accuracy"] and row["total"] == meta["test_images"]


def test_divergence_is_one_line(tiny, tmp_path, capsys):
    root, ckpt = tiny
    code = main(["finetune", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), "--acc",
                 "e4m3", "--lr", "1e30", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "x.pt"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training diverged at step" in err[0], err


@pytest.mark.parametrize("extra, fragment", [
    ([], "give one accumulator to fine-tune for"),
    (["--acc", "e4m3", "--int-acc", "int16"], "give one accumulator"),
    (["--acc", "int16"], "--acc takes floating-point formats"),
    (["--int-acc", "int16", "--inputs", "e4m3"], "--inputs does not apply to an integer accumulator"),
    (["--acc", "e4m3", "--act-bits", "6"], "--act-bits does not apply to a float accumulator"),
    (["--acc", "e4m3", "--overflow-penalty", "1"], "--overflow-penalty does not apply to a float accumulator"),
    (["--int-acc", "int16", "--overflow-penalty", "-1"], "--overflow-penalty"),
    (["--acc", "e4m3", "--sticky"], "--sticky applies to dot-product units"),
    (["--acc", "e4m3", "--chunk-acc", "fp32"], "--chunk-acc applies to chunked accumulation"),
    (["--acc", "e4q3"], "invalid format spec"),
])
def test_finetune_bad_input_is_one_line(tiny, tmp_path, capsys, extra, fragment):
    root, ckpt = tiny
    try:
        code = main(["finetune", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"), *extra,
                     "--out", str(tmp_path / "x.pt")])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_finetune_refuses_a_checkpoint_of_another_network(tiny, tmp_path, capsys):
    root, ckpt = tiny
    code = main(["finetune", "alexnet-cifar", "--checkpoint", str(ckpt), "--data-dir", str(root / "data"),
                 "--acc", "e4m3", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds a lenet5 model, not alexnet-cifar" in err[0], err
