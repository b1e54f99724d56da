"""Exceptions raised by the library: one clear message naming the bad value and what was expected."""

__all__ = ["PipelineError", "ConfigError", "DataError", "CheckpointError", "DiskFullError", "UnsupportedLayerError"]


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A parameter in params.yaml (or an override) is missing or has a bad value."""


class DataError(PipelineError, OSError):
    """A dataset file is missing, truncated or malformed."""


class CheckpointError(PipelineError, ValueError):
    """A checkpoint does not match the architecture or cannot be loaded safely."""


class DiskFullError(PipelineError, OSError):
    """The device ran out of space while a file was written (the write was abandoned, nothing replaced)."""


class UnsupportedLayerError(PipelineError, TypeError):
    """A bound domain was asked to propagate through a layer it does not support."""
