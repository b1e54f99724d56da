"""params.yaml ``scales``, ``optim``, ``verify`` and ``data`` -> validated, typed settings.  Torch-free.

Every number is range-checked where it is parsed, and every error names the key with its scale or dataset
(``scales.smoke.batch_size``, ``optim.mnist.decay_factor``), so a bad value stops the workflow before any job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.errors import ConfigError
from pipeline.params.schema import _check_keys, _dc, _num

__all__ = ["ScaleConfig", "SCHEDULE_OVERRIDE_KEYS", "check_schedule_override", "OptimConfig", "VerifyConfig",
           "TRAIN_SET_SIZES", "TEST_SUBSET_SIZE", "check_val_size", "parse_scales"]

#: images in each dataset's official training set (MNIST 60,000; CIFAR-10 50,000), before the validation split
TRAIN_SET_SIZES = {"mnist": 60000, "cifar10": 50000}
#: images in the committed seeded test subsets (pipeline/data/subsets)
TEST_SUBSET_SIZE = 1024
_ANY = (1, None, "[]")


@dataclass(frozen=True)
class ScaleConfig:
    epochs: int
    batch_size: int
    train_limit: int | None
    batches_per_epoch: int | None
    val_limit: int
    test_images: int
    test_images_large: int
    eps_ramp_epochs: int
    lr_decay_every: int
    augment_cifar: bool
    val_vra_images: int     # validation images certified after every epoch (Table V); 0 = off
    time_budget_s: float    # Table V: training-time budget for reaching MixTrain's validation VRA
    figure_images: int | None  # Fig. 4's population of training images and Fig. 5's test images (null = all)
    attack_overrides: dict  # attack -> {hyperparameter: value} replacing params.yaml `attacks` at this scale (ERA)
    table1_attack_overrides: dict  # the same for Table I's equal-budget comparison
    table1_max_runs: int | None  # Table I: at most this many runs per attack (null = until the budget is spent)
    runs: list | None = None     # the run ids this scale builds (null = every run of the grid); tables keep their rows
    #: method name or run id -> {epochs, batches_per_epoch, eps_ramp_epochs, lr_decay_every, lr_decay_factor,
    #: time_limit_min}
    #: replacing this scale's schedule for that method's runs (a run id's entry wins over its method's)
    schedule_overrides: dict | None = None
    #: this scale's per-training memory cap in GiB, replacing the top-level ``memory_cap_gib`` (null: the top-level
    #: one); smoke lowers it so that two trainings at once stay inside a 24 GiB machine
    memory_cap_gib: float | None = None

    RANGES: ClassVar[dict[str, tuple[Any, Any, str]]] = {
        "epochs": (1, 100000, "[]"), "batch_size": (1, 100000, "[]"), "train_limit": _ANY,
        "batches_per_epoch": _ANY, "val_limit": _ANY, "test_images": (1, TEST_SUBSET_SIZE, "[]"),
        "test_images_large": (1, TEST_SUBSET_SIZE, "[]"), "eps_ramp_epochs": (0, 100000, "[]"),
        "lr_decay_every": _ANY, "val_vra_images": (0, None, "[]"), "time_budget_s": (0, None, "(]"),
        "figure_images": _ANY, "table1_max_runs": _ANY, "memory_cap_gib": (0.001, 1e6, "[]")}

    def check(self, where: str) -> None:
        if self.runs is not None and (not isinstance(self.runs, list) or not self.runs
                                      or not all(isinstance(r, str) for r in self.runs)):
            raise ConfigError(f"{where}.runs: expected null or a non-empty list of run ids, got {self.runs!r}")
        if self.schedule_overrides is not None:
            if not isinstance(self.schedule_overrides, dict):
                raise ConfigError(f"{where}.schedule_overrides: expected a mapping of method name or run id -> "
                                  f"schedule values, got {self.schedule_overrides!r}")
            for key, o in self.schedule_overrides.items():
                check_schedule_override(o, f"{where}.schedule_overrides.{key}")
        if self.val_vra_images > self.val_limit:
            raise ConfigError(f"{where}.val_vra_images: {self.val_vra_images} exceeds val_limit {self.val_limit} "
                              "(the validation images scored per epoch)")
        if self.train_limit is not None and self.train_limit < self.batch_size:
            raise ConfigError(f"{where}.train_limit: {self.train_limit} is smaller than one batch "
                              f"(batch_size {self.batch_size}); expected null or at least {self.batch_size}")


@dataclass(frozen=True)
class OptimConfig:
    name: str
    lr: float
    momentum: float
    weight_decay: float
    decay_factor: float  # the learning rate is multiplied by it every lr_decay_every epochs

    RANGES: ClassVar[dict[str, tuple[Any, Any, str]]] = {
        "lr": (0, 10, "(]"), "momentum": (0, 1, "[)"), "weight_decay": (0, 1, "[]"), "decay_factor": (0, 1, "(]")}

    def check(self, where: str) -> None:
        if self.name not in ("adam", "sgd"):
            raise ConfigError(f"{where}.name: expected 'adam' or 'sgd', got {self.name!r}")


@dataclass(frozen=True)
class VerifyConfig:
    dtype: str
    margin_tol: float
    batch_size: int

    RANGES: ClassVar[dict[str, tuple[Any, Any, str]]] = {"margin_tol": (0, 1, "[]"), "batch_size": (1, 100000, "[]")}

    def check(self, where: str) -> None:
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"{where}.dtype: expected float32 or float64, got {self.dtype!r}")


#: schedule keys a scale may override per method or run (scales.<name>.schedule_overrides), with their ranges
SCHEDULE_OVERRIDE_KEYS = {"epochs": (1, 100000, False), "batches_per_epoch": (1, None, True),
                          "eps_ramp_epochs": (0, 100000, False), "lr_decay_every": (1, None, True),
                          "lr_decay_factor": (0, 1, True), "time_limit_min": (0, None, True)}
#: override keys that are real numbers (the others are integers); both lie in (lo, hi]
_REAL_OVERRIDE_KEYS = ("lr_decay_factor", "time_limit_min")


def check_schedule_override(o: Any, where: str) -> None:
    """One ``schedule_overrides`` entry: a mapping of some of :data:`SCHEDULE_OVERRIDE_KEYS` to numbers in range
    (``time_limit_min``: minutes of training wall time after which the trainer stops, keeping the last weights;
    ``lr_decay_factor``: replaces the dataset's ``optim.<dataset>.decay_factor`` for these runs)."""
    if not isinstance(o, dict) or not o:
        raise ConfigError(f"{where}: expected a non-empty mapping with some of {sorted(SCHEDULE_OVERRIDE_KEYS)}, "
                          f"got {o!r}")
    _check_keys(o, set(SCHEDULE_OVERRIDE_KEYS), where)
    for key, v in o.items():
        lo, hi, nullable = SCHEDULE_OVERRIDE_KEYS[key]
        _num(v, f"{where}.{key}", lo=lo, hi=hi, integer=key not in _REAL_OVERRIDE_KEYS, allow_none=nullable,
             bounds="(]" if key in _REAL_OVERRIDE_KEYS else "[]")


def parse_scales(raw: Any) -> dict[str, ScaleConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"scales: expected a mapping of scale name -> its settings, got {raw!r}")
    return {name: _dc(ScaleConfig, s, f"scales.{name}") for name, s in raw.items()}


def check_val_size(val_size: int, scales: dict[str, ScaleConfig], datasets: set[str]) -> None:
    """The validation split must leave at least one batch of every scale in each training set the grid uses."""
    for ds in sorted(datasets):
        n = TRAIN_SET_SIZES[ds]
        for name, sc in scales.items():
            if n - val_size < sc.batch_size:
                raise ConfigError(f"data.val_size: {val_size} leaves {max(0, n - val_size)} of the {n} {ds} training "
                                  f"images, less than one batch at scale {name} (scales.{name}.batch_size "
                                  f"{sc.batch_size}); expected at most {n - sc.batch_size}")
