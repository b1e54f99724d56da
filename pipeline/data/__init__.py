"""Data loading: safe IDX/CIFAR parsers, datasets, train/val split and committed test subsets.

Names are imported on first use (:mod:`pipeline.utils.lazy`): :mod:`pipeline.data.manifest` and
:mod:`pipeline.data.files` stay importable without torch."""
from pipeline.utils.lazy import lazy_attributes

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

__getattr__, __dir__ = lazy_attributes(__name__, {
    **{name: "pipeline.data.datasets" for name in __all__ if name not in ("read_cifar_batch", "read_idx")},
    "read_cifar_batch": "pipeline.data.cifar", "read_idx": "pipeline.data.idx"})
