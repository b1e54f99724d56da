"""Stage: train one configuration of the grid, in its own process, under the memory cap.

``python -m pipeline.stages.train --config results/<scale>/config/train/<id>-<hash>.json --out results/<scale>/train/<id>``
writes ``model.pt`` (the final ``state_dict``) and ``train.json`` (history, timings, the config file's name, provenance
with the sha256 of every data file read); both atomically, ``train.json`` last.  Re-running after a kill resumes from
the last epoch checkpoint of the same configuration; temp files a killed write left behind are removed first.  The
training files are checked against the config's ``data_sha256`` before anything else is done, and a difference stops
the stage with an error naming the file.

The training runs in a worker process (this module with ``--worker``) watched by
:func:`pipeline.utils.memcap.run_capped`.
If it exceeds ``memory_cap_gib`` the worker is stopped and the stage still succeeds, writing ``train.json`` with
``"status": "out_of_memory"`` and the measured peak, and an empty ``model.pt`` — the paper's "Out of memory" row,
never a silent skip.  The evaluate stage reports such a run without evaluating it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The supervising process imports nothing that imports torch (seconds per job, paid once per training by the
# worker alone); the worker's imports are in worker().  tests/test_imports.py checks it.
from pipeline.data.manifest import check_hashes
from pipeline.runconfig import TrainConfig
from pipeline.utils.io import atomic_save_torch, atomic_write_json, remove_stale_temp_files, sha256_file
from pipeline.utils.memcap import OOM_EXIT, cap_cuda_memory, die_with_parent, run_capped
from pipeline.utils.provenance import provenance, record_code_version, resolve_device

#: the worker creates this file in the run's folder when it finds itself on CUDA, where it caps its allocator
#: instead, and the supervisor stops capping host memory (``device: auto`` is resolved by the worker's torch only)
ON_CUDA_FLAG = ".worker-on-cuda"


def _cap_bytes(cfg: TrainConfig) -> int | None:
    return None if cfg.memory_cap_gib is None else int(cfg.memory_cap_gib * 2**30)


def _is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or the CPU allocator refusing a tensor larger than the host can give."""
    import torch
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e)


def worker(cfg: TrainConfig, config_path: Path, out: Path) -> int:
    import resource

    import torch

    from pipeline.train import train

    die_with_parent()
    record_code_version()
    data_sha256 = check_hashes(cfg.data_root, cfg.dataset, "train", cfg.data_sha256)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        out.mkdir(parents=True, exist_ok=True)
        (out / ON_CUDA_FLAG).touch()
    cap_cuda_memory(device, _cap_bytes(cfg))
    try:
        result = train(cfg, out, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
        print(f"{cfg.train_id}: out of memory: {e}", file=sys.stderr)
        if device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
        else:  # the allocation that failed was never made: the peak is what the process held
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss_at_failure"
        atomic_write_json(out / "oom.json", {"peak_mem_mb": peak, "peak_mem_kind": kind})
        return OOM_EXIT
    model_path = out / "model.pt"
    atomic_save_torch(model_path, result["model"].state_dict())
    atomic_write_json(out / "train.json", {
        "train_id": cfg.train_id, "config_file": config_path.name, "status": "ok", "method": cfg.method,
        "model": cfg.model, "eps": cfg.eps,
        "method_params": cfg.method_params, "history": result["history"],
        "batch_time_s": result["batch_time_s"], "train_time_s": result["train_time_s"], "steps": result["steps"],
        "batches_per_epoch": result["batches_per_epoch"], "train_images": result["train_images"],
        "time_limit_s": result["time_limit_s"], "stopped_at_time_limit": result["stopped_at_time_limit"],
        "wall_time_s": result["wall_time_s"],
        "peak_mem_mb": result["peak_mem_mb"], "peak_mem_kind": result["peak_mem_kind"],
        "memory_cap_gib": cfg.memory_cap_gib,
        "provenance": provenance(result["device"], cfg.digest(), checkpoint_sha256=sha256_file(model_path),
                                 data_sha256=data_sha256),
    })
    return 0


def supervise(cfg: TrainConfig, config_path: Path, out: Path) -> int:
    data_sha256 = check_hashes(cfg.data_root, cfg.dataset, "train", cfg.data_sha256)  # changed data stops here
    for tmp in remove_stale_temp_files(out):
        print(f"{cfg.train_id}: removed {tmp} (left by an interrupted write)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pipeline.stages.train", "--config", str(config_path), "--out", str(out), "--worker"]
    flag = out / ON_CUDA_FLAG
    for leftover in (flag, out / "oom.json"):  # a killed supervisor's: neither may speak for this attempt
        leftover.unlink(missing_ok=True)
    try:
        res = run_capped(cmd, None if cfg.device == "cuda" else _cap_bytes(cfg), lift_cap_file=flag)
    finally:
        flag.unlink(missing_ok=True)
    if not res.out_of_memory:
        return res.returncode
    oom = out / "oom.json"
    peak, kind = res.peak_rss_mb, "process_rss_when_stopped"
    if oom.is_file():
        info = json.loads(oom.read_text())
        peak, kind = info["peak_mem_mb"], info["peak_mem_kind"]
        oom.unlink()
    print(f"{cfg.train_id}: out of memory (peak >= {peak:.0f} MB, cap {cfg.memory_cap_gib} GiB); reported as such",
          file=sys.stderr)
    model_path = out / "model.pt"
    atomic_save_torch(model_path, {})
    atomic_write_json(out / "train.json", {
        "train_id": cfg.train_id, "config_file": config_path.name, "status": "out_of_memory", "method": cfg.method,
        "model": cfg.model,
        "eps": cfg.eps, "method_params": cfg.method_params, "peak_mem_mb": peak, "peak_mem_kind": kind,
        "memory_cap_gib": cfg.memory_cap_gib, "history": [], "batch_time_s": None, "train_time_s": None,
        "provenance": provenance(resolve_device(cfg.device), cfg.digest(), checkpoint_sha256=None,
                                 data_sha256=data_sha256),
    })
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = TrainConfig.from_json(args.config.read_text())
    if args.worker:
        return worker(cfg, args.config, args.out)
    return supervise(cfg, args.config, args.out)


if __name__ == "__main__":
    sys.exit(main())
