"""The evaluate stage on real test images: metrics, per-sample results, external (published-layout) checkpoints."""
import functools
import json

import pytest
import torch

from conftest import DATA_ROOT, needs_data
from pipeline.runconfig import EvalConfig
from pipeline.errors import CheckpointError
from pipeline.models import build_model
from pipeline.stages import evaluate

VERIFY = {"dtype": "float64", "margin_tol": 1e-4, "batch_size": 8}
ATTACKS = {"pgd": {"steps": 10, "step_size": 0.01, "restarts": 1, "random_start": True},
           "cw": {"steps": 10, "step_size": 0.01, "restarts": 1, "random_start": True, "kappa": 0.0},
           "interval": {"iterations": 2, "step_size": 0.01, "delta_init": 0.001, "growth": 2.0, "max_delta_tries": 3,
                        "pgd_steps": 10, "pgd_step_size": 0.01, "max_samples_per_chunk": 8}}


def _cfg(**kw):
    base = dict(run_id="external-pub-MNIST_Small-eps0.001", train_id="", scale="test", method="external",
                model="MNIST_Small", dataset="mnist", eps=0.001, eps_text="0.001", test_images=12,
                vra_domains=["interval", "symbolic_linear", "backward"], verify=VERIFY, attacks=ATTACKS,
                attack_seed=0, attack_chunk=256, table1=None, checkpoint={"path": "unused", "mean": [0.0], "std": [1.0]}, data_root=str(DATA_ROOT),
                device="cpu", threads=1, mixed_precision=False)
    base.update(kw)
    return EvalConfig(**base)


@functools.lru_cache(maxsize=1)
def _trained_net():
    """A quickly fitted MNIST_Small so that some samples are correct and verifiable at a tiny ε."""
    from pipeline.data import load_split
    torch.manual_seed(0)
    train = load_split("mnist", DATA_ROOT, "train")
    x, y = train.float_images(slice(0, 2000)), train.y[:2000]
    model = build_model("MNIST_Small", [0.0], [1.0])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        for i in range(0, 2000, 50):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@needs_data
def test_external_checkpoint_is_attacked_and_verified_by_the_same_code(tmp_path):
    model = _trained_net()
    ck = tmp_path / "pub.pth"
    torch.save(model.net.state_dict(), ck)  # plain nn.Sequential layout: 0.weight, 0.bias, 2.weight, ...
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_cfg().to_json())
    assert evaluate.main(["--config", str(cfg), "--model", str(ck), "--out", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    s = json.loads((tmp_path / "out/samples.json").read_text())
    assert m["n"] == 12 == len(s["ids"]) and m["vra_domains"] == ["interval", "symbolic_linear", "backward"]
    assert 0 <= m["vra"] <= m["acc"] and m["acc"] > 0.5 and m["vra"] > 0
    for a in ATTACKS:
        assert m["vra"] <= m[f"era_{a}"] <= m["acc"] and m["attack_cost"][a]["passes"] > 0
        assert not any(v and b for v, b in zip(s["verified"], s["broken_by"][a]))
    lo, hi = m["acc_ci95"]
    assert lo <= m["acc"] <= hi
    for v, d, p, t in zip(s["verified"], s["verified_by"], s["predictions"], s["labels"]):
        assert (d is not None) == v and (not v or p == t)
    # each correctly classified sample records the threshold its bound had to beat (margin_tol + rounding bound)
    for p, t, lb, thr in zip(s["predictions"], s["labels"], s["min_margin_lb"], s["verify_threshold"]):
        assert (thr is None) == (p != t)
        assert thr is None or thr >= m["verify"]["margin_tol"]
    assert m["provenance"]["checkpoint_sha256"] and m["provenance"]["torch"] == torch.__version__
    assert s["ids"] == json.loads((evaluate.Path(evaluate.__file__).parents[1] / "data/subsets/mnist_test.json")
                                  .read_text())["ids"][:12]


@needs_data
def test_mismatched_external_checkpoint_fails_before_writing(tmp_path):
    ck = tmp_path / "pub.pth"
    torch.save(build_model("MNIST_Large", [0.0], [1.0]).net.state_dict(), ck)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_cfg().to_json())
    with pytest.raises(CheckpointError, match="does not match architecture MNIST_Small"):
        evaluate.main(["--config", str(cfg), "--model", str(ck), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@needs_data
def test_bad_attack_parameter_fails_before_any_work(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_cfg(attacks={**ATTACKS, "pgd": {**ATTACKS["pgd"], "steps": -1}}).to_json())
    with pytest.raises(ValueError, match="steps"):
        evaluate.main(["--config", str(cfg), "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_invariants_fail_loudly_on_a_broken_verified_sample():
    from pipeline.evaluation import SampleResults, check_invariants
    s = SampleResults(["a", "b"], [1, 2], [1, 2], [True, False], ["interval", None], [0.5, None],
                      broken_by={"pgd": [True, False]})
    with pytest.raises(AssertionError, match="soundness bug.*verified at this ε but broken by the pgd attack"):
        check_invariants(s)
    s.broken_by = {"pgd": [False, True]}
    check_invariants(s)
    s.predictions = [3, 2]
    with pytest.raises(AssertionError, match="verified but misclassified"):
        check_invariants(s)


@needs_data
def test_equal_budget_gives_every_attack_the_interval_attacks_cost():
    from pipeline.attacks import get_attack
    from pipeline.data import load_split
    from pipeline.evaluation import equal_budget
    model = _trained_net().eval()
    test = load_split("mnist", DATA_ROOT, "test")
    x, y = test.float_images(slice(0, 8)), test.y[:8]
    cheap = {**ATTACKS, "interval": {**ATTACKS["interval"], "iterations": 1, "max_delta_tries": 2}}
    attacks = {name: get_attack(name)(**kw) for name, kw in cheap.items()}
    t1 = equal_budget(model, x, y, 0.1, attacks, None, seed=0, max_runs=20)  # the cap keeps the test fast
    budget = t1["budget_passes"]
    assert budget == t1["attacks"]["interval"]["passes"] > 0 and not t1["attacks"]["interval"]["over_budget"]
    for name in ("pgd", "cw"):
        a = t1["attacks"][name]
        assert a["passes"] <= budget and a["runs"] >= 1 and 0 <= a["rate"] <= 1
        assert a["attacked"] == t1["attacks"]["interval"]["attacked"]
    for name in ("pgd", "cw"):
        a = t1["attacks"][name]
        assert a["runs"] <= 20 and (not a["run_cap_reached"] or (a["runs"] == 20 and a["rate"] < 1))
    fixed = equal_budget(model, x, y, 0.1, attacks, 100, seed=0)
    assert fixed["budget_passes"] == 100 and all(a["passes"] <= 100 or a["runs"] == 1
                                                  for a in fixed["attacks"].values())
