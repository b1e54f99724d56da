"""Small shared helpers: atomic writes, hashing, provenance, statistics, mixed precision."""
from pipeline.utils.io import atomic_save_torch, atomic_write_json, atomic_write_text, load_checkpoint, sha256_file
from pipeline.utils.precision import autocast, full_precision, mixed_forward
from pipeline.utils.provenance import provenance, resolve_device
from pipeline.utils.stats import wilson_interval

__all__ = ["atomic_save_torch", "atomic_write_json", "atomic_write_text", "load_checkpoint", "sha256_file",
           "provenance", "resolve_device", "wilson_interval", "autocast", "full_precision", "mixed_forward"]
