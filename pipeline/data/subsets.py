"""Regenerate or check the committed test-subset files ``pipeline/data/subsets/*_test.json``.

Usage::

    python -m pipeline.data.subsets --write --data-root /work/shared/data   # rewrite both files
    python -m pipeline.data.subsets --data-root /work/shared/data           # check only (exit 1 on mismatch)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.data.datasets import (
    DATASET_NAMES, load_split, load_test_subset, make_test_subset, subset_indices, subset_path,
)
from pipeline.errors import DataError

__all__ = [
    "TEST_SUBSET_SEED", "TEST_SUBSET_SIZE", "default_data_root", "build_subset_doc", "render_subset_doc",
    "write_atomic", "main", "make_test_subset", "load_test_subset", "subset_indices", "subset_path",
]

TEST_SUBSET_SEED: int = 0
TEST_SUBSET_SIZE: int = 1024


def default_data_root() -> Path:
    """``$PIPELINE_DATA_ROOT`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("PIPELINE_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def build_subset_doc(dataset: str, root: Path, seed: int = TEST_SUBSET_SEED,
                     size: int = TEST_SUBSET_SIZE) -> dict[str, Any]:
    """Compute the subset document for ``dataset`` from the real test split under ``root``."""
    test = load_split(dataset, root, "test")
    ids = make_test_subset(test.ids, size, seed, dataset)
    return {"dataset": dataset, "seed": seed, "size": size, "ids": ids}


def render_subset_doc(doc: dict[str, Any]) -> str:
    """Canonical JSON text of a subset document (one id per line, trailing newline)."""
    return json.dumps(doc, indent=1) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; committed files should be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.data.subsets", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the JSON files (default: only check them)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder holding mnist/ and cifar-10-batches-py/ (default: $PIPELINE_DATA_ROOT "
                         "or ../shared/data next to the repo)")
    ap.add_argument("--datasets", nargs="+", choices=DATASET_NAMES, default=list(DATASET_NAMES))
    args = ap.parse_args(argv)
    root = args.data_root or default_data_root()
    status = 0
    try:
        for name in args.datasets:
            doc = build_subset_doc(name, root)
            path = subset_path(name)
            if args.write:
                write_atomic(path, render_subset_doc(doc))
                print(f"wrote {path} ({doc['size']} ids, seed {doc['seed']})")
            elif load_test_subset(name) != doc["ids"]:
                print(f"MISMATCH {path}: committed ids differ from those regenerated from {root}")
                status = 1
            else:
                print(f"ok {path}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
