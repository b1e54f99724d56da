"""Stage: check one dataset's files and record what was read.

``python -m pipeline.stages.prepare --dataset mnist --data-root ../shared/data --out <manifest.json>`` parses every
file with the real parsers (a missing or corrupt file fails here, naming it, before any training starts), checks
that the committed test subset exists in this copy, and writes a manifest: sha256 and size of each source file,
split sizes, and the subset's identities hash.  No image data is copied.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from pipeline.data import load_dataset, load_test_subset, subset_indices
from pipeline.utils import atomic_write_json, sha256_file

SOURCES = {"mnist": ("mnist", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
           "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SOURCES), required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset, args.data_root)
    ids = load_test_subset(args.dataset)
    subset_indices(ds.test, ids)  # every committed id must exist in this copy
    folder, names = SOURCES[args.dataset]
    files = {n: {"sha256": sha256_file(args.data_root / folder / n), "bytes": (args.data_root / folder / n).stat().st_size}
             for n in names}
    atomic_write_json(args.out, {
        "dataset": args.dataset, "train": len(ds.train), "test": len(ds.test), "shape": list(ds.shape),
        "files": files, "test_subset_size": len(ids),
        "test_subset_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()})
    print(f"{args.dataset}: {len(ds.train)} train / {len(ds.test)} test images checked", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
