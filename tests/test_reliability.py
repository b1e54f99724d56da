"""Issue 13, the fast checks: a result is computed from the parameters and data it records, whatever the user does.

Content-addressed per-run configs (a file is never rewritten with other content; new parameters or data give new
files, newer than the outputs), data files checked against the sha256 in the run's config before train/evaluate run, strict params.yaml reading (duplicate keys,
line/column of syntax errors), external checkpoints confined to the repository with a clear error for anything that
is not a state_dict (and `stage` for cascades), stale temp files removed, a full disk named.  The workflow-level
checks (a concurrent invocation, a dry run, a failing `dvc exp run`, changed data files) are in
tests/test_reliability_workflow.py.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DATA_ROOT, ROOT, needs_data
from pipeline.config import load_params, params_from_dict
from pipeline.errors import CheckpointError, ConfigError, DataError, DiskFullError
from pipeline.models import build_model, load_external
from pipeline.train import implemented_methods
from pipeline.workflow_support import plan_configs, sync_configs, write_config

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _load(mutate, root=ROOT):
    raw = copy.deepcopy(RAW)
    raw["data_root"] = str(DATA_ROOT if DATA_ROOT.is_dir() else ROOT)
    mutate(raw)
    return params_from_dict(raw, root)


# ---- (1) per-run configs: planned in memory, content-addressed, written only by a job -------------------------------

def test_planning_writes_nothing_and_a_config_name_carries_its_content_digest(tmp_path):
    plan = plan_configs(_load(lambda r: None, root=tmp_path), implemented_methods())
    assert not (tmp_path / "results").exists()
    k5 = plan_configs(_load(lambda r: r.update(k=5), root=tmp_path), implemented_methods())
    rid = "mixtrain-MNIST_Small-eps0.1"
    assert plan.train[rid] != k5.train[rid]  # other parameters: another file, never the same file rewritten
    assert plan.train["natural-MNIST_Small"] == k5.train["natural-MNIST_Small"]  # untouched by k
    assert json.loads(k5.text(k5.train[rid]))["method_params"]["k"] == 5
    path = tmp_path / plan.train[rid]
    with pytest.raises(ConfigError, match="must end in the sha256 of its content"):
        write_config(path, plan.text(plan.train[rid]).replace('"k": 1', '"k": 9'))
    assert not path.exists()
    data = {"mnist-train": {"mnist/train-images-idx3-ubyte.gz": "a" * 64}}
    other = plan_configs(_load(lambda r: None, root=tmp_path), implemented_methods(), data)
    assert other.train[rid] != plan.train[rid] and other.eval[f"{rid}"] == plan.eval[rid]  # train data, trainings


def test_sync_writes_missing_configs_keeps_existing_ones_and_reruns_a_return_to_earlier_parameters(tmp_path):
    rid = "mixtrain-MNIST_Small-eps0.1"
    k1 = plan_configs(_load(lambda r: None, root=tmp_path), implemented_methods())
    assert set(sync_configs(k1, tmp_path)) == set(k1.files)
    assert sync_configs(k1, tmp_path) == []  # nothing changed: nothing written
    out = tmp_path / f"results/smoke/train/{rid}"
    out.mkdir(parents=True)
    (out / "train.json").write_text(json.dumps({"config_file": Path(k1.train[rid]).name}))
    k3 = plan_configs(_load(lambda r: r.update(k=3), root=tmp_path), implemented_methods())
    assert k3.train[rid] in sync_configs(k3, tmp_path)  # new parameters: a new file (newer than the outputs)
    assert (tmp_path / k1.train[rid]).read_text() == k1.text(k1.train[rid])  # the earlier file is untouched
    assert sync_configs(k1, tmp_path) == []  # the outputs were made from k=1: nothing to redo
    (out / "train.json").write_text(json.dumps({"config_file": Path(k3.train[rid]).name}))
    assert sync_configs(k1, tmp_path) == [k1.train[rid]]  # back to k=1 after a k=3 training: k=1's file is renewed
    assert (tmp_path / k1.train[rid]).read_text() == k1.text(k1.train[rid])


# ---- (4) validation gaps: every value named, before any job -------------------------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["scales"]["smoke"].update(train_limit=0), r"scales.smoke.train_limit: 0 out of range \[1, "),
    (lambda r: r["scales"]["smoke"].update(train_limit=4), r"scales.smoke.train_limit: 4 is smaller than one batch"),
    (lambda r: r["data"].update(val_size=60000), r"data.val_size: 60000 leaves 0 of the 50000 cifar10|"
                                                 r"data.val_size: 60000 leaves 0 of the 60000 mnist"),
    (lambda r: r["data"].update(val_size=49995), r"data.val_size: 49995 leaves 5 of the 50000 cifar10 training "
                                                 r"images, less than one batch at scale"),
    (lambda r: r["optim"]["mnist"].update(decay_factor=1e6), r"optim.mnist.decay_factor: 1000000.0 out of range \(0, 1\]"),
    (lambda r: r["optim"]["cifar10"].update(lr=0), r"optim.cifar10.lr: 0 out of range \(0, 10\]"),
    (lambda r: r["optim"]["cifar10"].update(momentum=1.5), r"optim.cifar10.momentum: 1.5 out of range \[0, 1\)"),
    (lambda r: r["optim"]["cifar10"].update(name="rmsprop"), r"optim.cifar10.name: expected 'adam' or 'sgd'"),
    (lambda r: r["optim"].update(imagenet=r["optim"]["mnist"]), r"optim: unknown key\(s\) \['imagenet'\]"),
    (lambda r: r["tables"].update(table9=["natural-MNIST_Small-eps0.1"]), r"tables: unknown table\(s\) \['table9'\] "
                                                                          r"\(tables.table9\)"),
    (lambda r: r["scales"]["cpu"].update(batch_size=0), r"scales.cpu.batch_size: 0 out of range"),
    (lambda r: r["scales"]["smoke"].update(time_budget_s=0), r"scales.smoke.time_budget_s: 0 out of range \(0, "),
    (lambda r: r["scales"]["smoke"].update(val_vra_images=51), r"scales.smoke.val_vra_images: 51 exceeds val_limit"),
    (lambda r: r["verify"].update(batch_size=0), r"verify.batch_size: 0 out of range \[1, "),
    (lambda r: r["verify"].update(margin_tol=5), r"verify.margin_tol: 5 out of range \[0, 1\]"),
    (lambda r: r.update(threads=10**6), r"threads: 1000000 out of range"),
    (lambda r: r.update(seed=-1), r"seed: -1 out of range"),
])
def test_gaps_in_validation_are_closed_naming_the_key(mutate, message):
    with pytest.raises(ConfigError, match=message):
        _load(mutate)


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("\nk: 1 ", "\nk: 1\nk: 7 ", 1)
    assert text.count("\nk: ") == 2
    (tmp_path / "params.yaml").write_text(text)
    line = text.splitlines().index("k: 1") + 2
    with pytest.raises(ConfigError, match=rf"line {line}, column 1: duplicate key 'k' \(first given at line "
                                          rf"{line - 1}, column 1\)"):
        load_params(tmp_path / "params.yaml")


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    (tmp_path / "params.yaml").write_text("scale: smoke\nseed: [0, 1\nk: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line 3, column 2: .*expected ',' or ']'"):
        load_params(tmp_path / "params.yaml")


# ---- (6) external checkpoints ---------------------------------------------------------------------------------

def _external(path, stage=None, rid=None):
    ck = {"path": path, "mean": [0.0], "std": [1.0], **({} if stage is None else {"stage": stage})}
    stem = Path(path).stem
    rid = rid or f"external-{stem}{'' if stage is None else f'-stage{stage}'}-MNIST_Small-eps0.1"
    return lambda r: r["runs"].update({rid: {"method": "external", "model": "MNIST_Small", "eps": 0.1,
                                             "checkpoint": ck}})


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../x.pth", "checkpoints/../../outside.pth"])
def test_external_checkpoint_outside_the_repository_is_refused(path):
    with pytest.raises(ConfigError, match=r"checkpoint.path: .* outside the repository .*external_checkpoint_dirs"):
        _load(_external(path))


def test_external_checkpoint_symlink_out_of_the_repository_is_refused(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "pub.pth").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="outside the repository"):
        _load(_external("ck/pub.pth"), root=tmp_path)


def test_external_checkpoint_allow_list_and_stage_in_the_run_id(tmp_path):
    shared = tmp_path / "zoo"
    shared.mkdir()
    ok = _load(lambda r: (r.update(external_checkpoint_dirs=[str(shared)]),
                          _external(str(shared / "wong.pth"), stage=1)(r)))
    run = ok.runs["external-wong-stage1-MNIST_Small-eps0.1"]
    assert run.checkpoint == {"path": str(shared / "wong.pth"), "mean": [0.0], "std": [1.0], "stage": 1}
    with pytest.raises(ConfigError, match=r"expected 'external-wong-stage1-MNIST_Small-eps0.1'"):
        _load(lambda r: (r.update(external_checkpoint_dirs=[str(shared)]),
                         _external(str(shared / "wong.pth"), stage=1, rid="external-wong-MNIST_Small-eps0.1")(r)))
    with pytest.raises(ConfigError, match=r"external_checkpoint_dirs: .* is not a directory"):
        _load(lambda r: r.update(external_checkpoint_dirs=[str(tmp_path / "nope")]))


def test_non_checkpoint_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint .*torch.save"):
        load_external("MNIST_Small", path, [0.0], [1.0])
    torch.save({"epoch": 3, "err": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"expected a state_dict .* found a dict with keys \{'epoch': int, "
                                              r"'err': float\}"):
        load_external("MNIST_Small", tmp_path / "meta.pth", [0.0], [1.0])


def test_cascade_checkpoint_needs_a_stage_and_loads_the_chosen_one(tmp_path):
    torch.manual_seed(0)
    stages = [build_model("MNIST_Small", [0.0], [1.0]).net for _ in range(2)]
    path = tmp_path / "wong_cascade.pth"
    torch.save({"state_dict": [s.state_dict() for s in stages], "err": 0.05, "epoch": 19}, path)
    with pytest.raises(CheckpointError, match=r"cascade of 2 models \(a dict with keys \{'state_dict': list of 2, "
                                              r"'err': float, 'epoch': int\}\); pick one with checkpoint.stage"):
        load_external("MNIST_Small", path, [0.0], [1.0])
    with pytest.raises(CheckpointError, match=r"checkpoint.stage 2 out of range; the cascade has 2 models"):
        load_external("MNIST_Small", path, [0.0], [1.0], stage=2)
    model = load_external("MNIST_Small", path, [0.0], [1.0], stage=1)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x), stages[1](x))
    torch.save({"state_dict": stages[0].state_dict()}, tmp_path / "wrapped.pth")
    torch.testing.assert_close(load_external("MNIST_Small", tmp_path / "wrapped.pth", [0.0], [1.0])(x), stages[0](x))
    with pytest.raises(CheckpointError, match="holds one model, not a cascade; remove checkpoint.stage"):
        load_external("MNIST_Small", tmp_path / "wrapped.pth", [0.0], [1.0], stage=0)


# ---- (5) temp files, (7) full disk ----------------------------------------------------------------------------

def test_full_disk_is_named_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import pipeline.utils.io as io
    made = []

    def full_device(prefix, suffix, dir):  # a temp file on /dev/full: every write fails with ENOSPC
        made.append(Path(dir) / f"{prefix}x{suffix}")
        made[-1].write_text("")
        return os.open("/dev/full", os.O_WRONLY), str(made[-1])

    monkeypatch.setattr(io.tempfile, "mkstemp", full_device)
    target = tmp_path / "ckpt" / "epoch_0001.pt"
    with pytest.raises(DiskFullError, match=rf"no space left on the device while writing {target} .*MiB free"):
        io.atomic_save_torch(target, {"w": torch.zeros(100000)})
    with pytest.raises(DiskFullError, match="train.json"):
        io.atomic_write_json(tmp_path / "train.json", {"x": "y" * 100000})
    assert not target.exists() and not any(p.exists() for p in made)


@needs_data
def test_training_removes_stale_temp_files_and_checks_and_records_its_data(tmp_path):
    from test_train_resume import CFG
    from pipeline.data.manifest import file_hashes
    hashes = file_hashes(DATA_ROOT, "mnist", "train")
    cfg = replace(CFG, train_id="tmp-clean", schedule={**CFG.schedule, "epochs": 1, "batches_per_epoch": 1,
                                                       "train_limit": 200, "val_limit": 8, "val_vra_images": 0},
                  data_sha256={**hashes, "mnist/train-labels-idx1-ubyte.gz": "0" * 64})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def train(c):
        (tmp_path / "cfg.json").write_text(c.to_json())
        return subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--config", str(tmp_path / "cfg.json"),
                               "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    p = train(cfg)
    assert p.returncode != 0 and "DataError" in p.stderr, p.stderr
    assert "train-labels-idx1-ubyte.gz: its content differs from what this job was planned with" in p.stderr
    assert not out.exists()
    cfg = replace(cfg, data_sha256=hashes)
    stale = [out / ".model.pt.abc123.tmp", out / f"ckpt-{cfg.digest()}" / ".epoch_0001.pt.k9x.tmp"]
    for s in stale:
        s.parent.mkdir(parents=True, exist_ok=True)
        s.write_bytes(b"\0" * 1024)
    p = train(cfg)
    assert p.returncode == 0, p.stderr
    assert not any(s.exists() for s in stale) and "left by an interrupted write" in p.stderr
    info = json.loads((out / "train.json").read_text())
    assert info["provenance"]["data_sha256"] == hashes and info["config_file"] == "cfg.json"


def test_data_manifest_is_named_by_content_and_reuses_hashes_while_files_are_unchanged(tmp_path, monkeypatch):
    import pipeline.data.manifest as mf
    from pipeline.stages import prepare
    root, data_dir = tmp_path / "data", tmp_path / "results"
    (root / "mnist").mkdir(parents=True)
    for i, rel in enumerate(mf.split_files("mnist", "test")):
        (root / rel).write_bytes(bytes([i]) * 100)
    first = mf.current_hashes(root, "mnist", "test", data_dir)
    path = mf.manifest_path(data_dir, "mnist", "test", first)
    files = {rel: {"sha256": sha, "stamp": mf.file_stamps(root, "mnist", "test")[rel]} for rel, sha in first.items()}
    data_dir.mkdir()
    path.write_text(json.dumps({"dataset": "mnist", "split": "test", "files": files}))
    hashed = []
    monkeypatch.setattr(mf, "sha256_file", lambda p: hashed.append(p) or "0" * 64)
    assert mf.current_hashes(root, "mnist", "test", data_dir) == first and not hashed  # stamps match: no reading
    os.utime(root / "mnist/t10k-images-idx3-ubyte.gz")  # touched: hashed again (same bytes, same manifest name)
    monkeypatch.undo()
    assert mf.manifest_path(data_dir, "mnist", "test", mf.current_hashes(root, "mnist", "test", data_dir)) == path
    (root / "mnist/t10k-images-idx3-ubyte.gz").write_bytes(b"other")
    changed = mf.current_hashes(root, "mnist", "test", data_dir)
    assert mf.manifest_path(data_dir, "mnist", "test", changed) != path
    with pytest.raises(DataError, match=r"mnist test files under .* changed after the workflow was planned"):
        prepare.main(["--dataset", "mnist", "--split", "test", "--data-root", str(root), "--out", str(path)])
    (root / "mnist/t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"mnist test file missing: .*t10k-labels-idx1-ubyte.gz"):
        mf.current_hashes(root, "mnist", "test", data_dir)


@needs_data
def test_evaluate_refuses_changed_test_data_before_any_work(tmp_path):
    from pipeline.data.manifest import file_hashes
    from pipeline.stages import evaluate
    from test_evaluate import _cfg
    planned = {**file_hashes(DATA_ROOT, "mnist", "test"), "mnist/t10k-images-idx3-ubyte.gz": "f" * 64}
    (tmp_path / "cfg.json").write_text(_cfg(data_sha256=planned).to_json())
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: its content differs from what this job was "
                                        r"planned with .*rerun it, and it reruns exactly what reads this file"):
        evaluate.main(["--config", str(tmp_path / "cfg.json"), "--model", str(tmp_path / "missing.pt"),
                       "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ---- (7) what the README tells a user ------------------------------------------------------------------------------

def test_readme_says_what_to_do_after_a_kill_and_what_resume_determinism_needs():
    readme = (ROOT / "README.md").read_text()
    assert "snakemake --unlock" in readme and "LockException" in readme
    assert "appended" in readme and "results/<scale>/logs/" in readme
    assert "No space left" in readme or "no space left" in readme
    assert "thread count" in readme and "bit-identical" in readme
    assert "git checkout -- params.yaml" in readme  # after a failed `dvc exp run`
    assert "stage:" in readme and "external_checkpoint_dirs" in readme
