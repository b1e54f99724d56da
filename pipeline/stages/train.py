"""Stage: train one configuration of the grid.

``python -m pipeline.stages.train --config results/<scale>/config/train/<id>.json --out results/<scale>/train/<id>``
writes ``model.pt`` (the final ``state_dict``) and ``train.json`` (history, timings, provenance); both atomically,
``train.json`` last.  Re-running after a kill resumes from the last epoch checkpoint of the same configuration.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.runconfig import TrainConfig
from pipeline.train import train
from pipeline.utils import atomic_save_torch, atomic_write_json, provenance, sha256_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = TrainConfig.from_json(args.config.read_text())
    result = train(cfg, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    model_path = args.out / "model.pt"
    atomic_save_torch(model_path, result["model"].state_dict())
    atomic_write_json(args.out / "train.json", {
        "train_id": cfg.train_id, "method": cfg.method, "model": cfg.model, "eps": cfg.eps,
        "method_params": cfg.method_params, "history": result["history"],
        "batch_time_s": result["batch_time_s"], "train_time_s": result["train_time_s"], "steps": result["steps"],
        "batches_per_epoch": result["batches_per_epoch"], "train_images": result["train_images"],
        "peak_mem_mb": result["peak_mem_mb"], "peak_mem_kind": result["peak_mem_kind"],
        "provenance": provenance(result["device"], cfg.digest(), checkpoint_sha256=sha256_file(model_path)),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
