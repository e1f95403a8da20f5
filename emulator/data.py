"""Datasets: CIFAR-10/100 and ImageNet, from a data directory.

Where the data comes from (the first that exists under the data directory):

- CIFAR: the torchvision layout (``cifar-10-batches-py/`` or ``cifar-100-python/``, as
  ``torchvision.datasets.CIFAR10(root=data_dir, download=True)`` leaves it; psum
  downloads and verifies the same archive itself when asked to and online), or the
  ``.npz`` layout (``train.npz``/``test.npz`` with ``images`` uint8 (N, 32, 32, 3) and
  ``labels``, directly in the data directory or in ``<data_dir>/cifar10``).
- ImageNet: an ImageFolder layout, ``<data_dir>/imagenet/{train,val}/<class>/<image>``
  (or ``<data_dir>/{train,val}/...``). A class's label is its wnid's position among all
  1,000 wnids in sorted order, read from ``synset_words.txt``, ``LOC_synset_mapping.txt``
  or ``wnids.txt`` beside the split folders (never from the folders present, which may
  be fewer); without such a list, all 1,000 class folders must be there.
- A dataset of your own (:func:`folder_dataset`): a folder with ``train/`` and ``test/``
  (or ``val/``) ImageFolder trees, given by its path; its preprocessing (image size,
  crop, mean, std) is part of its id.

The data directory is ``--data-dir``, else ``$PSUM_DATA_DIR``, else ``./data``.
Missing or malformed data raises :class:`DataError` with one line saying what was
expected where.

Every source yields batches of normalized float32 NCHW images and int64 labels; CIFAR
training batches are augmented (random 32x32 crop of the 4-pixel zero-padded image and
horizontal flip), ImageNet training batches use a random resized crop and flip.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DataError", "DatasetSpec", "ArraySource", "ImageFolderSource", "load", "data_dir",
           "synthetic", "folder_dataset", "dataset_spec", "is_folder_dataset", "read_class_list"]


class DataError(Exception):
    """Data missing or malformed; the message says what was expected where."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset and its evaluation preprocessing: images are decoded to RGB, their
    shorter side resized (bilinear) to ``image_size / crop``, center-cropped to
    ``image_size`` square, scaled to 0-1 and normalized per channel by ``mean`` and
    ``std``. (CIFAR's 32x32 arrays need no resizing.) A folder dataset also names its
    ``root`` and its ``classes`` in label order."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]  # per channel, on the 0-1 scale
    std: tuple[float, float, float]
    crop: float = 224 / 256  # the center crop's share of the resized shorter side
    root: str | None = None
    classes: tuple[str, ...] | None = None


DATASETS = {
    "cifar10": DatasetSpec("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": DatasetSpec("imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# The archives torchvision downloads (same URLs and checksums).
_CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                 ["train"], ["test"], b"fine_labels"),
}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("PSUM_DATA_DIR") or "data")


def _normalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float32 (N, 3, H, W)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


class ArraySource:
    """Images held in memory as uint8 (N, H, W, 3) with int64 labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, where: str = ""):
        if images.ndim != 4 or images.shape[1:] != (spec.image_size, spec.image_size, 3) \
                or images.dtype != np.uint8:
            raise DataError(f"{where or spec.name}: expected uint8 images of shape "
                            f"(N, {spec.image_size}, {spec.image_size}, 3), got {images.dtype} {images.shape}")
        if labels.dtype.kind not in "iu":  # float labels would be truncated into other classes
            raise DataError(f"{where or spec.name}: labels must be integers, not {labels.dtype}")
        if labels.shape != (len(images),) or len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise DataError(f"{where or spec.name}: expected {len(images)} labels in 0..{spec.num_classes - 1}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.spec = spec
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """Digest of what an evaluation of this source sees: every image and label as
        loaded, in order, and the preprocessing (normalization constants)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(_preprocessing(self.spec, "uint8 HWC -> float32 CHW / 255, normalized").encode())
            digest.update(str(tuple(self.images.shape)).encode())
            digest.update(self.images.numpy().tobytes())
            digest.update(self.labels.numpy().astype("<i8").tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, limit: int | None = None,
                indices=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images (B, 3, H, W) float32, labels (B,)) batches; deterministic given seed.

        ``indices``, when given, are the images to yield, in that order (``shuffle``
        and ``limit`` then do not apply)."""
        gen = torch.Generator().manual_seed(seed)
        if indices is not None:
            order = _checked_indices(indices, len(self))
        else:
            n = len(self) if limit is None else min(limit, len(self))
            order = torch.randperm(len(self), generator=gen)[:n] if shuffle else torch.arange(n)
        n = len(order)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            images = self.images[idx]
            if augment:
                images = _crop_and_flip(images, pad=4, gen=gen)
            yield _normalize(images, self.spec), self.labels[idx]


def _checked_indices(indices, size: int) -> torch.Tensor:
    """``indices`` as an int64 tensor of positions in ``[0, size)``."""
    order = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if order.ndim != 1 or (len(order) and (int(order.min()) < 0 or int(order.max()) >= size)):
        raise DataError(f"image indices must be a list of positions in 0..{size - 1}")
    return order


def _preprocessing(spec: DatasetSpec, steps: str) -> str:
    text = f"{spec.name} {spec.image_size}px mean={spec.mean} std={spec.std}: {steps}"
    return text if spec.crop == DatasetSpec.crop else text + f" crop={spec.crop!r}"


def _crop_and_flip(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image and random horizontal flip, per image."""
    n, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(images)
    for i in range(n):
        crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(1) if flip[i] else crop
    return out


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


class ImageFolderSource:
    """An ImageFolder layout (``<root>/<class>/<image>``), decoded with Pillow.

    A class's label is its position in ``classes`` (default: the class folders under
    ``root``, sorted); a folder that ``classes`` does not list is an error, and classes
    without a folder simply have no images. Evaluation: resize the shorter side to
    ``image_size / crop`` and center-crop ``image_size`` (ImageNet: 256 and 224).
    Training: random resized crop (scale 0.08-1, ratio 3/4-4/3) to ``image_size`` and
    random horizontal flip.
    """

    EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp"}

    def __init__(self, root: Path, spec: DatasetSpec, classes: list[str] | tuple[str, ...] | None = None):
        present = _class_folders(root)
        if not present:
            raise DataError(f"expected class folders with images under {root} (ImageFolder layout)")
        classes = list(classes) if classes is not None else present
        index = {name: label for label, name in enumerate(classes)}
        unknown = [name for name in present if name not in index]
        if unknown:
            raise DataError(f"class folder {root / unknown[0]} is not in the class list "
                            f"({len(classes)} classes{', ' + str(len(unknown)) + ' folders unknown' if len(unknown) > 1 else ''})")
        self.samples = [(path, index[name]) for name in present
                        for path in sorted((root / name).iterdir())
                        if path.suffix.lower() in self.EXTENSIONS]
        if not self.samples:
            raise DataError(f"no images ({', '.join(sorted(self.EXTENSIONS))}) under {root}")
        self.classes, self.spec, self.root = classes, spec, root
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """Digest of what an evaluation of this source sees: the class list, every image
        file's name, label and bytes, in order, and the preprocessing."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(_preprocessing(self.spec, "Pillow RGB, resize short side to 256/224 of the size "
                                         "(bilinear), center crop, normalized").encode())

            digest.update("\0".join(self.classes).encode())
            for path, label in self.samples:
                digest.update(f"\0{path.relative_to(self.root)}\0{label}\0".encode())
                try:
                    digest.update(path.read_bytes())
                except OSError as exc:
                    raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _load(self, index: int, augment: bool, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                size = self.spec.image_size
                if augment:
                    img = _random_resized_crop(img, size, rng)
                    if rng.random() < 0.5:
                        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                else:
                    short = round(size / self.spec.crop)
                    w, h = img.size
                    scale = short / min(w, h)
                    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                     Image.Resampling.BILINEAR)
                    w, h = img.size
                    left, top = (w - size) // 2, (h - size) // 2
                    img = img.crop((left, top, left + size, top + size))
                return np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, limit: int | None = None,
                indices=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(seed)
        if indices is not None:
            order = _checked_indices(indices, len(self)).numpy()
        else:
            n = len(self) if limit is None else min(limit, len(self))
            order = rng.permutation(len(self))[:n] if shuffle else np.arange(n)
        n = len(order)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            images = np.stack([self._load(int(i), augment, rng) for i in idx])
            labels = torch.tensor([self.samples[int(i)][1] for i in idx], dtype=torch.int64)
            yield _normalize(torch.from_numpy(images), self.spec), labels


def _random_resized_crop(img, size: int, rng: np.random.Generator):
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches, allowing only numpy arrays and builtins."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")


def _read_cifar_batches(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = _CifarUnpickler(f, encoding="bytes").load()
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images.append(data.transpose(0, 2, 3, 1))  # CHW rows -> HWC
            labels.append(np.asarray(entry[label_key]))
        except FileNotFoundError:
            raise DataError(f"missing CIFAR batch file {path}") from None
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise DataError(f"malformed CIFAR batch file {path}: {exc}") from None
    if not images:
        raise DataError(f"no CIFAR batch files listed for {folder}")
    return np.concatenate(images), np.concatenate(labels)


def _download_cifar(dataset: str, root: Path) -> None:
    url, md5, folder, *_ = _CIFAR_ARCHIVES[dataset]
    root.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {root}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URL)
            blob = response.read()
    except OSError as exc:
        raise DataError(f"cannot download {url}: {exc}") from None
    if hashlib.md5(blob).hexdigest() != md5:  # noqa: S324 (the published checksum)
        raise DataError(f"downloaded {url} does not match its published MD5 {md5}")
    extract_cifar_archive(blob, root, folder)


def extract_cifar_archive(blob: bytes, root: Path, folder: str) -> None:
    """Extract the members of ``folder/`` from a CIFAR tar.gz (refusing any other path)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and Path(m.name).parts[:1] == (folder,) and ".." not in Path(m.name).parts]
        if not members:
            raise DataError(f"the archive has no {folder}/ folder")
        for member in members:
            target = root / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def _load_npz(path: Path, spec: DatasetSpec) -> ArraySource:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with archive:
            images, labels = archive["images"], archive["labels"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"malformed {path}: expected an .npz archive with arrays 'images' and 'labels' "
                        f"({why})") from None
    return ArraySource(images, labels, spec, where=str(path))


#: Files that list ImageNet's 1,000 wnids in label order, one a line, the wnid first
#: (``synset_words.txt``: Caffe/torchvision; ``LOC_synset_mapping.txt``: Kaggle).
IMAGENET_CLASS_LISTS = ("synset_words.txt", "LOC_synset_mapping.txt", "wnids.txt")


def read_class_list(path: Path) -> list[str]:
    """Class names in label order: the first word of each non-empty line of ``path``."""
    try:
        names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the class list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"class list {path} must name each class once, one a line")
    return names


def _imagenet_classes(base: Path, split_dir: Path) -> list[str]:
    for name in IMAGENET_CLASS_LISTS:
        if (base / name).is_file():
            classes = read_class_list(base / name)
            if len(classes) != 1000:
                raise DataError(f"{base / name} lists {len(classes)} classes, not ImageNet's 1000")
            return classes
    present = _class_folders(split_dir)
    if len(present) != 1000:
        raise DataError(f"{split_dir} has {len(present)} class folders, not 1000: a label is its wnid's position "
                        f"among all 1,000, so put the list ({' or '.join(IMAGENET_CLASS_LISTS[:2])}) in {base}")
    return present


def load(dataset: str, split: str, root: str | os.PathLike | None = None, *,
         download: bool = False) -> ArraySource | ImageFolderSource:
    """The ``split`` ("train" or "test") of ``dataset`` (a name of :data:`DATASETS` or a
    :func:`folder_dataset` id) from the data directory ``root`` (folder datasets name
    their own)."""
    if is_folder_dataset(dataset):
        return _load_folder(dataset_spec(dataset), split)
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)} or give a folder's path")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    spec, root = DATASETS[dataset], data_dir(root)
    if dataset == "imagenet":
        sub = "train" if split == "train" else "val"
        for base in (root / "imagenet", root):
            if (base / sub).is_dir():
                return ImageFolderSource(base / sub, spec, _imagenet_classes(base, base / sub))
        raise DataError(f"expected ImageNet in ImageFolder layout at {root / 'imagenet' / sub}/<class>/<image>")
    url, _, folder, train_files, test_files, label_key = _CIFAR_ARCHIVES[dataset]
    for base in (root, root / dataset):
        npz = base / f"{split}.npz"
        if npz.is_file():
            return _load_npz(npz, spec)
    if not (root / folder).is_dir() and download:
        _download_cifar(dataset, root)
    if (root / folder).is_dir():
        images, labels = _read_cifar_batches(root / folder, train_files if split == "train" else test_files,
                                             label_key)
        return ArraySource(images, labels, spec, where=str(root / folder))
    raise DataError(f"no {dataset} data under {root}: expected {root / folder}/ (torchvision layout; "
                    f"--download fetches it) or {root / dataset / (split + '.npz')}")



# -- datasets of a user's own ------------------------------------------------------------

FOLDER = "folder:"
#: The default normalization of folder datasets: torchvision's (ImageNet's) channel statistics.
FOLDER_MEAN, FOLDER_STD = DATASETS["imagenet"].mean, DATASETS["imagenet"].std
_SPLITS = {"train": ("train",), "test": ("test", "val")}


def is_folder_dataset(dataset) -> bool:
    return isinstance(dataset, str) and dataset.startswith(FOLDER)


def folder_dataset(root: str | os.PathLike, *, image_size: int | None = None, crop: float | None = None,
                   mean=None, std=None) -> str:
    """The id of a dataset of one's own: the folder ``root`` with ``train/`` and
    ``test/`` (or ``val/``) ImageFolder trees, ``<split>/<class>/<image>``, and its
    evaluation preprocessing (:class:`DatasetSpec`).

    Labels: a class's position in ``root/classes.txt`` (one name a line, its first
    word; or ImageNet's ``synset_words.txt``, ``LOC_synset_mapping.txt``, ``wnids.txt``)
    where it exists, else in the sorted union of the class folders of both splits. Defaults:
    ``image_size`` the size of the first test image (which must then be square),
    ``crop`` 1 (resize the shorter side to ``image_size``, no margin cut),
    ``mean``/``std`` torchvision's ImageNet statistics. The id is
    ``folder:<absolute root>?size=..&crop=..&mean=..&std=..``; it is what study keys
    and reports record, and :func:`dataset_spec` reads it back. An id passed in comes
    back unchanged unless an option given here differs from it (an error)."""
    if is_folder_dataset(root):
        spec = dataset_spec(str(root))
        given = {"image_size": image_size, "crop": crop, "mean": _triple(mean, "mean"), "std": _triple(std, "std")}
        for key, value in given.items():
            if value is not None and value != getattr(spec, key):
                raise DataError(f"{root}: {key} {value} differs from the id's {getattr(spec, key)}")
        return str(root)
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"dataset folder {root} does not exist" if not path.exists() else
                        f"dataset {root} is not a folder")
    if "?" in str(path):
        raise DataError(f"dataset folder {path}: a path with '?' cannot name a dataset")
    if _split_dir(path, "test") is None:
        raise DataError(f"expected {path}/test/<class>/<image> (or val/) in ImageFolder layout")
    if image_size is None:
        image_size = _first_image_size(path)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 1 <= image_size <= 4096:
        raise DataError(f"image size must be an integer in 1..4096, not {image_size!r}")
    crop = 1.0 if crop is None else crop
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        raise DataError(f"crop must be a fraction in (0, 1], not {crop!r}")
    mean = _triple(mean, "mean") or FOLDER_MEAN
    std = _triple(std, "std") or FOLDER_STD
    if min(std) <= 0:
        raise DataError(f"std must be positive, not {std}")
    return (f"{FOLDER}{path}?size={image_size}&crop={float(crop)!r}&mean={','.join(map(repr, mean))}"
            f"&std={','.join(map(repr, std))}")


def _triple(values, what: str) -> tuple[float, float, float] | None:
    import math

    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values if not isinstance(v, bool))
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or len(out) != len(list(values)) or not all(math.isfinite(v) for v in out):
        raise DataError(f"{what} must be three numbers (R G B, on the 0-1 scale), not {values!r}")
    return out


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / sub for sub in _SPLITS[split] if (root / sub).is_dir()), None)


def _first_image_size(root: Path) -> int:
    from PIL import Image

    test = _split_dir(root, "test")
    for name in _class_folders(test):
        for path in sorted((test / name).iterdir()):
            if path.suffix.lower() in ImageFolderSource.EXTENSIONS:
                try:
                    with Image.open(path) as img:
                        w, h = img.size
                except OSError as exc:
                    raise DataError(f"cannot read image {path}: {exc}") from None
                if w != h:
                    raise DataError(f"{path} is {w}x{h}, not square: give the image size the network takes "
                                    "(--image-size, or image_size in a study spec)")
                return w
    raise DataError(f"no images ({', '.join(sorted(ImageFolderSource.EXTENSIONS))}) under {test}")


@functools.lru_cache(maxsize=16)
def dataset_spec(dataset: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a name of :data:`DATASETS` or a :func:`folder_dataset` id."""
    if not is_folder_dataset(dataset):
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)} or give a folder's path")
        return DATASETS[dataset]
    path, _, query = dataset[len(FOLDER):].rpartition("?")
    try:
        options = dict(item.split("=", 1) for item in query.split("&"))
        size, crop = int(options["size"]), float(options["crop"])
        mean, std = (tuple(float(v) for v in options[k].split(",")) for k in ("mean", "std"))
    except (KeyError, ValueError) as exc:
        raise DataError(f"malformed folder dataset id {dataset!r} ({exc}); make ids with folder_dataset()") from None
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    listed = next((root / name for name in ("classes.txt", *IMAGENET_CLASS_LISTS) if (root / name).is_file()), None)
    if listed is not None:
        classes = tuple(read_class_list(listed))
    else:
        found = {name for split in _SPLITS for sub in [_split_dir(root, split)] if sub is not None
                 for name in _class_folders(sub)}
        classes = tuple(sorted(found))
    if not classes:
        raise DataError(f"expected class folders under {root}/test (ImageFolder layout)")
    return DatasetSpec(f"folder {root.name}", len(classes), size, _triple(mean, "mean"), _triple(std, "std"),
                       crop=crop, root=str(root), classes=classes)


def _load_folder(spec: DatasetSpec, split: str) -> ImageFolderSource:
    if split not in _SPLITS:
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    where = _split_dir(Path(spec.root), split)
    if where is None:
        raise DataError(f"no {split} split in {spec.root}: expected {spec.root}/{'/ or '.join(_SPLITS[split])}/"
                        "<class>/<image>" + (" (integer calibration and training read it)" if split == "train" else ""))
    return ImageFolderSource(where, spec, spec.classes)


def synthetic(dataset: str, n: int, seed: int = 0) -> ArraySource:
    """A random dataset with the shapes of ``dataset`` (for tests and dry runs)."""
    spec = DATASETS[dataset]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, spec.num_classes, n)
    return ArraySource(images, labels, spec, where=f"synthetic {dataset}")
