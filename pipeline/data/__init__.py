"""Data loading: safe IDX/CIFAR parsers, datasets, train/val split and committed test subsets."""

from pipeline.data.cifar import read_cifar_batch
from pipeline.data.datasets import (
    DATASET_NAMES,
    NORMALIZATION,
    SUBSET_DIR,
    Dataset,
    Normalization,
    Split,
    load_dataset,
    load_split,
    load_test_subset,
    make_test_subset,
    split_train_val,
    subset_indices,
    subset_path,
)
from pipeline.data.idx import read_idx

__all__ = [
    "DATASET_NAMES",
    "NORMALIZATION",
    "SUBSET_DIR",
    "Dataset",
    "Normalization",
    "Split",
    "load_dataset",
    "load_split",
    "load_test_subset",
    "make_test_subset",
    "read_cifar_batch",
    "read_idx",
    "split_train_val",
    "subset_indices",
    "subset_path",
]
