"""Tests of pipeline.data: IDX and CIFAR parsers on tiny synthetic files, splits, subsets, real data."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import (
    NORMALIZATION, Split, load_dataset, load_split, load_test_subset, make_test_subset,
    read_cifar_batch, read_idx, split_train_val, subset_indices, subset_path,
)
from pipeline.data.subsets import TEST_SUBSET_SEED, TEST_SUBSET_SIZE, render_subset_doc
from pipeline.errors import DataError


def _data_root() -> Path:
    env = os.environ.get("PIPELINE_DATA_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


DATA_ROOT = _data_root()
needs_data = pytest.mark.skipif(
    not (DATA_ROOT / "mnist").is_dir() or not (DATA_ROOT / "cifar-10-batches-py").is_dir(),
    reason=f"real data not found at {DATA_ROOT} (set PIPELINE_DATA_ROOT)",
)


# ---------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray, magic: bytes | None = None) -> bytes:
    """Plain IDX bytes for a uint8 array."""
    head = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    return head + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def cifar_dict(n: int = 4, seed: int = 0) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


# ---------------------------------------------------------------- IDX
def test_idx_round_trip_gz_and_plain(tmp_path: Path) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([5, 0, 4], dtype=np.uint8)
    out = read_idx(write_gz(tmp_path / "i.gz", idx_bytes(imgs)))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, imgs)
    plain = tmp_path / "l.idx"
    plain.write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(plain, expected_ndim=1), labels)


def test_idx_truncated_and_extra_payload(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))
    p = write_gz(tmp_path / "trunc.gz", good[:-1])
    with pytest.raises(DataError, match="truncated") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)
    with pytest.raises(DataError, match="extra bytes"):
        read_idx(write_gz(tmp_path / "extra.gz", good + b"\x00"))
    with pytest.raises(DataError, match="header"):
        read_idx(write_gz(tmp_path / "hdr.gz", good[:7]))


@pytest.mark.parametrize("magic", [b"\x00\x00\x08\x00", b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_idx_bad_magic(tmp_path: Path, magic: bytes) -> None:
    p = write_gz(tmp_path / "bad.gz", idx_bytes(np.zeros(3, dtype=np.uint8), magic=magic))
    with pytest.raises(DataError, match="bad magic") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)


def test_idx_wrong_ndim(tmp_path: Path) -> None:
    p = write_gz(tmp_path / "l.gz", idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match="expected 3"):
        read_idx(p, expected_ndim=3)


def test_idx_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match="missing") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    payload = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="gzip") as ei:
        read_idx(cut)
    assert str(cut) in str(ei.value)
    flipped = bytearray(payload)
    flipped[12] ^= 0xFF
    bad = tmp_path / "crc.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="gzip"):
        read_idx(bad)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="not gzip"):
        read_idx(notgz)


# ---------------------------------------------------------------- CIFAR
def test_cifar_round_trip(tmp_path: Path) -> None:
    d = cifar_dict(5)
    x, y, names = read_cifar_batch(write_pickle(tmp_path / "data_batch_1", d))
    assert x.dtype == np.uint8 and x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(x.reshape(5, -1), d[b"data"])
    assert y.dtype == np.int64 and y.tolist() == d[b"labels"]
    assert names == [n.decode() for n in d[b"filenames"]]


def test_cifar_legacy_numpy_core_global(tmp_path: Path) -> None:
    """Python-2-era pickles name numpy.core.multiarray._reconstruct; it must be accepted."""
    raw = pickle.dumps(cifar_dict(3), protocol=2)
    assert b"numpy._core.multiarray\n" in raw or b"numpy.core.multiarray\n" in raw
    p = tmp_path / "b"
    p.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert read_cifar_batch(p)[0].shape == (3, 3, 32, 32)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"echo pwned > {self.marker}",))


def test_cifar_forbidden_global_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    d = cifar_dict(2)
    d[b"batch_label"] = _Evil(marker)
    p = write_pickle(tmp_path / "evil_batch", d)
    with pytest.raises(DataError, match="forbidden global") as ei:
        read_cifar_batch(p)
    assert str(p) in str(ei.value) and "system" in str(ei.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.pop(b"labels"), "lacks key"),
        (lambda d: d.__setitem__(b"data", np.zeros((4, 3071), np.uint8)), "shape"),
        (lambda d: d.__setitem__(b"data", np.zeros((4, 3072), np.float32)), "uint8"),
        (lambda d: d.__setitem__(b"labels", [0, 1, 2]), "labels"),
        (lambda d: d.__setitem__(b"filenames", [b"a", b"b"]), "filenames"),
        (lambda d: d.__setitem__(b"labels", [0, 1, 10, 2]), "0..9"),
        (lambda d: d.__setitem__(b"labels", [0, 1, -1, 2]), "0..9"),
    ],
)
def test_cifar_bad_content(tmp_path: Path, mutate, pattern: str) -> None:
    d = cifar_dict(4)
    mutate(d)
    p = write_pickle(tmp_path / "b", d)
    with pytest.raises(DataError, match=pattern) as ei:
        read_cifar_batch(p)
    assert str(p) in str(ei.value)


def test_cifar_missing_truncated_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        read_cifar_batch(tmp_path / "test_batch")
    raw = pickle.dumps(cifar_dict(2), protocol=2)
    p = tmp_path / "cut"
    p.write_bytes(raw[:-100])
    with pytest.raises(DataError, match="not a readable pickle"):
        read_cifar_batch(p)
    with pytest.raises(DataError, match="expected a dict"):
        read_cifar_batch(write_pickle(tmp_path / "list", [1, 2]))


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(DataError, match=r"MNIST file missing: .*train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "mnist").mkdir()
    write_gz(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    write_gz(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="expected uint8 \\(10000, 28, 28\\)"):
        load_split("mnist", tmp_path, "test")
    (tmp_path / "cifar-10-batches-py").mkdir()
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", cifar_dict(4))
    with pytest.raises(DataError, match="expected 10000"):
        load_split("cifar10", tmp_path, "test")


# ---------------------------------------------------------------- splits and subsets
def test_split_train_val() -> None:
    tr, va = split_train_val(100, 20, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))
    tr2, va2 = split_train_val(100, 20, seed=3)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(va, split_train_val(100, 20, seed=4)[1])
    assert len(split_train_val(5, 0, 0)[0]) == 5
    for bad in (-1, 100, 101):
        with pytest.raises(ValueError):
            split_train_val(100, bad, 0)


def test_make_test_subset_order_independent() -> None:
    ids = [f"t10k-{i}" for i in range(500)]
    a = make_test_subset(ids, 50, 0, "mnist")
    shuffled = list(np.random.default_rng(1).permutation(ids))
    assert make_test_subset(shuffled, 50, 0, "mnist") == a
    assert make_test_subset(ids, 50, 1, "mnist") != a
    assert len(set(a)) == 50
    # MNIST sorts numerically, not lexically
    expected = [f"t10k-{i}" for i in np.random.default_rng(0).choice(500, 50, replace=False)]
    assert a == expected
    names = [f"img_{i}.png" for i in range(30)]
    assert make_test_subset(names[::-1], 10, 0, "cifar10") == make_test_subset(names, 10, 0, "cifar10")
    with pytest.raises(ValueError):
        make_test_subset(ids[:5], 6, 0, "mnist")


def test_subset_indices_and_float_images() -> None:
    split = Split(torch.arange(4 * 4, dtype=torch.uint8).reshape(4, 1, 2, 2) * 17,
                  torch.tensor([1, 2, 3, 4]), ["a", "b", "c", "d"])
    idx = subset_indices(split, ["c", "a"])
    assert idx.tolist() == [2, 0]
    f = split.float_images(idx)
    assert f.dtype == torch.float32 and f.shape == (2, 1, 2, 2)
    assert torch.equal(f, split.x[[2, 0]].float() / 255.0)
    assert split.float_images().max().item() == 1.0
    with pytest.raises(DataError, match="'zz'"):
        subset_indices(split, ["a", "zz", "yy"])


def test_normalization_constants() -> None:
    assert NORMALIZATION["cifar10"].std == (0.225, 0.225, 0.225)
    assert abs(2 / 255 / NORMALIZATION["cifar10"].std[0] - 0.0349) < 1e-3


# ---------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def cifar10_real():
    return load_dataset("cifar10", DATA_ROOT)


@pytest.fixture(scope="module")
def mnist_real():
    return load_dataset("mnist", DATA_ROOT)


@needs_data
def test_real_mnist(mnist_real) -> None:
    ds = mnist_real
    assert ds.shape == (1, 28, 28)
    assert tuple(ds.train.x.shape) == (60000, 1, 28, 28) and ds.train.x.dtype == torch.uint8
    assert tuple(ds.test.x.shape) == (10000, 1, 28, 28)
    assert ds.train.y[:5].tolist() == [5, 0, 4, 1, 9] and ds.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.train.ids[0] == "train-0" and ds.test.ids[-1] == "t10k-9999"
    assert abs(ds.train.float_images().mean().item() - 0.1307) < 1e-3


@needs_data
def test_real_cifar(cifar10_real) -> None:
    ds = cifar10_real
    assert ds.shape == (3, 32, 32)
    assert tuple(ds.train.x.shape) == (50000, 3, 32, 32) and tuple(ds.test.x.shape) == (10000, 3, 32, 32)
    assert ds.test.ids[0] == "domestic_cat_s_000907.png" and ds.test.y[0].item() == 3
    assert ds.test.x[0].reshape(-1)[:3].tolist() == [158, 159, 165]
    assert ds.train.ids[0] == "leptodactylus_pentadactylus_s_000004.png" and ds.train.y[0].item() == 6
    assert ds.train.x[0].reshape(-1)[:3].tolist() == [59, 43, 50]
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10


@needs_data
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_committed_subsets(name: str, request) -> None:
    ds = request.getfixturevalue(f"{name}_real")
    doc = json.loads(subset_path(name).read_text())
    assert doc["dataset"] == name and doc["seed"] == TEST_SUBSET_SEED and doc["size"] == TEST_SUBSET_SIZE
    ids = load_test_subset(name)
    assert len(ids) == 1024 == len(set(ids))
    idx = subset_indices(ds.test, ids)
    assert [ds.test.ids[i] for i in idx] == ids
    regenerated = make_test_subset(ds.test.ids, TEST_SUBSET_SIZE, TEST_SUBSET_SEED, name)
    assert regenerated == ids
    text = render_subset_doc({"dataset": name, "seed": TEST_SUBSET_SEED, "size": TEST_SUBSET_SIZE, "ids": ids})
    assert subset_path(name).read_text() == text
