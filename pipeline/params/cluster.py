"""params.yaml ``cluster``: what each rule's job asks a SLURM cluster for (workflow/profiles/slurm, docs/cluster.md).
Local runs ignore it and no output depends on it.  Torch-free."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.params.schema import _check_keys, _dc, _req

__all__ = ["JobResources", "ClusterConfig", "CLUSTER_RULES", "GRES_RE", "parse_cluster"]


@dataclass(frozen=True)
class JobResources:
    """What one job of a rule asks a cluster scheduler for (sbatch --time, --mem, --cpus-per-task)."""
    runtime_min: int
    mem_mb: int
    cpus: int


#: the rules that take per-rule cluster resources from params.yaml (cluster.<rule>)
CLUSTER_RULES = ("prepare", "train", "evaluate", "figure", "tables")
#: a SLURM GRES: name[:type][:count] (the form the SLURM executor plugin accepts for its gres resource)
GRES_RE = re.compile(r"[A-Za-z0-9_]+(:[A-Za-z0-9_.]+)?(:\d+)?")


@dataclass(frozen=True)
class ClusterConfig:
    """params.yaml ``cluster``: SLURM requests per rule and the GRES of one GPU training; local runs ignore it."""
    gpu_gres: str
    rules: dict[str, JobResources]


def parse_cluster(raw: Any) -> ClusterConfig:
    where = "cluster"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with gpu_gres and {list(CLUSTER_RULES)}, got {raw!r}")
    _check_keys(raw, {"gpu_gres", *CLUSTER_RULES}, where)
    gres = _req(raw, "gpu_gres", where)
    if not isinstance(gres, str) or not GRES_RE.fullmatch(gres):
        raise ConfigError(f"{where}.gpu_gres: expected a SLURM GRES such as 'gpu:1' or 'gpu:a100:1', got {gres!r}")
    rules = {}
    for rule in CLUSTER_RULES:
        res = _dc(JobResources, _req(raw, rule, where), f"{where}.{rule}")
        for name in ("runtime_min", "mem_mb", "cpus"):
            if getattr(res, name) < 1:
                raise ConfigError(f"{where}.{rule}.{name}: must be >= 1, got {getattr(res, name)}")
        rules[rule] = res
    return ClusterConfig(gres, rules)
