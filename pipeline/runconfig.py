"""Per-run resolved configurations: one JSON-serialisable config per training and per evaluation of the grid.

Their :meth:`digest` (over every value that changes the outputs, not over where the data lives, which device runs
it or how batches are fed to it) keys checkpoints, so a changed parameter never resumes from a stale checkpoint.
Fields added later with a default (``mixed_precision``, ...) are hashed only when they differ from that default, so
adding one leaves every existing digest, and checkpoint, valid; a config file written before them still loads.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, Field, asdict, dataclass, fields
from typing import Any

from pipeline.config import EPS_FREE_METHODS, EXTERNAL, Params
from pipeline.params.evaluation import resolve_attack_params

__all__ = ["TrainConfig", "EvalConfig", "train_configs", "eval_configs"]


class _Digest:
    """Mixin: a stable hash over the fields that change outputs (not locations or devices)."""
    _NOT_HASHED: tuple[str, ...] = ()
    #: field -> value at which it is left out of the digest (fields added after digests existed)
    _HASHED_UNLESS: dict[str, Any] = {}
    #: field -> value at which it is left out of the config file, and so of the digest too (fields added after config
    #: files existed: the files, whose names the workflow keys on, stay byte-identical, so adding one reruns nothing)
    _WRITTEN_UNLESS: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {k: v for k, v in d.items() if not (k in self._WRITTEN_UNLESS and v == self._WRITTEN_UNLESS[k])}

    def digest(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in self._NOT_HASHED
             and not (k in self._HASHED_UNLESS and v == self._HASHED_UNLESS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), "digest": self.digest()}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str):
        d = json.loads(text)
        d.pop("digest", None)
        # a field with a default may be missing (a file written before it existed)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or not _has_default(f)})  # type: ignore


def _has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


@dataclass(frozen=True)
class TrainConfig(_Digest):
    train_id: str
    scale: str
    method: str
    method_params: dict[str, Any]
    model: str
    dataset: str
    eps: float
    eps_start: float
    seed: int
    val_size: int
    split_seed: int
    schedule: dict[str, Any]
    optim: dict[str, Any]
    vra_domains: list[str]        # the model's fixed verification domains (per-epoch validation VRA)
    verify: dict[str, Any]
    memory_cap_gib: float | None  # the training process is stopped and reported "out of memory" above it
    data_root: str
    device: str
    threads: int
    pin_memory: bool = True         # page-locked host batches on CUDA (ignored on CPU); does not change results
    prefetch_batches: int = 0       # batches made ahead on a background thread (0: synchronous); same results
    mixed_precision: bool = False   # bfloat16 autocast for natural forwards and PGD/WRM generation, never bounds
    #: the training bounds' fused kernels compiled (pipeline.bounds.kernels): the same bounds up to float summation
    #: order, so hashed when on (a compiled run never resumes an eager one's checkpoint, nor the reverse)
    compile_bounds: bool = False
    #: the training files (path under data_root -> sha256) this training must read; the stage checks them first.
    #: Hashed: changed training data never resumes from a checkpoint of other data.
    data_sha256: dict[str, str] | None = None
    _NOT_HASHED = ("data_root", "device", "threads", "pin_memory", "prefetch_batches")
    _HASHED_UNLESS = {"mixed_precision": False, "data_sha256": None}
    _WRITTEN_UNLESS = {"compile_bounds": False}


@dataclass(frozen=True)
class EvalConfig(_Digest):
    run_id: str
    train_id: str
    scale: str
    method: str
    model: str
    dataset: str
    eps: float
    eps_text: str
    test_images: int
    vra_domains: list[str]
    verify: dict[str, Any]
    attacks: dict[str, dict[str, Any]]   # attack -> constructor arguments (resolved for the dataset and scale)
    attack_seed: int
    attack_chunk: int
    table1: dict[str, Any] | None        # {budget_passes, images, attacks}: a Table I row (equal-budget comparison)
    checkpoint: dict[str, Any] | None
    data_root: str
    device: str
    threads: int
    mixed_precision: bool = False   # bfloat16 autocast inside the attacks' search only (not clean/re-check, not VRA)
    data_sha256: dict[str, str] | None = None  # the test files (path under data_root -> sha256) it must read
    _NOT_HASHED = ("data_root", "device", "threads")
    _HASHED_UNLESS = {"mixed_precision": False, "data_sha256": None}


def train_configs(p: Params, data: dict[str, dict[str, str]] | None = None) -> dict[str, TrainConfig]:
    """One config per distinct training of the grid (ε-free methods share one model across ε rows); ``data``:
    ``"<dataset>-<split>"`` -> that split's file hashes, carried into the configs (``data_sha256``)."""
    out: dict[str, TrainConfig] = {}
    base = asdict(p.scale_config)
    # a reporting budget (Table V), the grid's shape, and the memory cap (a field of its own, resolved in Params)
    for key in ("time_budget_s", "runs", "schedule_overrides", "memory_cap_gib"):
        base.pop(key)
    overrides = p.scale_config.schedule_overrides or {}
    for run in p.runs.values():
        if run.method == EXTERNAL:
            continue
        # the scale's schedule, then the run's method's overrides, then the run's own (time_limit_min and
        # lr_decay_factor are carried only when set, so configs without them keep their digests)
        schedule = {**base, **overrides.get(run.method, {}), **overrides.get(run.run_id, {})}
        for optional in ("time_limit_min", "lr_decay_factor"):
            if schedule.get(optional, 0) is None:
                schedule.pop(optional)
        ds = run.dataset
        eps = 0.0 if run.method in EPS_FREE_METHODS else run.eps
        out[run.train_id] = TrainConfig(
            train_id=run.train_id, scale=p.scale, method=run.method, method_params=p.method_params(run),
            model=run.model, dataset=ds, eps=eps, eps_start=min(p.eps_start[ds], eps), seed=p.seed,
            val_size=p.val_size, split_seed=p.split_seed, schedule=schedule, optim=asdict(p.optim[ds]),
            vra_domains=list(p.models[run.model].vra_domains), verify=asdict(p.verify),
            memory_cap_gib=p.memory_cap_gib, data_root=str(p.data_root), device=p.device, threads=p.threads,
            pin_memory=p.pin_memory, prefetch_batches=p.prefetch_batches, mixed_precision=p.mixed_precision,
            compile_bounds=p.compile_bounds,
            data_sha256=(data or {}).get(f"{ds}-train"))
    return out


def eval_configs(p: Params, data: dict[str, dict[str, str]] | None = None) -> dict[str, EvalConfig]:
    s = p.scale_config
    return {rid: EvalConfig(
        run_id=rid, train_id=run.train_id, scale=p.scale, method=run.method, model=run.model, dataset=run.dataset,
        eps=run.eps, eps_text=run.eps_text,
        test_images=s.test_images_large if p.models[run.model].large else s.test_images,
        vra_domains=list(p.models[run.model].vra_domains), verify=asdict(p.verify),
        attacks=resolve_attack_params(p.attacks, s.attack_overrides, run.dataset), attack_seed=p.attacks.seed,
        attack_chunk=p.attacks.chunk,
        table1={**asdict(p.table1), "max_runs": s.table1_max_runs,
                "attacks": resolve_attack_params(p.attacks, s.table1_attack_overrides, run.dataset)}
        if rid in p.tables.get("table1", []) else None,
        checkpoint=run.checkpoint, data_root=str(p.data_root),
        device=p.device, threads=p.threads, mixed_precision=p.mixed_precision,
        data_sha256=(data or {}).get(f"{run.dataset}-test")) for rid, run in p.runs.items()}
