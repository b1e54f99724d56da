"""A throwaway copy of this repository with a tiny smoke grid, for tests that run the whole workflow (SLURM, DVC).

The copy holds the working tree's tracked and untracked-but-not-ignored files (no .venv, results/, reports/ or
dvc.lock), a params.yaml restricted to a few cheap runs, and a git repository with one commit.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import DATA_ROOT, ROOT

BIN = Path(sys.executable).parent
#: two cheap runs: natural training (shared across ε) and MixTrain, both on MNIST_Small
GRID = {
    "natural-MNIST_Small-eps0.1": {"method": "natural", "model": "MNIST_Small", "eps": 0.1},
    "mixtrain-MNIST_Small-eps0.1": {"method": "mixtrain", "model": "MNIST_Small", "eps": 0.1},
}
TABLES = {"table3": list(GRID), "table6": ["mixtrain-MNIST_Small-eps0.1"]}
#: small SLURM requests so a 2-core test node runs two jobs at once
CLUSTER = {"gpu_gres": "gpu:1", **{rule: {"runtime_min": 10, "mem_mb": 1000, "cpus": 1}
                                   for rule in ("prepare", "train", "evaluate", "figure", "tables")}}
ENV = {"DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **ENV}


def run(cmd: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def make_repo(dst: Path) -> Path:
    """Copy the working tree into ``dst`` with the tiny grid, and commit it."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and not f.startswith(("reports/", "results/", "dvc.lock")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(data_root=str(DATA_ROOT), scale="smoke", runs=GRID, tables=TABLES, cluster=CLUSTER)
    params.pop("figures", None)  # the figures' runs are not in the tiny grid
    params["methods"]["mixtrain"]["domain"] = "interval"
    params["models"] = {"MNIST_Small": {"vra_domains": ["interval"], "large": False}}
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "tiny grid"], dst)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results(repo: Path) -> dict[str, dict]:
    """Per run: accuracy, VRA and the per-sample results; the parts of the outputs that do not depend on timing."""
    out = {}
    for run_id in GRID:
        d = repo / "results/smoke/eval" / run_id
        m = json.loads((d / "metrics.json").read_text())
        out[run_id] = {"acc": m["acc"], "vra": m["vra"], "samples": json.loads((d / "samples.json").read_text())}
    return out
