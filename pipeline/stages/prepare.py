"""Stage: check one split of a dataset and record what was read.

``python -m pipeline.stages.prepare --dataset mnist --split test --data-root ../shared/data
--out results/<scale>/data/mnist-test-<digest>.json`` parses the split's files with the real parsers (a missing or
corrupt file fails here, naming it, before any training or evaluation starts), checks for the test split that the
committed test subset exists in this copy, and writes a manifest: sha256, size and stamp (size, times, inode) of each
source file, keyed by its path under the data root, the number of images, and for the test split the subset's
identities hash.  No image data is copied.  The ``<digest>`` in the name must be the digest of the files' content
(:func:`pipeline.data.manifest.data_digest`); the split's other manifests in that directory are deleted, so that
returning to earlier data re-prepares it and reruns what reads it.  Train and evaluate check the files they read
against their config's hashes (:mod:`pipeline.data.manifest`).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from pipeline.data import load_split, load_test_subset, subset_indices
from pipeline.data.manifest import MANIFEST_RE, SPLITS, data_digest, file_hashes, file_stamps
from pipeline.errors import DataError
from pipeline.utils import atomic_write_json

DATASETS = ("mnist", "cifar10")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=DATASETS, required=True)
    ap.add_argument("--split", choices=SPLITS, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    ds, split, root = args.dataset, args.split, args.data_root
    name = MANIFEST_RE.fullmatch(args.out.name)
    if name is None or (name["dataset"], name["split"]) != (ds, split):
        raise DataError(f"--out {args.out}: expected a file named {ds}-{split}-<16 hex digits>.json")
    stamps = file_stamps(root, ds, split)
    hashes = file_hashes(root, ds, split)
    if data_digest(hashes) != name["digest"]:
        raise DataError(f"{ds} {split} files under {root} changed after the workflow was planned (content digest "
                        f"{data_digest(hashes)}, planned {name['digest']}); rerun the workflow")
    data = load_split(ds, root, split)
    extra = {}
    if split == "test":
        ids = load_test_subset(ds)
        subset_indices(data, ids)  # every committed id must exist in this copy
        extra = {"test_subset_size": len(ids), "test_subset_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    if file_hashes(root, ds, split) != hashes:
        raise DataError(f"{ds} {split} files under {root} changed while they were read; rerun the workflow")
    files = {rel: {"sha256": sha, "bytes": stamps[rel][0], "stamp": stamps[rel]} for rel, sha in hashes.items()}
    atomic_write_json(args.out, {"dataset": ds, "split": split, "images": len(data), "shape": list(data.x.shape[1:]),
                                 "files": files, **extra})
    for other in args.out.parent.glob(f"{ds}-{split}-*.json"):
        if other != args.out and MANIFEST_RE.fullmatch(other.name):
            other.unlink(missing_ok=True)
    print(f"{ds} {split}: {len(data)} images checked", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
