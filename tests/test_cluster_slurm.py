"""The SLURM profile for real: a one-node SLURM cluster on this machine (.ci/slurm-up.sh: Debian's slurmctld, slurmd
and munge, no slurmdbd) runs a tiny smoke grid through snakemake-executor-plugin-slurm with workflow/profiles/slurm.

Checked: the tables and per-sample results equal a local run's (timings aside); the training asks SLURM for exactly
one GPU, as GRES; a training killed mid-run with scancel is redone by the next run and nothing finished is redone;
a further run has nothing to do. Also: params.yaml `cluster` is validated with errors naming the key.

The node has no GPU. .ci/slurm-up.sh declares one fake GPU (gres.conf: gres/gpu on an empty file), so the training's
`--gres=gpu:1` is scheduled exactly as on a GPU node; the job itself trains on the CPU (`device: auto`).
Job status comes from squeue (no accounting database): `--slurm-status-command squeue`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, needs_data
from pipeline.config import params_from_dict
from pipeline.errors import ConfigError
from tinyrepo import BIN, GRID, env, make_repo, results, run

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
KILLED = "mixtrain-MNIST_Small-eps0.1"   # the training scancel kills mid-run
SLURM_ARGS = ["--profile", "workflow/profiles/slurm", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"]


def _timing(name: str) -> bool:
    """Columns and summary keys that measure time or memory, which differ between any two runs."""
    return any(word in name.lower() for word in ("time", "mem"))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("train"), r"cluster.train: missing"),
    (lambda c: c["train"].update(mem_mb="32G"), r"cluster.train.mem_mb: expected an integer, got '32G'"),
    (lambda c: c["evaluate"].update(runtime_min=0), r"cluster.evaluate.runtime_min: must be >= 1, got 0"),
    (lambda c: c["tables"].update(gpus=1), r"cluster.tables: unknown key\(s\) \['gpus'\]"),
    (lambda c: c.update(gpu_gres="'gpu:1'"), r"cluster.gpu_gres: expected a SLURM GRES such as 'gpu:1'"),
    (lambda c: c.update(gpu_gres=1), r"cluster.gpu_gres: expected a SLURM GRES .*got 1"),
    (lambda c: c.update(partition="gpu"), r"cluster: unknown key\(s\) \['partition'\]"),
])
def test_cluster_params_errors_name_the_key(mutate, message, tmp_path):
    raw = {**copy.deepcopy(RAW), "data_root": str(tmp_path)}  # any directory: only `cluster` is under test
    mutate(raw["cluster"])
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw, ROOT)


def test_cluster_params_reach_the_rules(tmp_path):
    raw = {**copy.deepcopy(RAW), "data_root": str(tmp_path)}
    p = params_from_dict(raw, ROOT)
    assert set(p.cluster.rules) == {"prepare", "train", "evaluate", "figure", "tables"}
    assert p.cluster.gpu_gres == RAW["cluster"]["gpu_gres"]
    assert p.cluster.rules["train"].mem_mb == RAW["cluster"]["train"]["mem_mb"]
    with pytest.raises(ConfigError, match=r"params.cluster: missing"):
        params_from_dict({k: v for k, v in raw.items() if k != "cluster"}, ROOT)


def _node_state() -> str:
    if not shutil.which("sinfo"):
        return ""
    p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return p.stdout.split("\n")[0].strip() if p.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm():
    """A running one-node SLURM cluster: the one already up, or one .ci/slurm-up.sh starts.

    Skipped (with the reason printed) only where a cluster cannot exist: not root, or Debian's packages cannot be
    installed. CI runs as root and starts SLURM in .ci/run, so there the test always runs; any other failure of
    slurm-up.sh fails the test."""
    if _node_state() in ("idle", "mixed", "allocated"):
        return
    if os.geteuid() != 0:
        reason = f"SLURM is not running and starting it needs root (uid {os.geteuid()}): run .ci/slurm-up.sh as root"
        print(reason)
        pytest.skip(reason)
    p = subprocess.run(["bash", str(ROOT / ".ci/slurm-up.sh")], capture_output=True, text=True, timeout=900)
    if p.returncode == 100:
        reason = f"apt-get could not install slurm-wlm/munge: {p.stderr.strip()[-500:]}"
        print(reason)
        pytest.skip(reason)
    assert p.returncode == 0, f".ci/slurm-up.sh failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert _node_state() in ("idle", "mixed", "allocated"), p.stdout


def _jobs(workdir: Path) -> dict[str, tuple[str, str]]:
    """SLURM jobs (finished ones too, for MinJobAge) submitted from ``workdir``: id -> (state, comment)."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    return {i: (state, comment) for i, state, comment, wd in rows if Path(wd) == workdir}


def _cancel_all(workdir: Path) -> None:
    live = [i for i, (state, _) in _jobs(workdir).items() if state in ("PENDING", "RUNNING", "CONFIGURING")]
    if live:
        subprocess.run(["scancel", *live], timeout=30)


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _outputs(repo: Path) -> dict[str, int]:
    """Every output file of prepare/train/evaluate -> its mtime (ns)."""
    base = repo / "results/smoke"
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns
            for sub in ("data", "train", "eval") for p in sorted((base / sub).rglob("*")) if p.is_file()}


def _table_cells(md: str) -> list[list[str]]:
    """The rows of a Markdown table without the timing and memory columns."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip())]
    if not rows:
        return []
    keep = [i for i, h in enumerate(rows[0]) if not _timing(h)]
    return [[row[i] for i in keep] for row in rows]


def _check_not_corrupt(repo: Path) -> None:
    import torch
    for p in (repo / "results/smoke").rglob("*.json"):
        json.loads(p.read_text())
    models = sorted((repo / "results/smoke/train").glob("*/model.pt"))
    assert [m.parent.name for m in models] == ["mixtrain-MNIST_Small-eps0.1", "natural-MNIST_Small"], models
    for m in models:
        assert torch.load(m, weights_only=True, map_location="cpu"), f"{m} is empty"


@needs_data
def test_slurm_run_matches_local_and_reruns_only_the_killed_job(slurm, tmp_path):
    repo = make_repo(tmp_path / "slurm")
    cmd = [str(BIN / "snakemake"), "tables", *SLURM_ARGS]
    log = (tmp_path / "slurm-run1.log").open("w")
    first = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # Kill the MixTrain training once it is running and its stage has started (it opened its log).
        stage_log = repo / f"results/smoke/logs/train/{KILLED}.log"
        job = _wait(lambda: next((i for i, (state, comment) in _jobs(repo).items()
                                  if state == "RUNNING" and comment.endswith(f"_{KILLED}") and stage_log.exists()),
                                 None), 240, f"the {KILLED} training to run")
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
        assert "TresPerNode=gres:gpu:1" in shown and "TresPerJob" not in shown, shown  # one GPU, asked as GRES
        subprocess.run(["scancel", job], check=True, timeout=30)
        assert first.wait(timeout=300) != 0, "snakemake succeeded although one of its jobs was cancelled"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
        _cancel_all(repo)
    first_log = (tmp_path / "slurm-run1.log").read_text()
    _wait(lambda: all(s in ("COMPLETED", "CANCELLED", "FAILED") for s, _ in _jobs(repo).values()), 120,
          "the first run's jobs to end")
    assert _jobs(repo)[job][0] == "CANCELLED", (_jobs(repo), first_log[-3000:])
    assert not (repo / f"results/smoke/train/{KILLED}/model.pt").exists(), "a killed training left its model"
    done = _outputs(repo)
    # snakemake let the natural training that ran beside the killed one finish before it stopped
    assert "results/smoke/train/natural-MNIST_Small/model.pt" in done and \
        any(re.fullmatch(r"results/smoke/data/mnist-train-[0-9a-f]{16}\.json", f) for f in done), first_log[-3000:]

    # The local run of the same grid goes on meanwhile (the SLURM run mostly waits between status checks).
    local = make_repo(tmp_path / "local")
    local_log = (tmp_path / "local.log").open("w")
    local_run = subprocess.Popen([str(BIN / "snakemake"), "tables", "--cores", "1", "--resources", "gpu=1"],
                                 cwd=local, env=env(), stdout=local_log, stderr=subprocess.STDOUT)
    try:
        run(cmd, repo, timeout=600)
        assert local_run.wait(timeout=600) == 0, (tmp_path / "local.log").read_text()[-3000:]
    finally:
        if local_run.poll() is None:
            local_run.kill()
            local_run.wait()
        local_log.close()
    assert _outputs(repo).items() >= done.items(), "a rerun rewrote outputs that were already complete"
    # a prepare job's last wildcard is the digest of its files' content (the manifest's name)
    submitted = sorted((re.sub(r"_[0-9a-f]{16}$", "", comment), state) for state, comment in _jobs(repo).values())
    assert submitted == sorted([
        ("rule_prepare_wildcards_mnist_train", "COMPLETED"), ("rule_prepare_wildcards_mnist_test", "COMPLETED"),
        ("rule_train_wildcards_natural-MNIST_Small", "COMPLETED"),
        (f"rule_train_wildcards_{KILLED}", "CANCELLED"), (f"rule_train_wildcards_{KILLED}", "COMPLETED"),
        *[(f"rule_evaluate_wildcards_{r}", "COMPLETED") for r in GRID], ("rule_tables", "COMPLETED")]), submitted
    _check_not_corrupt(repo)

    assert results(repo) == results(local)  # accuracy, VRA and every per-sample result
    for md in sorted((local / "reports/smoke/tables").glob("*.md")):
        assert _table_cells((repo / "reports/smoke/tables" / md.name).read_text()) == _table_cells(md.read_text()), \
            md.name
    strip = lambda m: {r: {k: v for k, v in row.items() if not _timing(k)} for r, row in m.items()}  # noqa: E731
    assert strip(json.loads((repo / "reports/smoke/metrics.json").read_text())) == \
        strip(json.loads((local / "reports/smoke/metrics.json").read_text()))

    again = run([*cmd, "--dry-run"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr
