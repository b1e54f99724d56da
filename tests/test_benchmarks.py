"""The benchmark scripts' own arithmetic: the op tally behind bench_floor.py's and bench_mixtrain.py's floors, and the
JSON fields a script can check (issue 11)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.roofline import OpTally, tally  # noqa: E402


def test_tally_counts_flops_bytes_and_ops_of_each_op():
    a, b = torch.rand(64, 32), torch.rand(32, 16)
    with OpTally() as t:
        c = a @ b                 # mm: 2*64*32*16 FLOPs, reads a and b, writes c
        d = c.view(-1)            # a view: no bytes moved
        e = d + 1.0               # elementwise: 0 FLOPs, reads and writes 1,024 floats
    names = [name for name, _, _ in t.ops]
    assert names == ["aten.mm", "aten.view", "aten.add"], names
    (_, f_mm, b_mm), (_, f_view, b_view), (_, f_add, b_add) = t.ops
    assert f_mm == 2 * 64 * 32 * 16 and b_mm == 4 * (64 * 32 + 32 * 16 + 64 * 16)
    assert f_view == 0 and b_view == 0
    assert f_add == 0 and b_add == 4 * 2 * 1024
    assert t.flops == f_mm and t.bytes == b_mm + b_add and e.shape == (1024,)


def test_tally_matches_torch_flop_counter_on_a_training_step_and_floors_are_ordered():
    torch.manual_seed(0)
    w = torch.rand(8, 1, 3, 3, requires_grad=True)
    x = torch.rand(4, 1, 12, 12)

    def step():
        loss = F.conv2d(x, w).relu().sum()
        loss.backward()
    with FlopCounterMode(display=False) as counter:
        step()
    t = tally(step)
    assert t.flops == counter.get_total_flops() > 0
    rates = {"matmul_gflops": 100.0, "bandwidth_gbs": 50.0, "op_us": 5.0}
    floors = t.floors(rates)
    assert floors["flop_floor_s"] == pytest.approx(t.flops / 1e11)
    # every op costs at least its fixed cost, its FLOPs and its bytes: the eager floor is above each of them
    assert floors["eager_floor_s"] >= max(len(t.ops) * 5e-6, t.flops / 1e11, t.bytes / 5e10) * (1 - 1e-12)


def test_bench_mixtrain_json_has_the_fields_a_script_checks():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mixtrain.py"), "--reps", "1", "--ks", "1",
                          "3", "--batch", "8", "--threads", "1", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    for key in ("natural_ms", "k1_ratio", "k3_over_k1", "k3_over_k1_flop_floor", "k3_over_k1_eager_floor",
                "k1_gflop", "k3_gflop"):
        assert isinstance(r[key], float) and r[key] > 0, key
    # three samples' symbolic relaxation is more work than one, the natural batch the same
    assert r["k3_gflop"] > r["k1_gflop"] > r["natural_gflop"]


def test_bench_floor_json_rows_carry_both_floors_and_their_ratio_to_natural():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_floor.py"), "--models", "MNIST_Small",
                          "--reps", "1", "--threads", "1", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {(r["domain"], r["batch"]): r for r in json.loads(out.stdout)["rows"]}
    nat = rows[("natural", 50)]
    assert nat["floor_x_natural"] == pytest.approx(1.0) and nat["eager_floor_x_natural"] == pytest.approx(1.0)
    for r in rows.values():
        assert r["floor_x_natural"] == pytest.approx(r["floor_ms"] / nat["floor_ms"])
        assert r["eager_floor_ms"] >= r["floor_ms"] * (1 - 1e-12)
    # IBP does two affine passes per layer where the natural step does one: twice the FLOPs, to counting precision
    assert rows[("interval", 50)]["floor_x_natural"] == pytest.approx(2.0, rel=0.05)
    assert rows[("backward_ibp", 50)]["floor_x_natural"] > rows[("interval", 50)]["floor_x_natural"]


def test_bench_compile_times_both_and_reports_a_dead_child_instead_of_dying():
    script = str(ROOT / "benchmarks" / "bench_compile.py")
    bad = subprocess.run([sys.executable, script, "--settings", "natural"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "domain:batch" in bad.stderr
    out = subprocess.run([sys.executable, script, "--settings", "natural:8", "no_such_domain:8", "--reps", "1",
                          "--threads", "1", "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    natural, dead = json.loads(out.stdout)["rows"]
    assert natural["eager_ms"] > 0 and natural["compiled_ms"] > 0 and natural["compile_s"] > 0
    assert dead["returncode"] == 1 and "no_such_domain" in dead["error"]


def test_ablation_script_names_an_unknown_domain_before_any_work():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablate_mixtrain_plus.py"), "--evaluate",
                          "missing.pt", "--domains", "interval", "no_such_domain"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "no_such_domain" in out.stderr and "backward_crown" in out.stderr


def test_ablation_script_full_test_set_only_certifies_a_given_model():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablate_mixtrain_plus.py"), "--full-test-set",
                          "--variants", "recipe"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "--full-test-set" in out.stderr and "--evaluate" in out.stderr
