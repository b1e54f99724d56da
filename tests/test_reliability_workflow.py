"""Issue 13 through the real workflow, on one tiny grid (MixTrain on MNIST_Small, a private copy of the MNIST files):

- a run started with k=6 trains with k=6 although a dry run (k=7) and a second invocation (k=8, refused by the lock)
  are started while it runs; the dry run writes nothing, the second changes no file (it may add its own configs);
- a test file replaced after the run reruns exactly the evaluation (no training), also when the new file is not
  newer than anything, and a touched one changes nothing; a truncated one stops the workflow naming the file;
- a failing `dvc exp run` leaves the committed reports in place; temp files of interrupted writes are no DVC output;
- a duplicated key in params.yaml stops the workflow with its line; a retrained run's log keeps the earlier attempt.

The fast, stage-level checks are in tests/test_reliability.py.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA_ROOT, needs_data
from tinyrepo import BIN, GRID, env, make_repo, run

SNAKEMAKE = str(BIN / "snakemake")
TABLES = [SNAKEMAKE, "tables", "--cores", "1", "--resources", "gpu=1"]
MIX = "mixtrain-MNIST_Small-eps0.1"
TEST_IMAGES = "mnist/t10k-images-idx3-ubyte.gz"


def _snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    base = repo / "results"
    return {str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(base.rglob("*")) if p.is_file()} if base.exists() else {}


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory):
    """The tiny grid with k=6, run while a dry run (k=7) and a second invocation (k=8) are started."""
    base = tmp_path_factory.mktemp("reliability")
    data = base / "data"
    (data / "mnist").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy2(DATA_ROOT / "mnist" / name, data / "mnist" / name)
    repo = make_repo(base / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(data_root=str(data), k=6, runs={MIX: GRID[MIX]}, tables={"table6": [MIX]})  # one run: fast
    params["scales"]["smoke"].update(test_images=4, val_limit=8, val_vra_images=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "k=6, private data"], repo)

    log = (base / "first.log").open("w")
    first = subprocess.Popen(TABLES, cwd=repo, env=env(), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        _wait(lambda: any((repo / ".snakemake" / "locks").glob("*.lock")) or first.poll() is not None, 120,
              "the first invocation to lock the working directory")
        os.killpg(first.pid, signal.SIGSTOP)  # hold it before any training starts (prepare runs first)
        try:
            before = _snapshot(repo)
            dry = run([SNAKEMAKE, "-n", "--cores", "1", "--config", "mixtrain_k=7"], repo, check=False)
            after_dry = _snapshot(repo)
            second = run([*TABLES, "--config", "mixtrain_k=8"], repo, check=False)
            after_second = _snapshot(repo)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        rc = first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    return {"repo": repo, "data": data, "rc": rc, "log": (base / "first.log").read_text(), "dry": dry,
            "second": second, "snapshots": (before, after_dry, after_second)}


@needs_data
def test_concurrent_invocation_and_dry_run_never_change_a_running_jobs_parameters(concurrent):
    repo = concurrent["repo"]
    assert concurrent["rc"] == 0, concurrent["log"][-3000:]
    before, after_dry, after_second = concurrent["snapshots"]
    assert after_dry == before, "a dry run wrote files"
    assert {k: after_second.get(k) for k in before} == before, "an invocation refused by the lock changed files"
    added = sorted(set(after_second) - set(before))  # at most new content-addressed configs, for its own parameters
    assert all(k.startswith("results/smoke/config/") for k in added), added
    second = concurrent["second"].stdout + concurrent["second"].stderr
    assert concurrent["second"].returncode != 0 and "LockException" in second, second[-2000:]
    info = json.loads((repo / f"results/smoke/train/{MIX}/train.json").read_text())
    assert info["method_params"]["k"] == 6 and info["history"][-1]["k_used"] == 6
    used = json.loads((repo / "results/smoke/config/train" / info["config_file"]).read_text())
    assert used["method_params"]["k"] == 6
    again = run(TABLES, repo)  # and a plain rerun agrees that everything is current
    assert "Nothing to be done" in again.stdout + again.stderr


@needs_data
def test_changed_data_reruns_exactly_what_reads_it_and_corrupt_data_stops_naming_it(concurrent):
    repo, data = concurrent["repo"], concurrent["data"]
    path = data / TEST_IMAGES
    original, st = path.read_bytes(), path.stat()
    model = repo / f"results/smoke/train/{MIX}/model.pt"
    trained = model.stat().st_mtime_ns
    metrics = repo / f"results/smoke/eval/{MIX}/metrics.json"
    recorded = lambda: json.loads(metrics.read_text())["provenance"]["data_sha256"]  # noqa: E731
    assert recorded()[TEST_IMAGES] == hashlib.sha256(original).hexdigest()
    raw = bytearray(gzip.decompress(original))
    raw[16:16 + 784] = bytes(255 - b for b in raw[16:16 + 784])  # image 0 inverted: valid, other pixels
    other = gzip.compress(bytes(raw), mtime=0)
    try:
        os.utime(path)  # touched, same bytes: nothing to redo
        dry = run([*TABLES, "-n"], repo)
        assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]

        path.write_bytes(other)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # not newer than anything: file times alone see nothing
        p = run(TABLES, repo)
        out = p.stdout + p.stderr
        assert "rule prepare:" in out and "rule evaluate:" in out and "rule train:" not in out, out[-3000:]
        assert recorded()[TEST_IMAGES] == hashlib.sha256(other).hexdigest() and model.stat().st_mtime_ns == trained
        assert (repo / "reports/smoke/tables/table6.md").is_file()

        path.write_bytes(original[: len(original) // 2])  # truncated
        p = run(TABLES, repo, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and str(path) in out and "Error in rule prepare" in out, out[-3000:]
        assert recorded()[TEST_IMAGES] == hashlib.sha256(other).hexdigest()  # nothing evaluated on it
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@needs_data
def test_failed_dvc_exp_run_keeps_committed_reports_and_temp_files_are_no_outputs(concurrent):
    repo = concurrent["repo"]
    dvc = str(BIN / "dvc")
    run([dvc, "commit", "-f"], repo)  # record the run's outputs in dvc.lock (nothing is run)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    reports = {str(p): p.read_bytes() for p in sorted((repo / "reports").rglob("*")) if p.is_file()}
    assert any(p.endswith("tables.md") for p in reports)

    try:
        p = run([dvc, "exp", "run", "-S", "k=not_a_number"], repo, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "k: expected an integer, got 'not_a_number'" in out, out[-3000:]
        assert {str(q): q.read_bytes() for q in sorted((repo / "reports").rglob("*")) if q.is_file()} == reports
    finally:
        run(["git", "checkout", "--", "params.yaml"], repo)  # what the README says to do

    ckpt = next((repo / f"results/smoke/train/{MIX}").glob("ckpt-*"))
    (ckpt / ".epoch_0002.pt.x1y2z3.tmp").write_bytes(b"\0" * 4096)  # as a kill during a checkpoint write leaves
    status = run([dvc, "status"], repo)
    assert "up to date" in status.stdout and "modified" not in status.stdout, status.stdout


@needs_data
def test_duplicate_key_in_params_stops_the_workflow_with_its_line(concurrent):
    repo = concurrent["repo"]
    text = (repo / "params.yaml").read_text()
    try:
        (repo / "params.yaml").write_text(text.replace("\nk: 6\n", "\nk: 6\nk: 2\n", 1))
        p = run([*TABLES, "-n"], repo, check=False)
        out = p.stdout + p.stderr
        line = text.splitlines().index("k: 6") + 2
        assert p.returncode != 0 and f"line {line}, column 1: duplicate key 'k'" in out, out[-2000:]
    finally:
        (repo / "params.yaml").write_text(text)


@needs_data
def test_a_rerun_training_appends_to_its_log(concurrent):
    repo = concurrent["repo"]
    log = repo / f"results/smoke/logs/train/{MIX}.log"
    first = log.read_text()
    assert first.count("=== attempt") == 1 and "epoch 1/1" in first
    run([SNAKEMAKE, f"results/smoke/train/{MIX}/model.pt", "--cores", "1", "--resources", "gpu=1",
         "--forcerun", "train"], repo)  # a rerun of a training resumes from its last epoch checkpoint
    again = log.read_text()
    assert again.startswith(first) and again.count("=== attempt") == 2 and "resumed from" in again
