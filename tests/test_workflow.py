"""The workflow end to end on a tiny grid: Snakemake runs, a second run is a no-op, and DVC is a thin layer over it
(`dvc exp run -S k=...` retrains only the runs that follow k; Snakemake afterwards has nothing to do)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DATA_ROOT, ROOT, needs_data

BIN = Path(sys.executable).parent
GRID = {
    "natural-MNIST_Small-eps0.1": {"method": "natural", "model": "MNIST_Small", "eps": 0.1},
    "mixtrain-MNIST_Small-eps0.1": {"method": "mixtrain", "model": "MNIST_Small", "eps": 0.1},
    "mixtrain-k2-MNIST_Small-eps0.1": {"method": "mixtrain", "model": "MNIST_Small", "eps": 0.1,
                                       "overrides": {"k": 2}},
    "madry-MNIST_Small-eps0.1": {"method": "madry", "model": "MNIST_Small", "eps": 0.1},
}


#: two jobs at a time, one thread each (the tiny grid's jobs are mostly start-up: the suite's time)
TABLES = [str(BIN / "snakemake"), "tables", "--cores", "2", "--resources", "gpu=2"]


def _run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and not f.startswith(("reports/", "dvc.lock")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(data_root=str(DATA_ROOT), scale="smoke", runs=GRID,
                  tables={"table3": list(GRID), "table7": ["mixtrain-k2-MNIST_Small-eps0.1"]})
    params["methods"]["mixtrain"]["domain"] = "interval"
    params["models"] = {"MNIST_Small": {"vra_domains": ["interval"], "large": False}}
    params.pop("figures", None)  # the figures' runs are not in the tiny grid
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "commit", "-qm", "init"], dst)
    return dst


def _mtimes(repo):
    return {p.parent.name: p.stat().st_mtime_ns for p in (repo / "results/smoke/train").glob("*/model.pt")}


@needs_data
def test_snakemake_then_noop_then_dvc_experiment(repo):
    planned = _run([str(BIN / "snakemake"), "-n", "--cores", "1"], repo)  # no target: the default is the tables
    assert "tables" in planned and "Nothing to be done" not in planned
    out = _run(TABLES, repo)
    table = (repo / "reports/smoke/tables/table3.md").read_text()
    assert "SMOKE SCALE" in table and "not yet implemented" not in table and "Madry" in table
    before = _mtimes(repo)
    assert set(before) == {"natural-MNIST_Small", "mixtrain-MNIST_Small-eps0.1", "mixtrain-k2-MNIST_Small-eps0.1",
                           "madry-MNIST_Small-eps0.1"}
    out = _run(TABLES, repo)
    assert "Nothing to be done" in out

    _run([str(BIN / "dvc"), "repro"], repo)  # nothing stale: DVC records the state, Snakemake reruns no training
    assert _mtimes(repo) == before
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)

    _run([str(BIN / "dvc"), "exp", "run", "-S", "k=3"], repo)
    after = _mtimes(repo)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["mixtrain-MNIST_Small-eps0.1"], changed
    train = (repo / "results/smoke/train/mixtrain-MNIST_Small-eps0.1/train.json").read_text()
    assert '"k": 3' in train

    out = _run(TABLES, repo)
    assert "Nothing to be done" in out
    shown = _run([str(BIN / "dvc"), "exp", "show", "--csv"], repo)
    header = shown.splitlines()[0].split(",")
    assert "k" in header and "mixtrain-MNIST_Small-eps0.1.acc" in header, header
    ks = {line.split(",")[header.index("k")] for line in shown.splitlines()[1:]}
    assert {"1", "3"} <= ks, ks  # the baseline commit and the experiment
    diff = _run([str(BIN / "dvc"), "params", "diff", "HEAD"], repo)
    assert "k" in diff and "1" in diff and "3" in diff
    _run([str(BIN / "dvc"), "metrics", "diff", "HEAD"], repo)  # compares commits without error


@needs_data
def test_literal_snakemake_ordering_pitfall_is_documented(repo):
    readme = (ROOT / "README.md").read_text()
    assert "snakemake tables --cores 1 --resources gpu=1" in readme
    assert "--resources" in readme and "swallows" in readme
