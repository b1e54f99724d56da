"""Stage: one of the paper's figures, as a PNG plus the JSON data behind it (DVC tracks both).

``python -m pipeline.stages.figures --figure fig4 --config results/<scale>/config/figures/figures-<hash>.json
--results results/<scale> --out reports/<scale>/figures``

The figures config names the config file of every run a figure reads (``configs``); the data files a figure reads
are checked against those configs' ``data_sha256`` first.  Each ``<fig>.json`` records the figures config's name.

- ``fig2``: losses (cross-entropy at the returned point) found by PGD, CW and the interval attack from ``starts``
  random starts, for the first ``images`` correctly classified test images of the subset, on one trained model.
- ``fig4``: verified robust loss of the run's MixTrain domain over the first ``figure_images`` training images (the
  seeded training split; all of it at paper scale) vs. a random k-sample of them.
- ``fig5``: ERA(PGD) and VRA of each listed run at ε × ``eps_factors``, on its evaluation test images.
- ``fig7``: ACC, ERA(PGD), VRA of the fixed-α MixTrain runs, read from their metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.attacks import get_attack
from pipeline.bounds import verify
from pipeline.data import NORMALIZATION, load_dataset, load_split, load_test_subset, subset_indices
from pipeline.data.manifest import check_hashes
from pipeline.figures import (fig4_data, fig5_data, fig7_data, per_sample_verified_loss, plot_fig2, plot_fig4,
                              plot_fig5, plot_fig7, plot_note)
from pipeline.models import load_model
from pipeline.runconfig import EvalConfig, TrainConfig
from pipeline.train import training_indices
from pipeline.utils import atomic_write_json, resolve_device

FIGURES = ("fig2", "fig4", "fig5", "fig7")


def _config_file(spec: dict, kind: str, name: str) -> Path:
    """The config file of a run (``kind`` eval) or training (``kind`` train) that the figure's spec names."""
    try:
        return Path(spec["configs"][kind][name])
    except KeyError:
        raise KeyError(f"the figures config names no {kind} config for {name!r}") from None


def _eval_cfg(spec: dict, rid: str) -> EvalConfig:
    return EvalConfig.from_json(_config_file(spec, "eval", rid).read_text())





def _model(results: Path, cfg: EvalConfig, device: torch.device) -> torch.nn.Module:
    norm = NORMALIZATION[cfg.dataset]
    return load_model(cfg.model, results / "train" / cfg.train_id / "model.pt", norm.mean, norm.std).to(device).eval()


def _out_of_memory(results: Path, cfg: EvalConfig) -> bool:
    """Whether the run's training stopped at the memory cap (its model.pt is empty; nothing to draw)."""
    info = results / "train" / cfg.train_id / "train.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "out_of_memory"


def _not_drawn(name: str, rid: str, out: Path) -> dict:
    plot_note(f"{name} not drawn: {rid} ran out of memory in training", out / f"{name}.png")
    return {"run": rid, "not_drawn": "out_of_memory"}


def _test_images(cfg: EvalConfig, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    check_hashes(cfg.data_root, cfg.dataset, "test", cfg.data_sha256)  # DataError naming a changed file
    test = load_split(cfg.dataset, cfg.data_root, "test")
    idx = subset_indices(test, load_test_subset(cfg.dataset)[:n])
    return test.float_images(idx).to(device), test.y[idx].to(device)


def fig2(spec: dict, results: Path, out: Path, device: torch.device) -> dict:
    cfg = _eval_cfg(spec, spec["run"])
    if _out_of_memory(results, cfg):
        return _not_drawn("fig2", cfg.run_id, out)
    model = _model(results, cfg, device)
    x, y = _test_images(cfg, cfg.test_images, device)
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().flatten()[: spec["images"]]
    x, y = x[ok], y[ok]
    losses: dict[str, list[list[float]]] = {}
    for i, (name, kw) in enumerate(cfg.attacks.items()):
        attack = get_attack(name)(**{**kw, "random_start": True, **({"restarts": 1} if "restarts" in kw else {})})
        gen = torch.Generator().manual_seed(cfg.attack_seed + 500 + i)
        per_start = []
        for _ in range(spec["starts"]):
            res = attack(model, x, y, cfg.eps, generator=gen)
            with torch.no_grad():
                per_start.append(F.cross_entropy(model(res.x_adv.to(device)), y, reduction="none").tolist())
        losses[name] = [list(v) for v in zip(*per_start)]  # [image][start]
    title = f"{cfg.run_id}: loss found from {spec['starts']} random starts ({len(y)} test images)"
    plot_fig2(losses, title, out / "fig2.png")
    return {"run": cfg.run_id, "eps": cfg.eps, "starts": spec["starts"], "losses": losses}


def fig4(spec: dict, results: Path, out: Path, device: torch.device) -> dict:
    ecfg = _eval_cfg(spec, spec["run"])
    if _out_of_memory(results, ecfg):
        return _not_drawn("fig4", ecfg.run_id, out)
    tcfg = TrainConfig.from_json(_config_file(spec, "train", ecfg.train_id).read_text())
    model = _model(results, ecfg, device)
    check_hashes(tcfg.data_root, tcfg.dataset, "train", tcfg.data_sha256)
    train = load_dataset(tcfg.dataset, tcfg.data_root).train
    idx, _ = training_indices(len(train), tcfg)
    if spec["population"] is not None:
        idx = idx[: spec["population"]]
    x, y = train.float_images(idx).to(device), train.y[idx].to(device)
    losses = per_sample_verified_loss(model, x, y, tcfg.eps, tcfg.method_params["domain"]).cpu()
    d = fig4_data(losses, spec["k"], torch.Generator().manual_seed(tcfg.seed))
    plot_fig4(d, f"{ecfg.run_id} ({tcfg.method_params['domain']}, ε={ecfg.eps_text})", out / "fig4.png")
    return {"run": ecfg.run_id, "domain": tcfg.method_params["domain"], **d}


def fig5(spec: dict, results: Path, out: Path, device: torch.device) -> dict:
    panels, skipped = {}, {}
    for rid in spec["runs"]:
        cfg = _eval_cfg(spec, rid)
        if _out_of_memory(results, cfg):
            skipped[rid] = "out_of_memory"
            continue
        model = _model(results, cfg, device)
        n = cfg.test_images if spec["images"] is None else min(spec["images"], cfg.test_images)
        x, y = _test_images(cfg, n, device)
        pgd = get_attack("pgd")(**cfg.attacks["pgd"])
        eps_values, era, vra = [], [], []
        for f in spec["eps_factors"]:
            eps = cfg.eps * f
            res = pgd(model, x, y, eps, generator=torch.Generator().manual_seed(cfg.attack_seed))
            v = verify(model, x, y, eps, cfg.vra_domains, dtype=getattr(torch, cfg.verify["dtype"]),
                       margin_tol=cfg.verify["margin_tol"], batch_size=cfg.verify["batch_size"])
            broken = res.success.tolist()
            if any(a and b for a, b in zip(v.verified, broken)):
                raise AssertionError(f"soundness bug: {rid} at ε={eps}: a verified sample was broken by PGD")
            eps_values.append(eps)
            era.append(sum(not b for b in broken) / n)
            vra.append(sum(v.verified) / n)
        panels[rid] = fig5_data(eps_values, era, vra, n)
    if panels:
        plot_fig5(panels, out / "fig5.png")
    else:
        plot_note("fig5 not drawn: every run ran out of memory in training", out / "fig5.png")
    return {"panels": panels, "not_drawn": skipped}


def fig7(spec: list, results: Path, out: Path, device: torch.device) -> dict:
    points = []
    for item in spec:
        path = results / "eval" / item["run"] / "metrics.json"
        points.append((item["alpha"], json.loads(path.read_text())))
    d = fig7_data(points)
    plot_fig7(d, "CIFAR_Small: fixed α (MixTrain)", out / "fig7.png")
    return {"runs": [item["run"] for item in spec], **d}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", choices=FIGURES, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    device = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    args.out.mkdir(parents=True, exist_ok=True)
    make = {"fig2": fig2, "fig4": fig4, "fig5": fig5, "fig7": fig7}[args.figure]
    data = make(cfg[args.figure], args.results, args.out, device)
    atomic_write_json(args.out / f"{args.figure}.json", {"scale": cfg["scale"], "config_file": args.config.name, **data})
    print(f"{args.figure} written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
