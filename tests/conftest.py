import os

from hypothesis import HealthCheck, settings

# Deterministic by default (CI and a newcomer see the same examples); PSUM_HYPOTHESIS=dev
# explores new random examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("PSUM_HYPOTHESIS", "ci"))

# The Triton kernels run through Triton's interpreter on CPU tensors where there is no
# GPU (tests/test_triton.py); this must be set before emulator.triton_kernels is imported.
try:
    import torch

    _gpu = torch.cuda.is_available()
except ImportError:
    _gpu = False
if not _gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tiny_lenet5(root, images: int, seed: int):
    """Synthetic CIFAR-shaped data (npz layout, the same images for both splits) under
    ``root/data`` and a LeNet5 trained on it for one epoch: ``(root, checkpoint)``."""
    import numpy as np

    from emulator import data
    from emulator.train import TrainConfig, train

    folder = root / "data" / "cifar10"
    folder.mkdir(parents=True)
    src = data.synthetic("cifar10", images, seed=seed)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=src.images.numpy(), labels=src.labels.numpy())
    ckpt = root / "lenet5.pt"
    train(TrainConfig(model="lenet5", epochs=1, batch_size=32), src, ckpt, progress=False, log=lambda *_: None)
    return root, ckpt


def image_folder(root, splits, classes: int, per_class: int, size: int, seed: int = 0):
    """Random RGB PNGs in the ImageFolder layout, ``root/<split>/c<class>/<i>.png``, for
    each split named; returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root
