"""The GPU path, checked on CPU: batches made ahead on a thread are the synchronous batches (same RNG draws), producer
errors and early stops are clean, mixed precision covers natural/attack parts only (never bounds or re-checks), and
the new parameters are validated and carried into the per-run configs."""
import copy
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import pipeline.attacks.base as attack_base
import pipeline.train.mixtrain as mixtrain_mod
from conftest import DATA_ROOT, needs_cifar, needs_data
from pipeline.attacks import PGD, get_attack
from pipeline.config import params_from_dict
from pipeline.data.datasets import Split
from pipeline.errors import ConfigError
from pipeline.models import build_model
from pipeline.runconfig import EvalConfig, TrainConfig, eval_configs, train_configs
from pipeline.train import get_method
from pipeline.train.batches import EpochBatches, augment_crop_flip
from pipeline.utils.precision import autocast, full_precision, mixed_forward

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """The producer thread runs on the CPU only with one intra-op thread (EpochBatches' docstring), so the thread
    path is tested there; the test that needs more threads sets them itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_with_several_threads_makes_batches_synchronously():
    split, order = _split(40, (1, 4, 4)), np.arange(40)
    ref, ref_state = _collect(split, order, 4, 10, False, seed=3, prefetch=0)
    for threads, producers in ((1, 1), (2, 0)):
        torch.set_num_threads(threads)
        base = threading.active_count()
        gen = torch.Generator().manual_seed(3)
        with EpochBatches(split, order, 4, 10, False, gen, torch.device("cpu"), prefetch_batches=2) as batches:
            got = []
            for x, y in batches:
                if not got:  # (the producer ends once it has queued the last batch)
                    assert threading.active_count() == base + producers, threads
                got.append((x.clone(), y.clone()))
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, ref))
        assert len(got) == 10 and torch.equal(gen.get_state(), ref_state)


def _split(n: int, shape: tuple[int, ...], seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return Split(x, torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(n)])


def _collect(split, order, bs, n_batches, augment, seed, prefetch):
    gen = torch.Generator().manual_seed(seed)
    with EpochBatches(split, order, bs, n_batches, augment, gen, torch.device("cpu"), pin_memory=True,
                      prefetch_batches=prefetch) as batches:
        out = [(x.clone(), y.clone()) for x, y in batches]
    return out, gen.get_state()


def _reference(split, order, bs, n_batches, augment, seed):
    """What the trainer's loop did inline before the producer existed."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        idx = order[b * bs:(b + 1) * bs]
        x, y = split.float_images(idx), split.y[idx]
        if augment:
            x = augment_crop_flip(x, gen)
        out.append((x, y))
    return out, gen.get_state()


@pytest.mark.parametrize("shape, augment", [((1, 28, 28), False), ((3, 32, 32), True)])
def test_prefetched_batches_and_generator_state_match_synchronous(shape, augment):
    split = _split(120, shape)
    order = np.random.default_rng(1).permutation(120)[:100]
    ref, ref_state = _reference(split, order, 16, 6, augment, seed=5)
    for prefetch in (0, 1, 2, 8):
        got, state = _collect(split, order, 16, 6, augment, seed=5, prefetch=prefetch)
        assert len(got) == 6 and torch.equal(state, ref_state), prefetch
        for (x, y), (rx, ry) in zip(got, ref):
            assert x.dtype == torch.float32 and torch.equal(x, rx) and torch.equal(y, ry)
    if augment:  # the augmentation really drew from the generator
        plain, _ = _reference(split, order, 16, 6, False, seed=5)
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, ref))


def test_pin_memory_is_ignored_on_cpu_and_bad_prefetch_rejected():
    split = _split(8, (1, 4, 4))
    b = EpochBatches(split, np.arange(8), 4, 2, False, torch.Generator(), torch.device("cpu"), pin_memory=True,
                     prefetch_batches=2)
    assert b.pin is False
    with b:
        assert [x.device.type for x, _ in b] == ["cpu", "cpu"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="prefetch_batches"):
            EpochBatches(split, np.arange(8), 4, 2, False, torch.Generator(), torch.device("cpu"),
                         prefetch_batches=bad)
    with pytest.raises(ValueError, match="need 12 positions"):
        EpochBatches(split, np.arange(8), 4, 3, False, torch.Generator(), torch.device("cpu"))


class _Failing:
    """A split whose third batch fails to load."""

    def __init__(self, split):
        self.split, self.y, self.calls = split, split.y, 0

    def float_images(self, idx):
        self.calls += 1
        if self.calls == 3:
            raise OSError("disk went away")
        return self.split.float_images(idx)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_producer_exception_reaches_the_consumer(prefetch):
    base = threading.active_count()
    seen = 0
    with pytest.raises(OSError, match="disk went away"):
        with EpochBatches(_Failing(_split(40, (1, 4, 4))), np.arange(40), 4, 10, False, torch.Generator(),
                          torch.device("cpu"), prefetch_batches=prefetch) as batches:
            for _ in batches:
                seen += 1
    assert seen == 2
    assert threading.active_count() == base


def test_early_stop_does_not_leak_the_producer_thread():
    base = threading.active_count()
    split = _split(400, (3, 32, 32))
    with pytest.raises(FloatingPointError):
        with EpochBatches(split, np.arange(400), 4, 100, True, torch.Generator(), torch.device("cpu"),
                          prefetch_batches=2) as batches:
            for b, _ in enumerate(batches):
                assert threading.active_count() == base + 1  # one producer thread, and only one
                if b == 1:
                    raise FloatingPointError("loss became nan")  # what the trainer raises mid-epoch
    assert threading.active_count() == base
    with EpochBatches(split, np.arange(400), 4, 100, False, torch.Generator(), torch.device("cpu"),
                      prefetch_batches=3) as batches:
        for b, _ in enumerate(batches):
            if b == 0:
                break
    assert threading.active_count() == base
    with pytest.raises(RuntimeError, match="once per epoch"):
        list(batches)


# -- mixed precision ---------------------------------------------------------------------------------------------

def _model_batch(seed=0, model="MNIST_Small", shape=(1, 28, 28)):
    torch.manual_seed(seed)
    mean, std = ([0.1307], [0.3081]) if shape[0] == 1 else ([0.485, 0.456, 0.406], [0.225] * 3)
    return build_model(model, mean, std), torch.rand(8, *shape), torch.randint(0, 10, (8,))


def test_precision_helpers():
    model, x, _ = _model_batch()
    with autocast(x.device, True):
        assert torch.is_autocast_enabled("cpu") and model(x).dtype == torch.bfloat16
        with full_precision(x.device):
            assert model(x).dtype == torch.float32
    with autocast(x.device, False):
        assert not torch.is_autocast_enabled("cpu") and model(x).dtype == torch.float32
    with mixed_forward(model, x.device, True):
        assert torch.is_autocast_enabled("cpu") and model(x).dtype == torch.float32  # logits back to float32
    assert not model._forward_hooks and model(x).dtype == torch.float32  # the hook is gone afterwards


def test_cuda_without_bfloat16_names_the_parameter(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: False)
    with pytest.raises(RuntimeError, match="mixed_precision: true needs bfloat16"):
        autocast(torch.device("cuda"), True)
    with autocast(torch.device("cuda"), False):  # off: nothing is asked of the device
        pass


@pytest.mark.parametrize("name, params", [
    ("natural", {}),
    ("madry", {"steps": 5, "step": 0.02, "random_start": True}),
    ("sinha", {"gamma": 0.385, "steps": 3}),
    ("diffai", {"domain": "interval", "robust_loss": "softplus_max", "natural_weight": 1.0, "robust_weight": 1.0}),
    ("wong", {"projections": 10}),
])
def test_mixed_precision_steps_run_on_cpu_close_to_float32(name, params):
    losses, grads = {}, {}
    for mp in (False, True):
        model, x, y = _model_batch(1)
        method = get_method(name)(params, "mnist", 0)
        method.mixed_precision = mp
        loss, _ = method.loss(model, x, y, 0.1)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in model.parameters())
        losses[mp] = loss.item()
        grads[mp] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert losses[True] == pytest.approx(losses[False], rel=0.03)
    assert F.cosine_similarity(grads[True], grads[False], dim=0) > 0.95


def test_mixtrain_autocasts_the_natural_part_never_the_bounds(monkeypatch):
    seen = []
    real = mixtrain_mod.margin_lower_bounds

    def spy(model, x, y, eps, domain):
        lb = real(model, x, y, eps, domain)
        seen.append((torch.is_autocast_enabled("cpu"), lb.dtype))
        return lb
    monkeypatch.setattr(mixtrain_mod, "margin_lower_bounds", spy)
    params = {"k": 4, "domain": "interval", "alpha": 0.5, "alpha_rule": {"kind": "constant", "start": 0.5}}
    losses = {}
    for mp in (False, True):
        model, x, y = _model_batch(2)
        method = get_method("mixtrain")(params, "mnist", 0)
        method.mixed_precision = mp
        loss, stats = method.loss(model, x, y, 0.05)
        assert torch.isfinite(loss) and loss.dtype == torch.float32
        losses[mp] = (loss.item(), stats["verified_loss"])
    assert seen == [(False, torch.float32), (False, torch.float32)]
    assert losses[True][1] == losses[False][1]  # the verified loss is bit-identical: full precision both times
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.03)


class _LossSpyPGD(PGD):
    def loss(self, logits, y):
        self.logit_dtypes.add(logits.dtype)
        return super().loss(logits, y)


@pytest.mark.parametrize("outer_autocast", [False, True])
def test_attack_clean_and_recheck_forwards_stay_float32(monkeypatch, outer_autocast):
    model, x, y = _model_batch(3)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correctly classified: every sample is attacked
    calls, rechecks = [], []
    orig_forward = model.forward

    def forward_spy(inp):
        out = orig_forward(inp)
        calls.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out
    model.forward = forward_spy
    real_recheck = attack_base.recheck

    def recheck_spy(m, x_adv, x0, y0, eps, *a, **kw):
        rechecks.append((torch.is_autocast_enabled("cpu"), x_adv.dtype))
        return real_recheck(m, x_adv, x0, y0, eps, *a, **kw)
    monkeypatch.setattr(attack_base, "recheck", recheck_spy)
    attack = _LossSpyPGD(steps=3, step_size=0.02)
    attack.logit_dtypes = set()
    attack.mixed_precision = True
    with autocast(x.device, outer_autocast):
        res = attack(model, x, y, 0.1, torch.Generator().manual_seed(0))
    assert calls[0] == (False, torch.float32)    # clean forward
    assert calls[-1] == (False, torch.float32)   # the re-check's forward
    assert all(c == (True, torch.bfloat16) for c in calls[1:-1]) and len(calls) > 2  # the search only
    assert rechecks == [(False, torch.float32)]
    assert attack.logit_dtypes == {torch.float32}  # the attack's loss saw float32 logits
    assert res.x_adv.dtype == torch.float32 and not model._forward_hooks
    model.forward = orig_forward
    assert torch.equal(res.success, real_recheck(model, res.x_adv, x, y, 0.1))  # re-deciding in float32 agrees


@pytest.mark.parametrize("name, kw", [("cw", {"steps": 3}), ("interval", {"iterations": 1, "max_delta_tries": 2,
                                                                          "pgd_steps": 2, "max_samples_per_chunk": 4})])
def test_other_attacks_run_with_mixed_precision(name, kw):
    model, x, y = _model_batch(4)
    attack = get_attack(name)(**kw)
    attack.mixed_precision = True
    res = attack(model, x, y, 0.1, torch.Generator().manual_seed(0))
    assert res.x_adv.dtype == torch.float32 and (res.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert torch.equal(res.success, attack_base.recheck(model, res.x_adv, x, y, 0.1))


# -- configuration ------------------------------------------------------------------------------------------------

def _load(mutate):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    return params_from_dict(raw, ROOT)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["data"].update(pin_memory="yes"), "data.pin_memory: expected true or false, got 'yes'"),
    (lambda r: r["data"].update(prefetch_batches=-1), r"data.prefetch_batches: -1 out of range"),
    (lambda r: r["data"].update(prefetch_batches=1.5), "data.prefetch_batches: expected an integer"),
    (lambda r: r["data"].update(prefetch_batches=10_000), "data.prefetch_batches: 10000 out of range"),
    (lambda r: r["data"].pop("prefetch_batches"), "data.prefetch_batches: missing"),
    (lambda r: r["data"].pop("pin_memory"), "data.pin_memory: missing"),
    (lambda r: r.update(mixed_precision="bf16"), "mixed_precision: expected true or false, got 'bf16'"),
    (lambda r: r.update(mixed_precision=1), "mixed_precision: expected true or false, got 1"),
    (lambda r: r.pop("mixed_precision"), "mixed_precision: missing"),
    (lambda r: r["data"].update(workers=4), r"data: unknown key\(s\) \['workers'\]"),
])
def test_bad_gpu_path_values_name_the_key(mutate, message):
    with pytest.raises(ConfigError, match=message):
        _load(mutate)


def test_values_reach_run_configs_and_only_mixed_precision_is_hashed():
    base = _load(lambda r: None)
    t0, e0 = train_configs(base), eval_configs(base)
    fed = _load(lambda r: r["data"].update(pin_memory=False, prefetch_batches=0))
    t1 = train_configs(fed)
    mp = _load(lambda r: r.update(mixed_precision=True))
    t2, e2 = train_configs(mp), eval_configs(mp)
    tid = next(iter(t0))
    assert (t0[tid].pin_memory, t0[tid].prefetch_batches, t0[tid].mixed_precision) == (
        RAW["data"]["pin_memory"], RAW["data"]["prefetch_batches"], RAW["mixed_precision"])
    assert (t1[tid].pin_memory, t1[tid].prefetch_batches) == (False, 0)
    assert all(t0[k].digest() == t1[k].digest() for k in t0)  # feeding the device never changes results
    assert all(t2[k].mixed_precision and t0[k].digest() != t2[k].digest() for k in t0)
    assert all(e2[k].mixed_precision and e0[k].digest() != e2[k].digest() for k in e0)


def test_configs_written_before_the_new_fields_load_with_the_same_digest():
    cfg = next(iter(train_configs(_load(lambda r: r.update(mixed_precision=False))).values()))
    d = json.loads(cfg.to_json())
    for key in ("pin_memory", "prefetch_batches", "mixed_precision"):
        d.pop(key)
    old = TrainConfig.from_json(json.dumps(d))
    assert old.mixed_precision is False and old.prefetch_batches == 0 and old.digest() == cfg.digest()
    ecfg = next(iter(eval_configs(_load(lambda r: None)).values()))
    d = json.loads(ecfg.to_json())
    d.pop("mixed_precision")
    assert EvalConfig.from_json(json.dumps(d)).digest() == ecfg.digest()


# -- through the trainer and the evaluate stage -------------------------------------------------------------------

def _train_cfg(**kw):
    schedule = {"epochs": 1, "batch_size": 8, "train_limit": 200, "batches_per_epoch": 3, "val_limit": 16,
                "test_images": 4, "test_images_large": 4, "eps_ramp_epochs": 1, "lr_decay_every": 1,
                "augment_cifar": True, "val_vra_images": 0}
    base = dict(train_id="natural-gpu-path", scale="test", method="natural", method_params={}, model="CIFAR_Small",
                dataset="cifar10", eps=0.0, eps_start=0.0, seed=0, val_size=5000, split_seed=0, schedule=schedule,
                optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "decay_factor": 0.6},
                vra_domains=["interval"], verify={"dtype": "float64", "margin_tol": 1e-4, "batch_size": 16},
                memory_cap_gib=None, data_root=str(DATA_ROOT), device="cpu", threads=0, pin_memory=True,
                prefetch_batches=0, mixed_precision=False)
    base.update(kw)
    return TrainConfig(**base)


@needs_cifar
def test_trainer_prefetch_gives_the_synchronous_model_and_mixed_precision_trains(tmp_path):
    from pipeline.train import train
    quiet = lambda *_: None  # noqa: E731
    sync = train(_train_cfg(), tmp_path / "a", log=quiet)
    ahead = train(_train_cfg(prefetch_batches=2), tmp_path / "b", log=quiet)
    a, b = sync["model"].state_dict(), ahead["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sync["history"][0]["loss"] == ahead["history"][0]["loss"]
    mixed = train(replace(_train_cfg(prefetch_batches=2), mixed_precision=True), tmp_path / "c", log=quiet)
    assert np.isfinite(mixed["history"][0]["loss"])
    assert mixed["history"][0]["loss"] == pytest.approx(sync["history"][0]["loss"], rel=0.05)


@needs_data
def test_evaluate_stage_sets_mixed_precision_on_every_attack(tmp_path, monkeypatch):
    from pipeline.stages import evaluate
    from test_evaluate import _cfg
    seen = {}

    class Stop(Exception):
        pass

    def fake_evaluate_model(*args, attacks, **kw):
        seen.update({name: a.mixed_precision for name, a in attacks.items()})
        raise Stop
    monkeypatch.setattr(evaluate, "evaluate_model", fake_evaluate_model)
    model = build_model("MNIST_Small", [0.0], [1.0])
    ck = tmp_path / "pub.pth"
    torch.save(model.net.state_dict(), ck)
    for mp in (False, True):
        cfg = tmp_path / "cfg.json"
        cfg.write_text(_cfg(test_images=2, mixed_precision=mp).to_json())
        with pytest.raises(Stop):
            evaluate.main(["--config", str(cfg), "--model", str(ck), "--out", str(tmp_path / "out")])
        assert seen == {"pgd": mp, "cw": mp, "interval": mp}
