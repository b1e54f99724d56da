"""params.yaml validation: one clear error naming the key, before any stage runs."""
import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import canonical_run_id, load_params, params_from_dict, parse_eps
from pipeline.runconfig import train_configs
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _load(mutate):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    return params_from_dict(raw, ROOT)


def test_committed_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.scale in p.scales and p.runs and p.tables


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(scale="huge"), "scale: 'huge' is not defined"),
    (lambda r: r.update(k=0), r"k: 0 out of range"),
    (lambda r: r.update(k="five"), "k: expected an integer"),
    (lambda r: r.update(memory_cap_gib=float("nan")), "memory_cap_gib: expected a finite number"),
    (lambda r: r["scales"]["smoke"].update(memory_cap_gib=0), r"scales.smoke.memory_cap_gib: 0 out of range"),
    (lambda r: r["scales"]["smoke"].update(memory_cap_gib="8G"), "scales.smoke.memory_cap_gib: expected a number"),
    (lambda r: r["verify"].update(margin_tol=float("inf")), "verify.margin_tol: expected a finite number"),
    (lambda r: r.update(figures={"fig9": {}}), "figures: expected a mapping with any of the keys"),
    (lambda r: r["figures"].update(fig7=["natural-MNIST_Small-eps0.1", "natural-MNIST_Small-eps0.3"]),
     "figures.fig7.*is a natural run; expected a mixtrain run"),
    (lambda r: r["scales"]["smoke"]["attack_overrides"].update(pgd={"stepz": 3}),
     "scales.smoke.attack_overrides.pgd.stepz: not a hyperparameter"),
    (lambda r: r.update(device="tpu"), "device: expected auto, cpu or cuda"),
    (lambda r: r.update(compile_bounds="yes"), "compile_bounds: expected true or false, got .yes."),
    (lambda r: r.update(data_root="/nonexistent/data"), "data_root: /nonexistent/data is not a directory"),
    (lambda r: r.update(colour="blue"), r"unknown key\(s\) \['colour'\]"),
    (lambda r: r["scales"]["smoke"].update(epochs=0), r"scales.smoke.epochs: 0 out of range \[1, "),
    (lambda r: r["scales"]["smoke"].pop("batch_size"), r"scales.smoke.batch_size: missing"),
    (lambda r: r["verify"].update(dtype="float16"), "verify.dtype: expected float32 or float64"),
    (lambda r: r["models"]["MNIST_Small"].update(vra_domains=["magic"]), r"models.MNIST_Small.vra_domains"),
    (lambda r: r["runs"].update({"natural-MNIST_Small-eps9": {"method": "natural", "model": "MNIST_Small",
                                                              "eps": 9}}), r"ε=9 must lie in \[0, 1\]"),
    (lambda r: r["runs"].update({"foo": {"method": "natural", "model": "MNIST_Small", "eps": 0.1}}),
     "runs.foo: run id must name every value.*expected 'natural-MNIST_Small-eps0.1'"),
    (lambda r: r["runs"].update({"mixtrain-MNIST_Small-eps0.1": {"method": "mixtrain", "model": "MNIST_Small",
                                                                 "eps": 0.1, "overrides": {"k": 20}}}),
     "expected 'mixtrain-k20-MNIST_Small-eps0.1'"),
    (lambda r: r["runs"].update({"x": {"method": "magic", "model": "MNIST_Small", "eps": 0.1}}),
     "runs.x.method: 'magic' is not a method"),
    (lambda r: r["tables"].update(table3=["nope"]), "tables.table3: run 'nope' is not defined"),
    (lambda r: r["methods"]["mixtrain"].update(domain="zonotopez"), "methods.mixtrain.domain: 'zonotopez'"),
    (lambda r: r["methods"]["mixtrain"].update(alpha=1.5), r"methods.mixtrain.alpha .*out of range"),
    (lambda r: r["methods"]["mixtrain"]["alpha_rule"]["cifar10"].update(kind="wobbly"),
     "methods.mixtrain.alpha_rule.cifar10.kind"),
    (lambda r: r["runs"].update({"mixtrain-k0-MNIST_Small-eps0.1": {
        "method": "mixtrain", "model": "MNIST_Small", "eps": 0.1, "overrides": {"k": 0}}}),
     r"runs.mixtrain-k0-MNIST_Small-eps0.1.overrides.k: 0 out of range"),
])
def test_bad_values_name_the_key(mutate, message):
    with pytest.raises(ConfigError, match=message):
        _load(mutate)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["attacks"]["pgd"].update(steps={"mnist": 40, "cifar10": -7}), r"attacks.pgd .*dataset cifar10.*steps"),
    (lambda r: r["methods"]["madry"].update(step=float("inf")), r"run madry-.*madry step: expected a finite number"),
    (lambda r: r["methods"]["sinha"].update(gamma=0), r"run sinha-.*sinha gamma"),
])
def test_semantic_errors_before_any_job(mutate, message):
    """Values that are well-formed but that a method or attack rejects fail when the workflow loads the params."""
    from pipeline.validate import check_buildable
    with pytest.raises(ConfigError, match=message):
        check_buildable(_load(mutate))


def test_eps_fractions_and_ids():
    assert parse_eps("2/255", "e") == (2 / 255, "2_255")
    assert canonical_run_id("mixtrain", "CIFAR_Small", "2_255", {"k": 20}) == "mixtrain-k20-CIFAR_Small-eps2_255"


def test_run_ids_unique_and_training_shared_only_when_eps_free():
    p = load_params(ROOT / "params.yaml")
    cfgs = train_configs(p)
    # Natural training ignores eps: its two MNIST_Small eps rows share one trained model ...
    assert p.runs["natural-MNIST_Small-eps0.1"].train_id == p.runs["natural-MNIST_Small-eps0.3"].train_id
    # ... every other distinct run trains its own, and distinct trainings never share a digest.
    assert len({c.digest() for c in cfgs.values()}) == len(cfgs)


def test_top_level_k_reaches_only_runs_that_follow_it():
    base = train_configs(load_params(ROOT / "params.yaml"))
    changed = train_configs(_load(lambda r: r.update(k=5)))
    differing = sorted(t for t in base if base[t].digest() != changed[t].digest())
    assert differing and all(t.startswith("mixtrain-") and "-k" not in t.split("-eps")[0][8:] for t in differing)
    assert "mixtrain-k20-CIFAR_Small-eps2_255" not in differing


def test_a_scale_memory_cap_replaces_the_top_level_one():
    """scales.<s>.memory_cap_gib wins at that scale only; the schedule (and so the digests of runs) does not carry it."""
    smoke = _load(lambda r: r.update(scale="smoke"))
    cpu = _load(lambda r: r.update(scale="cpu"))
    assert smoke.memory_cap_gib == RAW["scales"]["smoke"]["memory_cap_gib"] != RAW["memory_cap_gib"]
    assert cpu.memory_cap_gib == RAW["memory_cap_gib"]
    cfg = next(iter(train_configs(smoke).values()))
    assert cfg.memory_cap_gib == smoke.memory_cap_gib and "memory_cap_gib" not in cfg.schedule


def test_digest_ignores_location_and_device():
    p = load_params(ROOT / "params.yaml")
    a = train_configs(p)["natural-MNIST_Small"]
    b = train_configs(_load(lambda r: r.update(device="cpu", threads=1)))["natural-MNIST_Small"]
    assert a.digest() == b.digest()


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
