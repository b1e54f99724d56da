"""Training checkpoints: atomic per-epoch writes, resume after SIGKILL, stale checkpoints never resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import torch

from conftest import DATA_ROOT, ROOT, needs_data
from pipeline.runconfig import TrainConfig

SCHEDULE = {"epochs": 4, "batch_size": 50, "train_limit": 5000, "batches_per_epoch": 100, "val_limit": 100,
            "test_images": 16, "test_images_large": 4, "eps_ramp_epochs": 1, "lr_decay_every": 1,
            "augment_cifar": False, "val_vra_images": 4}
CFG = TrainConfig(
    train_id="mixtrain-resume", scale="test", method="mixtrain",
    method_params={"domain": "interval", "k": 5, "alpha": "adaptive",
                   "alpha_rule": {"kind": "staircase", "start": 0.3, "step": 0.1, "every": 1}},
    model="MNIST_Small", dataset="mnist", eps=0.1, eps_start=0.01, seed=3, val_size=5000, split_seed=0,
    schedule=SCHEDULE, optim={"name": "adam", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
                              "decay_factor": 0.6},
    vra_domains=["interval"], verify={"dtype": "float64", "margin_tol": 1e-4, "batch_size": 16},
    memory_cap_gib=11, data_root=str(DATA_ROOT), device="cpu", threads=1,
    pin_memory=True, prefetch_batches=2, mixed_precision=False)  # resume must match with batches made ahead too


def _start(cfg, out, tmp_path):
    path = tmp_path / f"{out.name}.json"
    path.write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.stages.train", "--config", str(path), "--out", str(out)],
                            env=env, stderr=subprocess.PIPE, text=True)


@needs_data
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref = _start(CFG, ref_out, tmp_path)
    proc = _start(CFG, out, tmp_path)
    ckpt = out / f"ckpt-{CFG.digest()}"
    deadline = time.time() + 120
    while not (ckpt / "epoch_0002.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it could be killed; make epochs longer"
    resumed = _start(CFG, out, tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from" in err and "epoch_000" in err
    _, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(ref_out / "model.pt", weights_only=True)
    for k in b:
        assert torch.equal(a[k], b[k]), f"resumed run differs from uninterrupted run in {k}"
    hist_a = json.loads((out / "train.json").read_text())["history"]
    hist_b = json.loads((ref_out / "train.json").read_text())["history"]
    assert [h["alpha"] for h in hist_a] == [h["alpha"] for h in hist_b]  # method state resumed too
    assert len(hist_a) == SCHEDULE["epochs"]


@needs_data
def test_changed_parameter_never_resumes_stale_checkpoint(tmp_path):
    cfg = replace(CFG, schedule={**SCHEDULE, "epochs": 1, "batches_per_epoch": 2})
    out = tmp_path / "run"
    p = _start(cfg, out, tmp_path)
    assert p.wait(timeout=120) == 0
    changed = replace(cfg, seed=4)
    p = _start(changed, out, tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "resumed" not in err
    assert [d.name for d in out.glob("ckpt-*")] == [f"ckpt-{changed.digest()}"]
