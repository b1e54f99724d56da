"""MixTrain+ ablation at equal wall-clock: train MNIST_Small variants under one time limit, then certify.

    python benchmarks/ablate_mixtrain_plus.py --eps 0.1 --minutes 6 --variants recipe default_init
    python benchmarks/ablate_mixtrain_plus.py --list          # the variants and what each changes
    python benchmarks/ablate_mixtrain_plus.py --eps 0.3 --pipeline-schedule --variants recipe lr_decay0.25
    python benchmarks/ablate_mixtrain_plus.py --eps 0.3 --evaluate results/cpu/train/mixtrain_plus-MNIST_Small-eps0.3/model.pt
    python benchmarks/ablate_mixtrain_plus.py --eps 0.3 --evaluate <model.pt> --domains backward_crown   # another verifier

Each variant is the params.yaml ``mixtrain_plus`` entry with some hyperparameters changed, trained by the pipeline's
own trainer (:func:`pipeline.train.train`) at the cpu scale's data split with a time limit of ``--minutes``, its
epoch schedule sized for that budget from the variant's measured step cost (``--ms-per-step``, see
benchmarks/bench_methods.py), and then certified on ``--val-images`` validation images with MNIST_Small's VRA
domain list (test images are never used).  Prints one line per variant (and ``--json`` one object): validation
ACC, VRA, the epochs it completed, and its wall time.  Used for docs/mixtrain_plus.md's ablation table.

``--pipeline-schedule`` trains each variant on the cpu scale's own schedule for the run (its epochs, ε ramp, decay
and time limit from ``scales.cpu.schedule_overrides``) with the variant's schedule changes on top, i.e. exactly the
training the pipeline would run; ``--no-time-limit`` then runs the whole schedule (equal steps instead of equal wall
time, for runs sharing the machine).  ``--evaluate MODEL.pt`` certifies a trained checkpoint on the same validation
images instead of training (the committed recipe's model as the baseline of a pipeline-schedule comparison).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bounds import get_domain, verify  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.runconfig import train_configs  # noqa: E402
from pipeline.data import NORMALIZATION  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.train import train, training_indices  # noqa: E402

#: the deeper learning-rate decay of the full-length variants: x0.25 every third of the epochs
DEEP_DECAY = {"lr_decay_factor": 0.25, "lr_decay_every_frac": 1 / 3}
#: the CROWN-IBP bound on 10 samples per batch as the tight term
CROWN_IBP_K10 = {"k": 10, "domain": "backward_ibp"}
#: batches of 256 (214 per epoch) with a schedule that fits 15 minutes on two threads, and Adam at 2e-3
BATCH256 = {"batch_size": 256, "epochs": 60, "eps_ramp_epochs": 20, "lr_decay_every": 15}
LR2E3 = {"lr": 2e-3}
#: variant -> (hyperparameter changes, ms per step at batch 50 on one thread used to size its schedule); a
#: ``"schedule"`` entry among the changes is a schedule change (the scale's schedule_overrides keys), not a method one
VARIANTS = {
    "recipe": ({}, 25),                                            # params.yaml's mixtrain_plus as shipped
    "with_tight_k1": ({"k": 1, "tight_weight": 0.5}, 60),          # + symbolic relaxation on 1 sample per batch
    "default_init": ({"init": "default"}, 25),                     # PyTorch's init instead of IBP init
    "no_alpha_warmup": ({"alpha_warmup": False}, 25),              # full α from the first step
    "alpha_max0.7": ({"alpha_rule": {"kind": "staircase", "start": 0.5, "step": 0.1, "max": 0.7, "min": 0.5,
                                     "every": 1}}, 25),            # more natural loss at the end
    "alpha_constant0.5": ({"alpha": 0.5}, 25),                     # no dynamic α
    "eps_train1.5": ({"eps_train_factor": 1.5}, 25),               # train at 1.5 ε
    "eps_train1.2": ({"eps_train_factor": 1.2}, 25),               # train at 1.2 ε
    # a deeper learning-rate decay (x0.25 instead of x0.6 per step; with --pipeline-schedule, every
    # lr_decay_every_frac of the epochs): the low-rate end phase of Gowal et al.'s schedule
    "lr_decay0.25": ({"schedule": DEEP_DECAY}, 25),
    # CROWN-IBP's bound (backward_ibp) on 10 samples per batch, its weight fading from 1 to 0 over the ε ramp,
    # with the deeper decay; the step costs more only during the ramp
    "crown_ibp_ramp_k10": ({**CROWN_IBP_K10, "tight_weight": 1.0, "tight_schedule": "ramp_down",
                            "schedule": DEEP_DECAY}, 25),
    "lr_decay0.25_eps_train1.2": ({"eps_train_factor": 1.2,
                                   "schedule": DEEP_DECAY}, 25),
    # the CROWN-IBP term kept for the whole run at half weight (the ramp-down variant's curve was flat after the
    # ramp), alone and with a lower α ceiling (more natural loss, for accuracy)
    "crown_ibp_const0.5_k10": ({**CROWN_IBP_K10, "tight_weight": 0.5, "tight_schedule": "constant",
                                "schedule": DEEP_DECAY}, 55),
    # Shi et al. 2021's warm-up regularisers (tightness + ReLU balance, weight 0.5 fading with the ramp)
    "warmup_reg0.5": ({"warmup_reg": 0.5}, 27),
    # a longer ε ramp: half of the epochs instead of a third (at ε = 0.3: 18 of 36)
    "eps_ramp_half": ({"schedule": {"eps_ramp_frac": 0.5}}, 25),
    "crown_ibp_const0.5_k10_alpha_max0.8": ({**CROWN_IBP_K10, "tight_weight": 0.5,
                                             "tight_schedule": "constant",
                                             "alpha_rule": {"kind": "staircase", "start": 0.5, "step": 0.1, "max": 0.8,
                                                            "min": 0.5, "every": 1},
                                             "schedule": DEEP_DECAY}, 55),
    # a shorter ε ramp than the recipe's third of the epochs (eps_ramp_half, longer, traded VRA for ACC at ε = 0.3)
    "eps_ramp_sixth": ({"schedule": {"eps_ramp_frac": 1 / 6}}, 25),
    "eps_ramp_twelfth": ({"schedule": {"eps_ramp_frac": 1 / 12}}, 25),
    # a higher floor for the dynamic α (more robust loss once ε has ramped; at ε = 0.3 the staircase rule sat at
    # 0.6-0.7, moved by the validation accuracy's noise): α in [0.8, 0.9] and in [0.9, 1.0] (CROWN-IBP's κ → 0)
    "alpha_min0.8": ({"alpha_rule": {"kind": "staircase", "start": 0.8, "step": 0.1, "max": 0.9, "min": 0.8,
                                     "every": 1}}, 25),
    "alpha_min0.9_max1.0": ({"alpha_rule": {"kind": "staircase", "start": 0.9, "step": 0.1, "max": 1.0, "min": 0.9,
                                            "every": 1}}, 25),
    # and a lower one: α in [0.4, 0.6] (Gowal et al. end IBP training with κ = 0.5, i.e. α = 0.5)
    "alpha_0.4_to_0.6": ({"alpha_rule": {"kind": "staircase", "start": 0.5, "step": 0.1, "max": 0.6, "min": 0.4,
                                         "every": 1}}, 25),
    # Polyak averaging: validate and keep an exponential moving average of the weights (decay 0.999: about the
    # last 1,000 steps, one epoch) instead of the last weights
    "weight_ema0.999": ({"weight_ema": 0.999}, 25),
    # fifth round (ε = 0.3): is the run's length the limit? Twice the epochs in the same proportions (ramp, decay)
    # is what a 2x faster step or host would buy inside the same limit; and a training ε just above the test ε
    # (1.2 cost VRA with the deeper decay, Gowal et al. trained 0.3 at 0.4)
    "epochs_x2": ({"schedule": {"epochs_factor": 2}}, 25),
    "eps_train1.1": ({"eps_train_factor": 1.1}, 25),
    # the recipe itself under other training seeds (same split, same validation images): how far apart two runs
    # of one configuration land, i.e. what difference between variants is a difference at all
    "seed1": ({"seed": 1}, 25),
    # the ε = 0.1 recipe's CROWN-IBP ramp term at ε = 0.3, with a schedule sized to end inside the 15 minutes (the
    # crown_ibp_ramp_k10 row above was cut by the limit at epoch 19 of 36, before its learning-rate decays): 30
    # epochs, ramp 10 (~2x an IBP epoch each), x0.6 every 8
    "crown_ibp_ramp_k10_sized": ({**CROWN_IBP_K10, "tight_weight": 1.0, "tight_schedule": "ramp_down",
                                  "tight_max_eps": None,
                                  "schedule": {"epochs": 30, "eps_ramp_epochs": 10, "lr_decay_every": 8}}, 40),
    "seed2": ({"seed": 2}, 25),
    # larger batches (the 2021 recipes train MNIST at 256): on two threads a sample costs 1.4x less at batch 200
    # than at 50, and the gradient is less noisy; 60 epochs, ramp 20, x0.6 every 15 fit 15 minutes; Adam at the
    # recipe's 1e-3 and at 2e-3
    "batch256": ({"schedule": BATCH256}, 25),
    "batch256_lr2e-3": ({"schedule": BATCH256, "optim": LR2E3}, 25),
    # the better of the two again under another seed, and with 100 epochs (ramp 33, x0.6 every 25: batch 256 on two
    # threads leaves room for them in 15 minutes)
    "batch256_lr2e-3_seed1": ({"schedule": BATCH256, "optim": LR2E3, "seed": 1}, 25),
    "batch256_lr2e-3_epochs100": ({"schedule": {**BATCH256, "epochs": 100, "eps_ramp_epochs": 33,
                                                "lr_decay_every": 25}, "optim": LR2E3}, 25),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--variants", nargs="+", default=["recipe"])
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--steps", type=int, default=None,
                    help="fix the planned steps (equal steps = equal CPU time only among variants of one step cost); "
                         "default: --minutes x 60000 / the variant's ms per step")
    ap.add_argument("--ramp-frac", type=float, default=0.3, help="fraction of the planned steps spent ramping ε")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pipeline-schedule", action="store_true",
                    help="the cpu scale's schedule for the run (plus the variant's schedule changes)")
    ap.add_argument("--no-time-limit", action="store_true", help="with --pipeline-schedule: run every epoch")
    ap.add_argument("--evaluate", type=Path, default=None, help="certify this trained model.pt instead of training")
    ap.add_argument("--domains", nargs="+", default=None,
                    help="certify with these bound domains instead of MNIST_Small's VRA domain list (e.g. "
                         "backward_crown: what a tighter verifier would add)")
    ap.add_argument("--full-test-set", action="store_true",
                    help="with --evaluate: certify on all 10,000 official test images instead of validation images "
                         "(to compare a committed model with numbers reported on the full test set; never used to "
                         "choose the recipe)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, (changes, ms) in VARIANTS.items():
            print(f"{name:28s} {changes}  (schedule sized for {ms} ms/step)")
        return 0
    if args.full_test_set and args.evaluate is None:
        ap.error("--full-test-set: only with --evaluate (variants are chosen on validation images)")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; expected some of {list(VARIANTS)}")
    for d in args.domains or []:
        try:
            get_domain(d)
        except ValueError as e:
            ap.error(f"--domains: {e}")
    torch.set_num_threads(args.threads)
    p = load_params(ROOT / "params.yaml", {"scale": "cpu"})
    rid = f"mixtrain_plus-MNIST_Small-eps{args.eps:g}"
    if rid not in train_configs(p):
        ap.error(f"--eps: no run {rid} in params.yaml")
    base = train_configs(p)[rid]
    data = load_dataset("mnist", p.data_root).train
    _, val_idx = training_indices(len(data), base)
    xv, yv = data.float_images(val_idx[: args.val_images]), data.y[val_idx[: args.val_images]]
    images = f"{len(yv)} validation images"
    if args.full_test_set:
        test = load_dataset("mnist", p.data_root).test
        xv, yv = test.float_images(range(len(test.y))), test.y
        images = f"all {len(yv)} test images"

    domains = list(args.domains or base.vra_domains)

    def certify(model: torch.nn.Module) -> tuple[float, float]:
        res = verify(model, xv, yv, args.eps, domains, dtype=torch.float64,
                     margin_tol=base.verify["margin_tol"], batch_size=base.verify["batch_size"])
        with torch.no_grad():
            return (model(xv).argmax(1) == yv).float().mean().item(), sum(res.verified) / len(yv)

    if args.evaluate is not None:
        norm = NORMALIZATION["mnist"]
        model = build_model(base.model, norm.mean, norm.std).eval()
        model.load_state_dict(torch.load(args.evaluate, map_location="cpu", weights_only=True))
        t0 = time.perf_counter()
        acc, vra = certify(model)
        secs = time.perf_counter() - t0
        print(f"{str(args.evaluate):28s} ACC {100 * acc:5.2f}  VRA {100 * vra:5.2f}  on {images} (domains {domains}, "
              f"{secs:.0f} s)", flush=True)
        if args.json:
            print(json.dumps({"eps": args.eps, "images": images, "model": str(args.evaluate),
                              "domains": domains, "acc": acc, "vra": vra, "certify_s": secs}))
        return 0
    results = {}
    for name in args.variants:
        changes, ms = VARIANTS[name]
        changes = dict(changes)
        sched_changes = dict(changes.pop("schedule", {}))
        optim = {**base.optim, **changes.pop("optim", {})}  # optimiser settings (e.g. lr)
        seed = changes.pop("seed", base.seed)  # the training seed (initialisation, batches, k-sampling); not the split
        per_epoch = 250
        steps = args.steps or int(args.minutes * 60 * 1000 / ms)
        epochs = max(2, steps // per_epoch)
        if args.pipeline_schedule:
            sched = {**base.schedule, "val_vra_images": 0}
            if args.no_time_limit:
                sched.pop("time_limit_min", None)
            epochs = sched["epochs"]
        else:
            sched = {**base.schedule, "epochs": epochs, "batches_per_epoch": per_epoch, "val_vra_images": 0,
                     "eps_ramp_epochs": max(1, math.ceil(args.ramp_frac * epochs)),
                     "lr_decay_every": max(1, epochs // 4), "time_limit_min": args.minutes}
        factor = sched_changes.pop("epochs_factor", None)  # a longer run, ramp and decays in proportion
        if factor is not None:
            epochs = round(factor * epochs)
            sched_changes.update(epochs=epochs, eps_ramp_epochs=max(1, round(factor * sched["eps_ramp_epochs"])),
                                 lr_decay_every=max(1, round(factor * sched["lr_decay_every"])))
        for frac_key, key in (("lr_decay_every_frac", "lr_decay_every"), ("eps_ramp_frac", "eps_ramp_epochs")):
            frac = sched_changes.pop(frac_key, None)  # a fraction of the epochs, made a number of epochs
            if frac is not None:
                sched_changes[key] = max(1, round(frac * epochs))
        sched.update(sched_changes)
        epochs = sched["epochs"]  # a variant may set its own (and its batch size)
        per_epoch = sched["batches_per_epoch"] or len(training_indices(len(data), base)[0]) // sched["batch_size"]
        cfg = dataclasses.replace(base, schedule=sched, method_params={**base.method_params, **changes},
                                  threads=args.threads, seed=seed, optim=optim)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            r = train(cfg, Path(d), log=lambda m: None)
            wall = time.perf_counter() - t0
        acc, vra = certify(r["model"].eval())
        results[name] = {"changes": VARIANTS[name][0], "val_acc": acc, "val_vra": vra,
                         "epochs_done": len(r["history"]), "epochs_planned": epochs, "steps": r["steps"],
                         "wall_s": wall, "stopped_at_time_limit": r["stopped_at_time_limit"]}
        x = results[name]
        print(f"{name:28s} val ACC {100 * acc:5.1f}  val VRA {100 * x['val_vra']:5.1f}  epochs "
              f"{x['epochs_done']}/{epochs} x {per_epoch} batches  ({x['steps']} steps, {wall / 60:.1f} min)",
              flush=True)
    if args.json:
        print(json.dumps({"eps": args.eps, "minutes": args.minutes, "val_images": args.val_images,
                          "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
