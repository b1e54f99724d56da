"""MixTrain+ (this project's method), the cpu scale's grid shape (scales.<s>.runs, schedule_overrides), the trainer's
time limit, and the VRA-vs-wall-clock figure's data."""
import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import DATA_ROOT, needs_data
from pipeline.config import load_params, params_from_dict
from pipeline.errors import ConfigError
from pipeline.models import build_model
from pipeline.runconfig import TrainConfig, train_configs
from pipeline.stages.tables import schedule_section
from pipeline.train import get_method, train
from pipeline.bounds import margin_lower_bounds
from pipeline.train.mixtrain_plus import ibp_init
from pipeline.train.warmup_reg import ReluInputs, warmup_regularizer
from pipeline.wallclock import wallclock_data

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
PARAMS = {"domain": "symbolic_linear", "batch_domain": "interval", "k": 1, "tight_weight": 0.5, "init": "ibp",
          "eps_train_factor": 1.0, "alpha_warmup": True, "alpha": "adaptive",
          "alpha_rule": {"kind": "staircase", "start": 0.5, "step": 0.1, "max": 0.9, "min": 0.5, "every": 1}}


def _method(**changes):
    m = get_method("mixtrain_plus")({**PARAMS, **changes}, "mnist", 0)
    m.target_eps = 0.1
    return m


def test_ibp_init_follows_shi_et_al():
    torch.manual_seed(0)
    model = build_model("MNIST_Small", (0.1307,), (0.3081,))
    ibp_init(model, torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) == 4
    for m in layers:
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.15)
        assert torch.all(m.bias == 0)


@pytest.mark.parametrize("changes, message", [
    ({"init": "xavier"}, "init: expected one of"),
    ({"tight_weight": 1.5}, "tight_weight"),
    ({"k": 0}, "tight_weight.*0 when k = 0"),
    ({"k": -1}, "k: expected an integer >= 0"),
    ({"eps_train_factor": 0}, "eps_train_factor"),
    ({"batch_domain": "magic"}, "magic"),
    ({"alpha_warmup": "yes"}, "alpha_warmup: expected true/false"),
    ({"alpha_rule": None}, "alpha_rule: 'adaptive' needs a mapping"),
    ({"alpha": "sometimes"}, "alpha: expected a number in"),
    ({"tight_max_eps": 0}, "tight_max_eps: expected a finite number > 0.0, got 0"),
    ({"tight_max_eps": "0.1"}, "tight_max_eps: expected a finite number > 0.0, got '0.1'"),
    ({"tight_max_eps": float("nan")}, "tight_max_eps: expected a finite number > 0.0, got nan"),
    ({"tight_schedule": "cosine"}, r"tight_schedule: expected one of \['constant', 'ramp_down'\], got 'cosine'"),
    ({"alpha_rule": {"kind": "staircase", "start": 0.5, "stepp": 0.1}}, "alpha_rule: expected kind, start"),
    ({"warmup_reg": -0.5}, "warmup_reg: expected a finite number >= 0.0, got -0.5"),
    ({"warmup_reg": "0.5"}, "warmup_reg: expected a finite number >= 0.0, got '0.5'"),
    ({"warmup_reg": 0.5, "batch_domain": "backward_ibp"}, "warmup_reg: .*expected batch_domain 'interval'"),
])
def test_bad_hyperparameters_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        get_method("mixtrain_plus")({**PARAMS, **changes}, "mnist", 0)


def _batch():
    torch.manual_seed(1)
    model = build_model("MNIST_Small", (0.1307,), (0.3081,))
    return model, torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))


def test_tight_weight_ramps_down_with_eps_and_the_tight_bound_stops_at_the_target():
    model, x, y = _batch()
    m = _method(tight_weight=1.0, tight_schedule="ramp_down", domain="backward_ibp", k=3)
    _, s = m.loss(model, x, y, 0.025)
    assert s["tight_weight"] == pytest.approx(0.75) and "verified_loss" in s and m.k_used == 3
    _, s = m.loss(model, x, y, 0.1)  # the ramp is over: IBP alone, the tight bound is not computed
    assert s["tight_weight"] == 0 and "verified_loss" not in s
    _, s = _method(tight_schedule="constant").loss(model, x, y, 0.1)
    assert s["tight_weight"] == 0.5 and "verified_loss" in s
    for target, used in ((0.1, True), (0.3, False)):  # tight_max_eps: the tight term only at small target ε
        m = _method(tight_max_eps=0.1)
        m.target_eps = target
        _, s = m.loss(model, x, y, 0.05)
        assert ("verified_loss" in s) is used and (s["tight_weight"] > 0) is used


def test_alpha_warms_up_with_eps_and_starts_natural():
    model, x, y = _batch()
    m = _method()
    loss0, s0 = m.loss(model, x, y, 0.0)
    assert s0["alpha"] == 0 and torch.allclose(loss0, F.cross_entropy(model(x), y))
    _, s_half = m.loss(model, x, y, 0.05)
    _, s_full = m.loss(model, x, y, 0.1)
    assert s_half["alpha"] == pytest.approx(0.25) and s_full["alpha"] == pytest.approx(0.5)
    _, s_nowarm = _method(alpha_warmup=False).loss(model, x, y, 0.05)
    assert s_nowarm["alpha"] == pytest.approx(0.5)


def test_loss_mixes_batch_bound_and_tight_bound_with_gradients():
    model, x, y = _batch()
    m = _method()
    loss, stats = m.loss(model, x, y, 0.1)
    loss.backward()
    assert math.isfinite(loss.item()) and "verified_loss" in stats and "batch_verified_loss" in stats
    assert m.k_used == 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    nat = F.cross_entropy(model(x), y).item()
    robust = 0.5 * stats["batch_verified_loss"] + 0.5 * stats["verified_loss"]
    assert loss.item() == pytest.approx(0.5 * nat + 0.5 * robust, rel=1e-5)
    # the robust term upper-bounds the natural loss (sound bounds: worst-case logits are no better than clean ones)
    assert stats["batch_verified_loss"] >= nat - 1e-5


def test_warmup_regularizer_values_on_hand_made_bounds():
    """Tightness: a layer 4x looser than the input box costs relu(0.5 - 1/4) / 0.5 = 0.5; balance: equal active and
    inactive populations cost nothing, a layer without inactive neurons adds no balance term."""
    inputs = ReluInputs()
    inputs.input = (torch.zeros(2, 3), torch.full((2, 3), 2.0))                # mean radius 1
    centre = torch.tensor([[3.0, -3.0, 5.0, -5.0]]).repeat(2, 1)              # active/inactive mirror images
    inputs.pre = [(centre - 4, centre + 4)]                                   # radius 4: ±3 unstable, ±5 mirrored
    assert warmup_regularizer(inputs).item() == pytest.approx(0.5)
    inputs.pre = [(centre - 1, centre + 1)]                                   # radius 1: tight, balanced
    assert warmup_regularizer(inputs).item() == pytest.approx(0.0)
    skewed = torch.tensor([[3.0, -1.0, 5.0, -1.0]])                           # inactive side 4x smaller
    inputs.pre = [(skewed - 0.5, skewed + 0.5)]
    mean_ratio = 0.25                                                         # (8/4) / (2/4) folded: 1/4
    dev = (skewed - skewed.mean()) ** 2
    var_ratio = min((dev[0, 0] + dev[0, 2]) / (dev[0, 1] + dev[0, 3]), (dev[0, 1] + dev[0, 3]) / (dev[0, 0] + dev[0, 2]))
    expected = ((0.5 - mean_ratio) + max(0.0, 0.5 - var_ratio.item())) / 0.5
    assert warmup_regularizer(inputs).item() == pytest.approx(expected, rel=1e-5)
    for one_sided in (centre.abs(), -centre.abs()):                           # all active / all inactive:
        inputs.pre = [(one_sided - 1, one_sided + 1)]                         # no balance term (tight: no term)
        assert warmup_regularizer(inputs).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no affine input or no ReLU"):
        warmup_regularizer(ReluInputs())
    with pytest.raises(ValueError, match=r"tau: expected a number in \(0, 1\], got 0"):
        warmup_regularizer(inputs, tau=0)


def test_observing_a_pass_sees_the_relus_inside_residual_blocks_and_changes_no_bound():
    torch.manual_seed(0)
    model = build_model("CIFAR_Resnet", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    observed = ReluInputs()
    lb = margin_lower_bounds(model, x, y, 2 / 255, "interval", observe=observed)
    assert torch.equal(lb, margin_lower_bounds(model, x, y, 2 / 255, "interval"))
    assert len(observed.pre) == sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 10
    seen = []  # a backward domain's states are lazy (concretising one is a back-substitution): only look at the ops
    lb = margin_lower_bounds(model, x, y, 2 / 255, "backward_ibp", observe=lambda op, state: seen.append(op))
    assert torch.equal(lb, margin_lower_bounds(model, x, y, 2 / 255, "backward_ibp"))
    assert sum(type(op).__name__ == "ReLU" for op in seen) == 10


def test_warmup_reg_reads_the_loss_pass_and_fades_with_the_ramp():
    model, x, y = _batch()
    observed = ReluInputs()
    lb = margin_lower_bounds(model, x, y, 0.05, "interval", observe=observed)
    assert torch.equal(lb, margin_lower_bounds(model, x, y, 0.05, "interval"))  # observing changes nothing
    assert len(observed.pre) == 3 and observed.input[0].shape == x.shape      # MNIST_Small: 3 ReLUs
    assert torch.allclose(observed.input[1] - observed.input[0],
                          ((x + 0.05).clamp(0, 1) - (x - 0.05).clamp(0, 1)) / 0.3081, atol=1e-6)  # normalised box
    m = _method(warmup_reg=0.5, k=0, tight_weight=0.0)
    loss, s = m.loss(model, x, y, 0.025)
    _, s_off = _method(k=0, tight_weight=0.0).loss(model, x, y, 0.025)
    at_025 = ReluInputs()
    margin_lower_bounds(model, x, y, 0.025, "interval", observe=at_025)
    assert s["warmup_reg"] == pytest.approx(0.5 * (1 - 0.25) * warmup_regularizer(at_025).item(), rel=1e-5)
    assert s["warmup_reg"] > 0 and "warmup_reg" not in s_off
    assert loss.item() == pytest.approx(s["warmup_reg"] + (1 - s["alpha"]) * F.cross_entropy(model(x), y).item()
                                        + s["alpha"] * s["batch_verified_loss"], rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    _, s_end = m.loss(model, x, y, 0.1)                                       # the ramp is over: no regulariser
    assert "warmup_reg" not in s_end


def test_ibp_only_variant_skips_the_tight_bound():
    model, x, y = _batch()
    _, stats = _method(k=0, tight_weight=0.0).loss(model, x, y, 0.1)
    assert "verified_loss" not in stats and "batch_verified_loss" in stats


def test_state_round_trip():
    m = _method()
    m.alpha.update(1, 0.9)
    m.alpha.update(2, 0.95)
    other = _method()
    other.load_state_dict(m.state_dict())
    assert other.alpha.value == m.alpha.value and other.alpha.last_acc == m.alpha.last_acc


# ---- the grid's shape per scale ----

def _load(mutate, scale="cpu"):
    raw = copy.deepcopy(RAW)
    raw["scale"] = scale
    mutate(raw)
    return params_from_dict(raw, ROOT)


def test_cpu_scale_builds_its_run_list_and_keeps_table_rows_of_those_runs():
    p = load_params(ROOT / "params.yaml", {"scale": "cpu"})
    assert set(p.runs) == set(RAW["scales"]["cpu"]["runs"])
    assert {"mixtrain_plus-MNIST_Small-eps0.1", "mixtrain_plus-MNIST_Small-eps0.3"} <= set(p.runs)
    for rows in p.tables.values():
        assert set(rows) <= set(p.runs)
    assert p.tables["table7"] == [] and "mixtrain_plus-MNIST_Small-eps0.1" in p.tables["table3"]
    assert p.figures.names() == ["fig2"]  # the others' runs are not in the cpu grid
    full = load_params(ROOT / "params.yaml", {"scale": "paper"})
    assert len(full.runs) == len(RAW["runs"]) and full.figures.names() == ["fig2", "fig4", "fig5", "fig7"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["scales"]["cpu"].update(runs=["nope-MNIST_Small-eps0.1"]), r"scales.cpu.runs: \['nope"),
    (lambda r: r["scales"]["cpu"].update(runs=[]), "scales.cpu.runs: expected null or a non-empty list"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"madry": {"epochz": 2}}),
     r"scales.cpu.schedule_overrides.madry: unknown key\(s\) \['epochz'\]"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"madry": {"epochs": 0}}),
     "scales.cpu.schedule_overrides.madry.epochs: 0 out of range"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"mixtrain_plus-MNIST_Small-eps0.1":
                                                                 {"time_limit_min": 0}}),
     "time_limit_min: 0 out of range"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"mixtrain_plus": {"lr_decay_factor": 1.5}}),
     "schedule_overrides.mixtrain_plus.lr_decay_factor: 1.5 out of range"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"gradient_descent": {"epochs": 2}}),
     "schedule_overrides.gradient_descent: expected a method of the grid or a run id"),
    (lambda r: r["scales"]["cpu"].update(schedule_overrides={"natural-MNIST_Small-eps0.1": {"epochs": 2}}),
     "natural trains one model for every ε row; override its schedule under the method name"),
])
def test_bad_grid_shape_is_named(mutate, message):
    with pytest.raises(ConfigError, match=message):
        _load(mutate)


def test_schedule_overrides_method_then_run_and_time_limit_only_when_set():
    p = load_params(ROOT / "params.yaml", {"scale": "cpu"})
    cfgs = train_configs(p)
    o = RAW["scales"]["cpu"]["schedule_overrides"]
    assert cfgs["madry-MNIST_Small-eps0.1"].schedule["epochs"] == o["madry"]["epochs"]
    assert cfgs["mixtrain-MNIST_Small-eps0.1"].schedule["epochs"] == RAW["scales"]["cpu"]["epochs"]
    plus = cfgs["mixtrain_plus-MNIST_Small-eps0.1"].schedule
    assert plus["time_limit_min"] == 25 and cfgs["mixtrain_plus-MNIST_Small-eps0.3"].schedule["time_limit_min"] == 15
    assert "time_limit_min" not in cfgs["mixtrain-MNIST_Small-eps0.1"].schedule
    for c in cfgs.values():
        assert "runs" not in c.schedule and "schedule_overrides" not in c.schedule
    # a run without a time limit carries exactly the schedule keys it carried before these keys existed, so the
    # configs (and digests) of grids that do not use them are unchanged
    old_keys = {"epochs", "batch_size", "train_limit", "batches_per_epoch", "val_limit", "test_images",
                "test_images_large", "eps_ramp_epochs", "lr_decay_every", "augment_cifar", "val_vra_images",
                "figure_images", "attack_overrides", "table1_attack_overrides", "table1_max_runs"}
    smoke = train_configs(load_params(ROOT / "params.yaml", {"scale": "smoke"}))
    assert all(set(c.schedule) == old_keys for rid, c in smoke.items() if not rid.startswith("mixtrain_plus"))


def test_time_limited_trainings_claim_every_core_and_others_one():
    from pipeline.workflow_support import time_limited_trains
    cpu = load_params(ROOT / "params.yaml", {"scale": "cpu"})
    assert time_limited_trains(cpu) == {"mixtrain_plus-MNIST_Small-eps0.1", "mixtrain_plus-MNIST_Small-eps0.3"}
    assert time_limited_trains(load_params(ROOT / "params.yaml", {"scale": "smoke"})) == frozenset()


@needs_data
def test_snakemake_runs_a_time_limited_training_alone_on_every_core():
    """The train rule's threads (a dry run: nothing written): the time-limited MixTrain+ training claims the rule's
    CPU allotment scaled down to --cores (so nothing runs beside it and OMP_NUM_THREADS is 2), a step-counted one 1."""
    import subprocess
    import sys
    limited, counted = (f"results/cpu/train/{t}/model.pt" for t in ("mixtrain_plus-MNIST_Small-eps0.3",
                                                                      "mixtrain-MNIST_Small-eps0.1"))
    snakemake = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(snakemake), "-n", "--nolock", "--cores", "2", "--resources", "gpu=2", "--config",
                          "scale=cpu", "--forcerun", limited, counted, "--", limited, counted],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = {}
    for block in (out.stdout + out.stderr).split("rule train:")[1:]:
        tid = block.split("train_id=")[1].split()[0]
        threads = [line.split(":")[1].strip() for line in block.splitlines() if line.strip().startswith("threads:")]
        jobs[tid] = int(threads[0]) if threads else 1
    assert jobs == {"mixtrain_plus-MNIST_Small-eps0.3": 2, "mixtrain-MNIST_Small-eps0.1": 1}


def test_table_header_tells_per_run_schedules_apart():
    p = load_params(ROOT / "params.yaml", {"scale": "cpu"})
    from pipeline.train import implemented_methods
    from pipeline.workflow_support import tables_config
    cfg = tables_config(p, implemented_methods())
    text = schedule_section(p.tables["table3"], cfg)
    assert "MixTrain+ ε=0.1" in text and "MixTrain+ ε=0.3" in text
    assert "stopped at 25 min of training wall time" in text and "stopped at 15 min" in text
    assert "Madry" in text and "2 epochs" in text


# ---- the trainer's time limit ----

SCHEDULE = {"epochs": 50, "batch_size": 50, "train_limit": 5000, "batches_per_epoch": 100, "val_limit": 100,
            "test_images": 16, "test_images_large": 4, "eps_ramp_epochs": 1, "lr_decay_every": 1,
            "augment_cifar": False, "val_vra_images": 0, "time_limit_min": 0.04}
CFG = TrainConfig(
    train_id="mixtrain_plus-limit", scale="test", method="mixtrain_plus", method_params=PARAMS,
    model="MNIST_Small", dataset="mnist", eps=0.1, eps_start=0.01, seed=3, val_size=5000, split_seed=0,
    schedule=SCHEDULE, optim={"name": "adam", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
                              "decay_factor": 0.6},
    vra_domains=["interval"], verify={"dtype": "float64", "margin_tol": 1e-4, "batch_size": 16},
    memory_cap_gib=11, data_root=str(DATA_ROOT), device="cpu", threads=1)


@needs_data
def test_time_limit_stops_training_and_a_resume_buys_no_extra_time(tmp_path):
    r = train(CFG, tmp_path, log=lambda m: None)
    assert r["stopped_at_time_limit"] and len(r["history"]) < SCHEDULE["epochs"]
    assert r["history"][-1]["stopped_at_time_limit"] and r["time_limit_s"] == pytest.approx(2.4)
    # the crossing step finishes, then it stops: the recorded wall time passed the limit by at most a few steps
    assert 2.4 <= r["wall_time_s"] < 2.4 + 5
    assert [h["wall_time_s"] for h in r["history"]] == sorted(h["wall_time_s"] for h in r["history"])
    again = train(CFG, tmp_path, log=lambda m: None)  # the checkpoint says it stopped: no further epoch
    assert again["steps"] == r["steps"] and len(again["history"]) == len(r["history"])
    assert all(torch.equal(a, b) for a, b in zip(r["model"].state_dict().values(),
                                                 again["model"].state_dict().values()))


@needs_data
def test_lr_decay_factor_override_replaces_the_datasets_decay(tmp_path):
    sched = {**SCHEDULE, "epochs": 3, "batches_per_epoch": 2, "lr_decay_factor": 0.25}
    sched.pop("time_limit_min")
    r = train(replace(CFG, schedule=sched), tmp_path, log=lambda m: None)
    assert [h["lr"] for h in r["history"]] == pytest.approx([1e-3, 2.5e-4, 6.25e-5])
    sched.pop("lr_decay_factor")  # without it: optim.decay_factor (0.6)
    r = train(replace(CFG, schedule=sched), tmp_path / "b", log=lambda m: None)
    assert [h["lr"] for h in r["history"]] == pytest.approx([1e-3, 6e-4, 3.6e-4])


@needs_data
def test_no_time_limit_runs_every_epoch(tmp_path):
    sched = {**SCHEDULE, "epochs": 1, "batches_per_epoch": 3}
    sched.pop("time_limit_min")
    r = train(replace(CFG, schedule=sched), tmp_path, log=lambda m: None)
    assert not r["stopped_at_time_limit"] and r["time_limit_s"] is None and r["steps"] == 3


# ---- the VRA-vs-wall-clock figure ----

def _m(vras, key="wall_time_s"):
    return {"train": {"history": [{"val_vra": v, key: 60.0 * (i + 1), "train_time_s": 30.0 * (i + 1)}
                                  for i, v in enumerate(vras)]}}


def test_wallclock_picks_mixtrain_plus_mixtrain_and_the_best_certified_baseline():
    runs = {rid: {"method": rid.split("-")[0], "model": "MNIST_Small", "eps_text": "0.1",
                  "overrides": {"k": 20} if "-k20-" in rid else {}}
            for rid in ["mixtrain_plus-MNIST_Small-eps0.1", "mixtrain-MNIST_Small-eps0.1", "wong-MNIST_Small-eps0.1",
                        "diffai-MNIST_Small-eps0.1", "mixtrain-k20-MNIST_Small-eps0.1", "madry-MNIST_Small-eps0.1"]}
    metrics = {"mixtrain_plus-MNIST_Small-eps0.1": _m([0.5, 0.9]), "mixtrain-MNIST_Small-eps0.1": _m([0.4, 0.7]),
               "wong-MNIST_Small-eps0.1": _m([0.6, 0.8], key="train_time_s"),
               "diffai-MNIST_Small-eps0.1": _m([0.1, 0.2]), "mixtrain-k20-MNIST_Small-eps0.1": _m([0.3, 0.75]),
               "madry-MNIST_Small-eps0.1": _m([0.95, 0.99])}  # not certified training: never "the baseline"
    panel = wallclock_data(runs, metrics)["MNIST_Small ε=0.1"]
    assert panel["MixTrain+ (this project)"]["val_vra"] == [0.5, 0.9]
    assert panel["MixTrain (paper's algorithm)"]["run"] == "mixtrain-MNIST_Small-eps0.1"
    assert panel["best baseline: wong"]["minutes"] == [0.5, 1.0]  # train_time_s when wall time is not recorded
    assert wallclock_data({k: v for k, v in runs.items() if not k.startswith("mixtrain_plus")}, metrics) == {}


# ---- weight averaging (weight_ema) ----

def test_weight_ema_follows_its_recursion_and_swaps_back_bit_for_bit():
    from pipeline.train.weight_avg import WeightEMA
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(0.9)
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for n, p in model.named_parameters():
            ref[n] = p.detach().clone() if t == 0 else d * ref[n] + (1 - d) * p.detach()
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.swapped(model):
        for n, p in model.named_parameters():
            assert torch.allclose(p, ref[n], atol=1e-6) and not torch.equal(p, trained[n])
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())
    other = WeightEMA(0.9)
    other.load_state_dict(ema.state_dict())
    assert other.steps == 30
    other.copy_to(model)
    assert all(torch.allclose(p, ref[n], atol=1e-6) for n, p in model.named_parameters())


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan"), "0.99"])
def test_bad_weight_ema_is_named(decay):
    with pytest.raises(ValueError, match="weight_ema"):
        _method(weight_ema=decay)


@needs_data
def test_weight_ema_run_keeps_and_validates_the_average_and_resumes_it(tmp_path):
    sched = {**SCHEDULE, "epochs": 2, "batches_per_epoch": 5, "val_vra_images": 4}
    sched.pop("time_limit_min")
    cfg = replace(CFG, schedule=sched, method_params={**PARAMS, "weight_ema": 0.5})
    r = train(cfg, tmp_path / "a", log=lambda m: None)
    # the kept model is the average, not the last weights: rebuild the last weights from the final checkpoint
    state = torch.load(next((tmp_path / "a").glob("ckpt-*/epoch_0002.pt")), weights_only=True)
    avg = state["method"]["ema"]["avg"]
    assert state["method"]["ema"]["steps"] == 10
    kept = dict(r["model"].named_parameters())
    assert all(torch.equal(kept[n].detach(), avg[n]) for n in avg)
    assert any(not torch.equal(state["model"][n], avg[n]) for n in avg)
    # validation saw the average: its accuracy is the kept model's
    norm_model = r["model"].eval()
    from pipeline.data import load_dataset
    from pipeline.train import training_indices
    data = load_dataset("mnist", DATA_ROOT).train
    _, val_idx = training_indices(len(data), cfg)
    with torch.no_grad():
        acc = (norm_model(data.float_images(val_idx)).argmax(1) == data.y[val_idx]).float().mean().item()
    assert r["history"][-1]["val_acc"] == pytest.approx(acc)
    # resume from epoch 1 reaches the same average as the uninterrupted run
    for f in (tmp_path / "a").glob("ckpt-*/epoch_*.pt"):
        f.unlink()
    one = train(replace(cfg, schedule={**sched, "epochs": 1}), tmp_path / "b", log=lambda m: None)
    assert len(one["history"]) == 1
    ckpt = next((tmp_path / "b").glob("ckpt-*"))
    ckpt.rename(tmp_path / "b" / f"ckpt-{cfg.digest()}")
    resumed = train(cfg, tmp_path / "b", log=lambda m: None)
    assert len(resumed["history"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(r["model"].state_dict().values(),
                                                 resumed["model"].state_dict().values()))
