"""Data files: which files each split reads, their sha256, and the manifests the prepare stage writes.

The workflow hashes each split's files when it is parsed (:func:`current_hashes`, reading nothing when a manifest's
recorded size, modification and change times and inode still match the files) and carries the hashes into every
per-run config (``data_sha256``).  So a file whose bytes change changes exactly the configs of the jobs that read it:
those jobs rerun, whatever the file's modification time, and a file that is only touched or copied changes nothing.
A split's manifest, ``results/<scale>/data/<dataset>-<split>-<digest>.json`` (:func:`manifest_path`, named by the
content), is written by its prepare job, which parses every file first: a corrupt file stops the workflow there,
named, before any training.  Train and evaluate check the files against their config's hashes before they start
(:func:`check_hashes`) and record them in their provenance (``data_sha256``: path under ``data_root`` -> sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from pipeline.data.files import CIFAR_FILES, MNIST_FILES
from pipeline.errors import DataError
from pipeline.utils.io import sha256_file

__all__ = ["SPLITS", "split_files", "file_hashes", "file_stamps", "data_digest", "current_hashes", "manifest_path",
           "check_hashes", "MANIFEST_RE"]

SPLITS = ("train", "test")
#: ``<dataset>-<split>-<16 hex>.json``
MANIFEST_RE = re.compile(r"(?P<dataset>[a-z0-9]+)-(?P<split>train|test)-(?P<digest>[0-9a-f]{16})\.json")


def split_files(dataset: str, split: str) -> tuple[str, ...]:
    """The files (paths relative to ``data_root``) that the ``split`` of ``dataset`` is read from."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if dataset == "mnist":
        return tuple(f"mnist/{n}" for n in MNIST_FILES[split][:2])
    if dataset == "cifar10":
        return tuple(f"cifar-10-batches-py/{n}" for n in CIFAR_FILES[split][0])
    raise DataError(f"unknown dataset {dataset!r}; expected 'mnist' or 'cifar10'")


def _path(root: Path | str, rel: str, dataset: str, split: str) -> Path:
    path = Path(root) / rel
    if not path.is_file():
        raise DataError(f"{dataset} {split} file missing: {path} (expected under data_root={root})")
    return path


def file_hashes(root: Path | str, dataset: str, split: str) -> dict[str, str]:
    """sha256 of each file of the split, keyed by its path under ``root``; DataError naming a missing file."""
    return {rel: sha256_file(_path(root, rel, dataset, split)) for rel in split_files(dataset, split)}


def file_stamps(root: Path | str, dataset: str, split: str) -> dict[str, list[int]]:
    """Size, modification and change time (ns) and inode of each file: if all are unchanged, so are the bytes (a write
    always moves the change time, which no user can set back)."""
    out = {}
    for rel in split_files(dataset, split):
        st = os.stat(_path(root, rel, dataset, split))
        out[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def data_digest(hashes: dict[str, str]) -> str:
    """16 hex digits naming the content of a split's files."""
    return hashlib.sha256("".join(f"{rel} {sha}\n" for rel, sha in sorted(hashes.items())).encode()).hexdigest()[:16]


def _read(manifest: Path) -> dict:
    return json.loads(manifest.read_text())


def current_hashes(root: Path | str, dataset: str, split: str, data_dir: Path | str) -> dict[str, str]:
    """The split's file hashes now: taken from a manifest in ``data_dir`` whose recorded stamps match the files, else
    computed (reads nothing but the manifests when nothing changed)."""
    stamps = file_stamps(root, dataset, split)
    for m in sorted(Path(data_dir).glob(f"{dataset}-{split}-*.json")):
        try:
            doc = _read(m)
            files = doc["files"]
            if MANIFEST_RE.fullmatch(m.name) and {rel: f.get("stamp") for rel, f in files.items()} == stamps:
                return {rel: f["sha256"] for rel, f in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return file_hashes(root, dataset, split)


def manifest_path(data_dir: Path | str, dataset: str, split: str, hashes: dict[str, str]) -> Path:
    return Path(data_dir) / f"{dataset}-{split}-{data_digest(hashes)}.json"


def check_hashes(root: Path | str, dataset: str, split: str, expected: dict[str, str] | None) -> dict[str, str]:
    """The split's file hashes now, checked against ``expected`` (a run config's ``data_sha256``; ``None``: nothing
    to check).  :class:`DataError` naming the first file whose bytes differ, before any work is done on it."""
    now = file_hashes(root, dataset, split)
    for rel, sha in now.items():
        if expected is not None and expected.get(rel) != sha:
            raise DataError(f"{Path(root) / rel}: its content differs from what this job was planned with (sha256 "
                            f"{sha[:16]}... now, {str(expected.get(rel))[:16]}... planned); the data changed after "
                            "the workflow was started: rerun it, and it reruns exactly what reads this file")
    return now
