"""Which files each dataset split is read from (names under the dataset's folder; no torch, so the workflow's
supervising processes can use it without paying torch's import)."""
from __future__ import annotations

__all__ = ["MNIST_FILES", "CIFAR_FILES"]

#: split -> (images file, labels file, expected count), under ``<data_root>/mnist/``
MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
#: split -> (pickled batch files, expected count), under ``<data_root>/cifar-10-batches-py/``
CIFAR_FILES = {"train": (tuple(f"data_batch_{i}" for i in range(1, 6)), 50000), "test": (("test_batch",), 10000)}
