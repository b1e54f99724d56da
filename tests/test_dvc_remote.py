"""A DVC remote carries trained models and metrics between clones (docs/cluster.md): `dvc repro` and `dvc push` in
one clone, `dvc pull` in a fresh clone, and the fresh clone has the same models (by hash), renders the same tables
from the pulled metrics without retraining, and stays incremental: an experiment retrains only the runs it reaches."""
from __future__ import annotations

import json

from conftest import needs_data
from tinyrepo import BIN, GRID, make_repo, run, sha256

SNAKEMAKE = [str(BIN / "snakemake"), "tables", "--cores", "2", "--resources", "gpu=2"]  # two jobs at a time
DVC = str(BIN / "dvc")


def _models(repo):
    return {p.parent.name: (sha256(p), p.stat().st_mtime_ns)
            for p in sorted((repo / "results/smoke/train").glob("*/model.pt"))}


@needs_data
def test_push_then_pull_into_a_fresh_clone_reproduces_without_retraining(tmp_path):
    remote = tmp_path / "remote"
    first = make_repo(tmp_path / "first")
    run([DVC, "remote", "add", "-d", "store", str(remote)], first)
    assert run([DVC, "remote", "list"], first).stdout.split()[:3] == ["store", str(remote), "(default)"]
    assert "analytics = false" in (first / ".dvc/config").read_text()
    run([DVC, "repro"], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "trained"], first)
    pushed = run([DVC, "push"], first)
    assert "pushed" in pushed.stdout, pushed.stdout
    trained = _models(first)
    assert set(trained) == {"natural-MNIST_Small", "mixtrain-MNIST_Small-eps0.1"}

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    assert not (clone / "results").exists()
    run([DVC, "pull"], clone)
    assert "up to date" in run([DVC, "status"], clone).stdout
    pulled = _models(clone)
    assert {k: h for k, (h, _) in pulled.items()} == {k: h for k, (h, _) in trained.items()}
    for run_id in GRID:
        for name in ("metrics.json", "samples.json"):
            rel = f"results/smoke/eval/{run_id}/{name}"
            assert sha256(clone / rel) == sha256(first / rel), rel

    # DVC does not keep file times: align them once, then Snakemake agrees that nothing is stale.
    run([*SNAKEMAKE, "--touch"], clone)
    touched = _models(clone)
    assert {k: h for k, (h, _) in touched.items()} == {k: h for k, (h, _) in pulled.items()}
    dry = run([*SNAKEMAKE, "--dry-run"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    # The tables alone, rendered again from the pulled metrics, equal the ones committed in the first clone.
    run([*SNAKEMAKE, "--forcerun", "tables"], clone)
    for md in sorted((first / "reports/smoke/tables").glob("*.md")):
        assert (clone / "reports/smoke/tables" / md.name).read_text() == md.read_text(), md.name
    assert json.loads((clone / "reports/smoke/metrics.json").read_text()) == \
        json.loads((first / "reports/smoke/metrics.json").read_text())
    assert _models(clone) == touched  # nothing retrained: same bytes, same file times

    # Still incremental after the pull: k reaches only the MixTrain run that follows the top-level k.
    run([DVC, "exp", "run", "-S", "k=3"], clone)
    after = _models(clone)
    assert after["natural-MNIST_Small"] == touched["natural-MNIST_Small"]
    assert after["mixtrain-MNIST_Small-eps0.1"][1] != touched["mixtrain-MNIST_Small-eps0.1"][1]
    assert '"k": 3' in (clone / "results/smoke/train/mixtrain-MNIST_Small-eps0.1/train.json").read_text()
