"""Small shared helpers: atomic writes, hashing, provenance, statistics, mixed precision.

The torch-free helpers (:mod:`~pipeline.utils.io`, :mod:`~pipeline.utils.provenance`, which imports torch inside
its functions, :mod:`~pipeline.utils.stats`) are imported here; the mixed-precision ones on first use
(:mod:`pipeline.utils.lazy`), so the workflow's supervising processes never import torch."""
from pipeline.utils.io import atomic_save_torch, atomic_write_json, atomic_write_text, load_checkpoint, sha256_file
from pipeline.utils.lazy import lazy_attributes
from pipeline.utils.provenance import provenance, resolve_device
from pipeline.utils.stats import wilson_interval

__all__ = ["atomic_save_torch", "atomic_write_json", "atomic_write_text", "load_checkpoint", "sha256_file",
           "provenance", "resolve_device", "wilson_interval", "autocast", "full_precision", "mixed_forward"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    "autocast": "pipeline.utils.precision", "full_precision": "pipeline.utils.precision",
    "mixed_forward": "pipeline.utils.precision"})
