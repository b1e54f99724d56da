"""The training loop shared by every method: data, optimiser and decay, ε ramp, validation, checkpoints, timing.

Checkpoints: one per epoch, written atomically into ``<out>/ckpt-<digest>/`` where ``digest`` hashes the run's
resolved configuration, so a changed parameter never resumes from a stale checkpoint (older digests are deleted).
After a kill the loop resumes from the last complete epoch with the model, optimiser, scheduler, method state and
every RNG restored, so a resumed run ends with the same weights as an uninterrupted one (on the same device).
Checkpoints hold tensors and plain containers only and load with ``weights_only=True``.

Data: each epoch's batches come from :class:`~pipeline.train.batches.EpochBatches` (``prefetch_batches`` made
ahead on a background thread, pinned host memory on CUDA; the same batches and RNG draws as the synchronous path).
``mixed_precision`` is handed to the method, which autocasts its natural and attack parts only, never bounds.
``compile_bounds``: the steps run inside :func:`pipeline.bounds.kernels.compiled_kernels` (fused, compiled bound
kernels for the training loss; the per-epoch validation VRA is verification and stays eager).

Time limit: a schedule's ``time_limit_min`` (params.yaml ``scales.<s>.schedule_overrides``) stops training once the
wall time of the epochs (batches and per-epoch validation accuracy; not the validation VRA) reaches it, keeping the
weights the method keeps (the last ones, or its running average of them: :meth:`Method.finalize`; no
best-on-validation selection); ``wall_time_s`` per epoch records it, and resume restores it.

Timing: ``batch_time_s`` is the median wall time of one optimiser step (loss, backward, step; CUDA synchronised);
``train_time_s`` sums the epochs' training time and excludes validation.  After every epoch (with the weights the
method would keep, :meth:`Method.evaluation_weights`) the validation accuracy is measured and the first
``val_vra_images`` validation images are certified at the target ε with the model's fixed ``vra_domains`` (Table V);
that cost is recorded per epoch as ``val_vra_time_s``, outside the training time.  ``peak_mem_mb`` is the peak CUDA
allocation on GPU, else the process's peak RSS (which includes the dataset in memory).
"""
from __future__ import annotations

import math
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.bounds import verify
from pipeline.bounds.kernels import compiled_kernels
from pipeline.runconfig import TrainConfig
from pipeline.data import NORMALIZATION, load_dataset, split_train_val
from pipeline.models import build_model
from pipeline.train.batches import EpochBatches, augment_crop_flip
from pipeline.train.registry import get_method
from pipeline.utils import atomic_save_torch, load_checkpoint, resolve_device
from pipeline.utils.progress import progress

__all__ = ["train", "eps_at", "augment_crop_flip", "training_indices"]


def eps_at(step: int, ramp_steps: int, eps_start: float, eps: float) -> float:
    """Linear ε ramp from ``eps_start`` to ``eps`` over ``ramp_steps`` optimiser steps, then constant."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return eps
    return eps_start + (eps - eps_start) * step / ramp_steps


def training_indices(n_train: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions in the official training set: seeded split, then the scale's ``train_limit``."""
    train_idx, val_idx = split_train_val(n_train, cfg.val_size, cfg.split_seed)
    limit = cfg.schedule["train_limit"]
    if limit is not None and limit < len(train_idx):
        pick = np.random.default_rng(cfg.split_seed).permutation(len(train_idx))[:limit]
        train_idx = np.sort(train_idx[pick])
    return train_idx, val_idx[: cfg.schedule["val_limit"]]


def _peak_mem_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, bs: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + bs].to(device)).argmax(1).cpu() == y[i:i + bs]).sum().item()
                  for i in range(0, len(y), bs))
    return correct / max(1, len(y))


def _val_vra(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Validation VRA at the target ε with the model's verification domains, and what it cost (not train time)."""
    n = cfg.schedule["val_vra_images"]
    if not n or cfg.eps <= 0:
        return {}
    t0 = time.perf_counter()
    v = cfg.verify
    res = verify(model, x[:n].to(device), y[:n].to(device), cfg.eps, cfg.vra_domains,
                 dtype=getattr(torch, v["dtype"]), margin_tol=v["margin_tol"], batch_size=v["batch_size"])
    return {"val_vra": sum(res.verified) / n, "val_vra_time_s": time.perf_counter() - t0}


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    files = sorted(ckpt_dir.glob("epoch_*.pt"))
    return files[-1] if files else None


def train(cfg: TrainConfig, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the summary (history, timings, device).  Writes no final model:
    the caller saves ``model`` atomically together with its metrics."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sched_cfg = cfg.schedule
    data = load_dataset(cfg.dataset, cfg.data_root).train
    train_idx, val_idx = training_indices(len(data), cfg)
    x_val, y_val = data.float_images(val_idx), data.y[val_idx]
    bs = sched_cfg["batch_size"]
    n_batches = len(train_idx) // bs
    if sched_cfg["batches_per_epoch"]:
        n_batches = min(n_batches, sched_cfg["batches_per_epoch"])
    if n_batches < 1:
        raise ValueError(f"training set of {len(train_idx)} images is smaller than one batch of {bs}")
    ramp_steps = sched_cfg["eps_ramp_epochs"] * n_batches
    augment = cfg.dataset == "cifar10" and sched_cfg["augment_cifar"]

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    norm = NORMALIZATION[cfg.dataset]
    model = build_model(cfg.model, norm.mean, norm.std).to(device)
    method = get_method(cfg.method)(cfg.method_params, cfg.dataset, cfg.seed)
    method.mixed_precision = cfg.mixed_precision  # bfloat16 autocast for natural/attack parts only, never bounds
    method.target_eps = cfg.eps
    method.prepare_model(model)  # before the optimiser sees the parameters; a resume overwrites it below
    o = cfg.optim
    if o["name"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=sched_cfg["lr_decay_every"],
                                            gamma=sched_cfg.get("lr_decay_factor", o["decay_factor"]))

    ckpt_dir = out_dir / f"ckpt-{cfg.digest()}"
    for stale in out_dir.glob("ckpt-*"):
        if stale != ckpt_dir:
            shutil.rmtree(stale, ignore_errors=True)
    history: list[dict[str, Any]] = []
    step_times: list[float] = []
    train_time, start_epoch = 0.0, 0
    # time limit (scale schedule_overrides time_limit_min): wall time of the epochs' loops (data, steps) and of the
    # per-epoch validation accuracy, not of the validation VRA (a measurement); the step that crosses it finishes,
    # then training ends with the last weights.  Restored on resume, so a kill does not buy extra time.
    limit_s = None if sched_cfg.get("time_limit_min") is None else 60.0 * sched_cfg["time_limit_min"]
    wall_used, stopped = 0.0, False
    last = _latest_checkpoint(ckpt_dir)
    if last is not None:
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, step_times = state["history"], state["step_times"]
        train_time, start_epoch = state["train_time"], state["epoch"] + 1
        wall_used, stopped = float(state.get("wall_used", 0.0)), bool(state.get("stopped", False))
        log(f"resumed from {last} (epoch {start_epoch} of {sched_cfg['epochs']})")

    for epoch in range(start_epoch, sched_cfg["epochs"]):
        if stopped:
            break
        model.train()
        epoch_wall0 = time.perf_counter()
        perm = torch.randperm(len(train_idx), generator=gen)
        losses, epoch_time = [], 0.0
        batches = EpochBatches(data, train_idx[perm.numpy()], bs, n_batches, augment, gen, device,
                               pin_memory=cfg.pin_memory, prefetch_batches=cfg.prefetch_batches)
        with batches:
            bar = progress(batches, total=n_batches, unit="batch",
                           desc=f"{cfg.train_id} epoch {epoch + 1}/{sched_cfg['epochs']}")
            for b, (x, y) in enumerate(bar):
                eps = eps_at(epoch * n_batches + b, ramp_steps, cfg.eps_start, cfg.eps)
                t0 = time.perf_counter()
                with compiled_kernels(cfg.compile_bounds):
                    loss, stats = method.loss(model, x, y, eps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                method.after_step(model)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                step_times.append(dt)
                epoch_time += dt
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"{cfg.train_id}: loss became {loss.item()} at epoch {epoch + 1}, "
                                             f"batch {b + 1}")
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}", eps=f"{eps:.4f}")
                if limit_s is not None and wall_used + time.perf_counter() - epoch_wall0 >= limit_s:
                    stopped = True
                    log(f"{cfg.train_id}: time limit {limit_s / 60:g} min reached at epoch {epoch + 1}, batch "
                        f"{b + 1}/{n_batches}; keeping the last weights")
                    break
        lr = opt.param_groups[0]["lr"]
        sched.step()
        train_time += epoch_time
        with method.evaluation_weights(model):  # the weights the run would keep now (e.g. an average)
            val_acc = _accuracy(model, x_val, y_val, device)
            wall_used += time.perf_counter() - epoch_wall0
            val_vra = _val_vra(model, x_val, y_val, cfg, device)
        entry = {"epoch": epoch + 1, "loss": statistics.fmean(losses), "val_acc": val_acc, "eps": eps,
                 "lr": lr, "train_time_s": train_time, "wall_time_s": wall_used,
                 **({"stopped_at_time_limit": True} if stopped else {}),
                 **val_vra, **method.end_epoch(epoch + 1, val_acc)}
        history.append(entry)
        vra = f" val_vra {entry['val_vra']:.4f}" if "val_vra" in entry else ""
        log(f"{cfg.train_id}: epoch {epoch + 1}/{sched_cfg['epochs']} loss {entry['loss']:.4f} "
            f"val_acc {val_acc:.4f}{vra} ({epoch_time:.1f}s)")
        atomic_save_torch(ckpt_dir / f"epoch_{epoch + 1:04d}.pt", {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "method": method.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": history, "step_times": step_times, "train_time": train_time, "epoch": epoch,
            "wall_used": wall_used, "stopped": stopped})
        for old in ckpt_dir.glob("epoch_*.pt"):
            if old.name != f"epoch_{epoch + 1:04d}.pt":
                old.unlink(missing_ok=True)

    method.finalize(model)  # the weights the run keeps: the last ones, or the method's average
    peak, peak_kind = _peak_mem_mb(device)
    return {"model": model, "history": history, "batch_time_s": statistics.median(step_times) if step_times else None,
            "train_time_s": train_time, "steps": len(step_times), "peak_mem_mb": peak, "peak_mem_kind": peak_kind,
            "device": device, "batches_per_epoch": n_batches, "train_images": len(train_idx),
            "time_limit_s": limit_s, "stopped_at_time_limit": stopped, "wall_time_s": wall_used}
