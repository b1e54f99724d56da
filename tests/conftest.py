"""Shared fixtures: where the real data lives (CI has ../shared/data beside the clone)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("PIPELINE_DATA_ROOT", ROOT.parent / "shared" / "data"))
HAVE_DATA = (DATA_ROOT / "mnist" / "train-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"real MNIST not found under {DATA_ROOT}")
HAVE_CIFAR = (DATA_ROOT / "cifar-10-batches-py" / "data_batch_1").is_file()
needs_cifar = pytest.mark.skipif(not HAVE_CIFAR, reason=f"real CIFAR-10 not found under {DATA_ROOT}")
