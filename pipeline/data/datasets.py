"""MNIST and CIFAR-10 loading, train/val splitting and the committed test subsets.

Images are kept as uint8 tensors ``[N, C, H, W]``; :meth:`Split.float_images`
gives float32 pixels in [0, 1].  Every image has a stable identity: MNIST
``"train-{i}"`` / ``"t10k-{i}"`` (the official order; the IDX files are the
official ones) and CIFAR-10 its original file name (all 60,000 are distinct;
the batch order is only partly official, see the data README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.cifar import read_cifar_batch
from pipeline.data.files import CIFAR_FILES, MNIST_FILES
from pipeline.data.idx import read_idx
from pipeline.errors import DataError

__all__ = [
    "DATASET_NAMES", "NORMALIZATION", "SUBSET_DIR", "Normalization", "Split", "Dataset",
    "load_dataset", "load_split", "split_train_val", "make_test_subset", "load_test_subset",
    "subset_indices", "subset_path",
]

DATASET_NAMES: tuple[str, ...] = ("mnist", "cifar10")
SUBSET_DIR: Path = Path(__file__).resolve().parent / "subsets"

_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std applied to [0, 1] pixels: ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


#: Wong et al. (fast adversarial training) setup; eps = 2/255 becomes 0.0348 on CIFAR.
NORMALIZATION: dict[str, Normalization] = {
    "mnist": Normalization((0.0,), (1.0,)),
    "cifar10": Normalization((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
}


@dataclass
class Split:
    """One split: ``x`` uint8 ``[N, C, H, W]``, ``y`` int64 ``[N]``, ``ids`` N stable identities."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def float_images(self, idx: Any = None) -> torch.Tensor:
        """Float32 pixels in [0, 1] (uint8 / 255) for all images or those selected by ``idx``."""
        if idx is None:
            x = self.x
        elif isinstance(idx, (slice, int)):
            x = self.x[idx]
        else:
            x = self.x[torch.as_tensor(np.asarray(idx), dtype=torch.long)]
        return x.to(torch.float32).div_(255.0)


@dataclass
class Dataset:
    """A dataset with its train and test splits and image shape ``(C, H, W)``."""

    name: str
    train: Split
    test: Split
    shape: tuple[int, int, int]
    num_classes: int = 10


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; expected one of {list(DATASET_NAMES)}")


def _load_mnist(root: Path, split: str) -> Split:
    img_name, lbl_name, expected = MNIST_FILES[split]
    folder = root / "mnist"
    paths = (folder / img_name, folder / lbl_name)
    for p in paths:
        if not p.is_file():
            raise DataError(f"MNIST file missing: {p} (looked in data_root={folder}; expected the official IDX .gz files)")
    images, labels = read_idx(paths[0], expected_ndim=3), read_idx(paths[1], expected_ndim=1)
    if images.shape != (expected, 28, 28) or images.dtype != np.uint8:
        raise DataError(f"MNIST file {paths[0]} holds {images.dtype} {images.shape}; expected uint8 ({expected}, 28, 28)")
    if labels.shape != (expected,) or labels.dtype != np.uint8 or labels.max() > 9:
        raise DataError(f"MNIST file {paths[1]} holds {labels.dtype} {labels.shape} max {labels.max()}; "
                        f"expected uint8 ({expected},) labels in 0..9")
    ids = [f"{_MNIST_PREFIX[split]}-{i}" for i in range(expected)]
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), ids)


def _load_cifar(root: Path, split: str) -> Split:
    names, expected = CIFAR_FILES[split]
    folder = root / "cifar-10-batches-py"
    xs, ys, ids = [], [], []
    for fname in names:
        p = folder / fname
        if not p.is_file():
            raise DataError(f"CIFAR-10 file missing: {p} (looked in data_root={folder}; "
                            f"expected the python-version pickles {list(names)})")
        x, y, f = read_cifar_batch(p)
        xs.append(x)
        ys.append(y)
        ids.extend(f)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if len(y_all) != expected:
        raise DataError(f"CIFAR-10 {split} split in {folder} has {len(y_all)} images; expected {expected} "
                        f"from {list(names)}")
    if len(set(ids)) != len(ids):
        raise DataError(f"CIFAR-10 {split} split in {folder} has duplicate file names; expected unique names")
    return Split(torch.from_numpy(x_all), torch.from_numpy(y_all), ids)


def load_split(name: str, root: Path | str, split: str) -> Split:
    """Load one split (``"train"`` or ``"test"``) of ``name`` from the data root ``root``."""
    _check_name(name)
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for {name}; expected 'train' or 'test'")
    root = Path(root)
    return _load_mnist(root, split) if name == "mnist" else _load_cifar(root, split)


def load_dataset(name: str, root: Path | str) -> Dataset:
    """Load ``name`` (``"mnist"`` or ``"cifar10"``) from ``root``, which holds ``mnist/`` and
    ``cifar-10-batches-py/``.  Raises DataError for an unknown name or bad/missing files."""
    _check_name(name)
    return Dataset(name, load_split(name, root, "train"), load_split(name, root, "test"), _SHAPES[name])


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into sorted, disjoint ``(train_idx, val_idx)`` covering all."""
    if not isinstance(n, (int, np.integer)) or not isinstance(val_size, (int, np.integer)):
        raise ValueError(f"split_train_val needs integer n and val_size, got {n!r}, {val_size!r}")
    if not 0 <= val_size < n:
        raise ValueError(f"val_size={val_size} is out of range for n={n}; expected 0 <= val_size < n")
    perm = np.random.default_rng(seed).permutation(int(n))
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _sort_key(dataset: str) -> Any:
    if dataset != "mnist":
        return None

    def key(i: str) -> tuple[str, int]:
        prefix, _, num = i.rpartition("-")
        if not num.isdigit():
            raise ValueError(f"MNIST id {i!r} is not of the form '<split>-<index>'")
        return prefix, int(num)
    return key


def make_test_subset(ids: list[str], size: int, seed: int, dataset: str) -> list[str]:
    """Seeded choice of ``size`` ids, independent of the order of ``ids``.

    Ids are sorted canonically (MNIST by numeric index, otherwise by name), then
    ``default_rng(seed).choice(len, size, replace=False)`` picks them, in that order.
    """
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dataset} ids contain duplicates; expected unique identities")
    if not 0 < size <= len(ids):
        raise ValueError(f"subset size {size} out of range for {len(ids)} {dataset} ids; expected 1..{len(ids)}")
    ordered = sorted(ids, key=_sort_key(dataset))
    choice = np.random.default_rng(seed).choice(len(ordered), size, replace=False)
    return [ordered[int(i)] for i in choice]


def subset_path(dataset: str) -> Path:
    """Path of the committed test-subset JSON for ``dataset``."""
    _check_name(dataset)
    return SUBSET_DIR / f"{dataset}_test.json"


def load_test_subset(dataset: str) -> list[str]:
    """Ids of the committed test subset of ``dataset`` (validated against its JSON header)."""
    path = subset_path(dataset)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"test subset file missing: {path} (looked in {SUBSET_DIR}; regenerate with "
                        f"python -m pipeline.data.subsets --write)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"test subset file {path} is not valid JSON ({exc}); expected "
                        f'{{"dataset", "seed", "size", "ids"}}') from exc
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if (not isinstance(ids, list) or doc.get("dataset") != dataset or doc.get("size") != len(ids)
            or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids)):
        raise DataError(f"test subset file {path} is malformed; expected dataset={dataset!r} and "
                        f"'size' equal to the number of distinct string 'ids'")
    return ids


def subset_indices(split: Split, wanted_ids: list[str]) -> np.ndarray:
    """Positions in ``split`` of ``wanted_ids``, in their order; DataError names the first missing id."""
    pos = {i: k for k, i in enumerate(split.ids)}
    out = np.empty(len(wanted_ids), dtype=np.int64)
    for k, i in enumerate(wanted_ids):
        if i not in pos:
            raise DataError(f"id {i!r} not found in the split ({len(split.ids)} ids); "
                            f"expected every wanted id to be present")
        out[k] = pos[i]
    return out
