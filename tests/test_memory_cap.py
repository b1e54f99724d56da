"""Memory cap: a training above it is stopped and reported "Out of memory" with its measured peak, through the
train, evaluate and tables stages; Table V's time-to-target cells."""
import json
import os
import subprocess
import sys
from dataclasses import replace

from conftest import ROOT, needs_data
from pipeline.stages.tables import render, time_to_target
from pipeline.stages.train import ON_CUDA_FLAG
from pipeline.utils.memcap import run_capped
from test_evaluate import ATTACKS
from test_train_resume import CFG


def _hog(hold_s: float) -> str:
    """Python code for a child holding 400 MiB (touched, so resident) for ``hold_s`` seconds."""
    return f"b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep({hold_s})"


def test_run_capped_kills_above_cap_and_measures_peak():
    res = run_capped([sys.executable, "-c", _hog(30)], cap_bytes=200 * 2**20)
    assert res.out_of_memory and res.returncode != 0 and res.peak_rss_mb > 200
    ok = run_capped([sys.executable, "-c", "print('hi')"], cap_bytes=2**30, stdout=subprocess.DEVNULL)
    assert not ok.out_of_memory and ok.returncode == 0 and ok.peak_rss_mb >= 0


def test_run_capped_lifts_the_cap_once_the_child_creates_the_flag_file(tmp_path):
    """A worker on CUDA caps its allocator itself and says so with the flag file: host memory is then only measured
    (the same hog as above, which the cap kills without the flag)."""
    flag = tmp_path / "on-cuda"
    hog = [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(0.3); "
                                 + _hog(0.3)]
    res = run_capped(hog, cap_bytes=200 * 2**20, lift_cap_file=flag)
    assert not res.out_of_memory and res.returncode == 0 and res.peak_rss_mb > 200
    flag.unlink()
    assert run_capped([sys.executable, "-c", _hog(30)], cap_bytes=200 * 2**20, lift_cap_file=flag).out_of_memory


@needs_data
def test_training_over_the_cap_is_reported_out_of_memory(tmp_path):
    cfg = replace(CFG, train_id="mixtrain-oom", memory_cap_gib=0.05)
    (tmp_path / "train.json").write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    # what a supervisor SIGKILLed earlier may leave: a CUDA worker's flag (it would lift the cap) and a worker's
    # out-of-memory report (it would speak for this attempt); neither may change this CPU attempt's outcome
    out.mkdir()
    (out / ON_CUDA_FLAG).touch()
    (out / "oom.json").write_text(json.dumps({"peak_mem_mb": 1.0, "peak_mem_kind": "left over"}))
    p = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--config", str(tmp_path / "train.json"),
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    info = json.loads((out / "train.json").read_text())
    assert info["status"] == "out_of_memory" and info["peak_mem_mb"] > 0.05 * 1024
    assert info["peak_mem_kind"] != "left over" and not (out / ON_CUDA_FLAG).exists()
    assert "out of memory" in p.stderr
    eval_cfg = {"run_id": "mixtrain-oom", "train_id": "mixtrain-oom", "scale": "test", "method": "mixtrain",
                "model": "MNIST_Small", "dataset": "mnist", "eps": 0.1, "eps_text": "0.1", "test_images": 4,
                "vra_domains": ["interval"], "verify": CFG.verify, "attacks": ATTACKS, "attack_seed": 0,
                "attack_chunk": 256, "table1": None, "checkpoint": None, "data_root": CFG.data_root,
                "device": "cpu", "threads": 1, "mixed_precision": False}
    (tmp_path / "eval.json").write_text(json.dumps(eval_cfg))
    p = subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate", "--config", str(tmp_path / "eval.json"),
                        "--model", str(out / "model.pt"), "--train-json", str(out / "train.json"),
                        "--out", str(tmp_path / "eval")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["status"] == "out_of_memory" and "acc" not in m
    run = {"method": "mixtrain", "model": "MNIST_Small", "eps": 0.1, "eps_text": "0.1", "dataset": "mnist",
           "overrides": {}}
    cfg_t = {"scale": "test", "runs": {"mixtrain-oom": run}, "implemented_methods": ["mixtrain"],
             "time_budget_s": 10, "memory_cap_gib": 0.05}
    text = render("table4", ["mixtrain-oom"], cfg_t, {"mixtrain-oom": m})
    assert "Out of memory (peak >= " in text and "cap 0.05 GiB" in text


def _run(method):
    return {"method": method, "model": "MNIST_Small", "eps": 0.1, "eps_text": "0.1", "dataset": "mnist",
            "overrides": {}}


def _metrics(vras, times):
    return {"train": {"history": [{"epoch": i + 1, "val_vra": v, "train_time_s": t}
                                  for i, (v, t) in enumerate(zip(vras, times))]}}


def test_time_to_target_uses_mixtrain_final_validation_vra():
    cfg = {"runs": {"m": _run("mixtrain"), "w": _run("wong"), "d": _run("diffai")}}
    metrics = {"m": _metrics([0.2, 0.5, 0.6], [10, 20, 30]), "w": _metrics([0.1, 0.61, 0.7], [50, 100, 150]),
               "d": _metrics([0.1, 0.3, 0.59], [5, 10, 15])}
    cells = time_to_target(["d", "w", "m"], cfg, metrics, budget_s=120)
    assert cells["m"] == {"table5_target": "60.0%", "table5_time": "30.0 s (epoch 3)"}
    assert cells["w"]["table5_time"] == "100.0 s (epoch 2)"
    assert cells["d"]["table5_time"].startswith(">120 s (budget; best 59.0%")
    tight = time_to_target(["w", "m"], cfg, metrics, budget_s=60)
    assert tight["w"]["table5_time"].startswith(">60 s")
    no_target = time_to_target(["w"], cfg, metrics, budget_s=60)
    assert no_target["w"]["table5_target"].startswith("n/a")
