"""Stage: evaluate one run of the grid on the fixed seeded test subset.

``python -m pipeline.stages.evaluate --config <eval config json> --model <model.pt or external checkpoint>
[--train-json <train.json>] --out <dir>`` writes ``samples.json`` (per sample: id, label, prediction, verified,
verifying domain, min margin lower bound, which attacks broke it) and then ``metrics.json`` (ACC, ERA per attack, VRA
with 95% intervals, attack costs, training costs, the config file's name, provenance; for Table I rows the
equal-budget attack comparison), both atomically.  Every attack is built from the config, and the test files are
checked against the config's ``data_sha256``, before the model is loaded, so a bad attack parameter or changed data
fails before any work is done.  ``provenance.data_sha256`` records every data file
behind the row: the test files read here and the training files the model was trained on (from ``train.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.config import EXTERNAL
from pipeline.runconfig import EvalConfig
from pipeline.data import NORMALIZATION, load_split, load_test_subset, subset_indices
from pipeline.data.manifest import check_hashes
from pipeline.attacks import get_attack
from pipeline.evaluation import equal_budget, evaluate_model, summarize
from pipeline.models import load_external, load_model
from pipeline.utils.provenance import record_code_version
from pipeline.utils import atomic_write_json, provenance, resolve_device, sha256_file
from pipeline.utils.io import remove_stale_temp_files


def _report_out_of_memory(cfg: EvalConfig, train_info: dict, out: Path, config_file: str) -> int:
    """A training stopped at the memory cap has no model to evaluate: say so, with its measured peak."""
    atomic_write_json(out / "samples.json", {})
    atomic_write_json(out / "metrics.json", {
        "run_id": cfg.run_id, "train_id": cfg.train_id, "config_file": config_file, "scale": cfg.scale,
        "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset, "eps": cfg.eps, "eps_text": cfg.eps_text,
        "status": "out_of_memory", "train": {k: train_info.get(k) for k in (
            "status", "peak_mem_mb", "peak_mem_kind", "memory_cap_gib")},
        "provenance": {**(train_info.get("provenance") or {}),
                       "data_sha256": _train_data(train_info)}})
    print(f"{cfg.run_id}: out of memory in training (peak >= {train_info['peak_mem_mb']:.0f} MB); not evaluated",
          file=sys.stderr)
    return 0


def _train_data(train_info: dict) -> dict[str, str]:
    return dict((train_info.get("provenance") or {}).get("data_sha256") or {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--train-json", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    record_code_version()
    cfg = EvalConfig.from_json(args.config.read_text())
    train_info = json.loads(args.train_json.read_text()) if args.train_json else {}
    remove_stale_temp_files(args.out)
    if train_info.get("status") == "out_of_memory":
        return _report_out_of_memory(cfg, train_info, args.out, args.config.name)
    test_sha256 = check_hashes(cfg.data_root, cfg.dataset, "test", cfg.data_sha256)
    attacks = {name: get_attack(name)(**kw) for name, kw in cfg.attacks.items()}
    table1_attacks = ({name: get_attack(name)(**kw) for name, kw in cfg.table1["attacks"].items()}
                      if cfg.table1 is not None else {})
    for attack in (*attacks.values(), *table1_attacks.values()):
        attack.mixed_precision = cfg.mixed_precision  # the search only; clean and re-check forwards stay float32
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.method == EXTERNAL:
        ck = cfg.checkpoint
        model = load_external(cfg.model, args.model, ck["mean"], ck["std"], stage=ck.get("stage"))
    else:
        norm = NORMALIZATION[cfg.dataset]
        model = load_model(cfg.model, args.model, norm.mean, norm.std)
    model = model.to(device)
    test = load_split(cfg.dataset, cfg.data_root, "test")
    ids = load_test_subset(cfg.dataset)[: cfg.test_images]
    idx = subset_indices(test, ids)
    x, y = test.float_images(idx).to(device), test.y[idx].to(device)
    dtype = getattr(torch, cfg.verify["dtype"])
    samples = evaluate_model(model, x, y, ids, cfg.eps, cfg.vra_domains, dtype, cfg.verify["margin_tol"],
                             cfg.verify["batch_size"], attacks=attacks, attack_seed=cfg.attack_seed,
                             attack_chunk=cfg.attack_chunk, progress_label=cfg.run_id)
    table1 = None
    if cfg.table1 is not None:
        n1 = cfg.table1["images"] or len(x)
        table1 = equal_budget(model, x[:n1], y[:n1], cfg.eps, table1_attacks, cfg.table1["budget_passes"],
                              cfg.attack_seed, max_runs=cfg.table1.get("max_runs"))
    metrics = {
        "run_id": cfg.run_id, "train_id": cfg.train_id, "config_file": args.config.name, "scale": cfg.scale,
        "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset, "eps": cfg.eps, "eps_text": cfg.eps_text,
        **summarize(samples), "vra_domains": cfg.vra_domains, "verify": cfg.verify, "attacks": cfg.attacks,
        **({"table1": {**table1, "settings": cfg.table1}} if table1 is not None else {}),
        "train": {k: train_info.get(k) for k in ("batch_time_s", "train_time_s", "peak_mem_mb", "peak_mem_kind",
                                                 "steps", "train_images", "history", "status",
                                                 "memory_cap_gib")} if train_info else None,
        "provenance": provenance(device, cfg.digest(), dtype=f"model float32, bounds {cfg.verify['dtype']}",
                                 checkpoint_sha256=sha256_file(args.model),
                                 data_sha256={**_train_data(train_info), **test_sha256}),
    }
    atomic_write_json(args.out / "samples.json", samples.to_dict())
    atomic_write_json(args.out / "metrics.json", metrics)
    eras = " ".join(f"ERA({a}) {metrics[f'era_{a}']:.4f}" for a in cfg.attacks)
    print(f"{cfg.run_id}: ACC {metrics['acc']:.4f} {eras} VRA {metrics['vra']:.4f} (n={metrics['n']})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
