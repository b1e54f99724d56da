"""Table I by hand: the interval attack against PGD and CW at an equal budget of forward+backward passes.

    python benchmarks/table1_interval.py --model results/quick/train6/madry-MNIST_FC1-eps0.3/model.pt \\
        [--model-name MNIST_FC1] [--eps 0.3] [--images 100] [--variant paper|cpu|authors-schedule|...] \\
        [--check-equal-budget] [--json out.json]

Runs each requested interval-attack variant once on the first ``--images`` test images of the committed subset (the
images the evaluate stage uses), with its hyperparameters from ``params.yaml`` (``attacks.interval``, MNIST values,
plus the variant's overrides), and takes its measured cost as its budget.  PGD and CW (``attacks.pgd`` /
``attacks.cw``) are then restarted from fresh random starts on the samples they have not broken yet, exactly as
:func:`pipeline.evaluation.equal_budget` does (same loop, same per-attack seeds, same stopping rule: a run is made
while the previous run's cost still fits), but once, up to the largest budget, recording the success after every
run; each variant's row reads PGD and CW off that record at its own budget.  ``--check-equal-budget`` also runs
``equal_budget`` itself for the first variant and asserts that it gives the same numbers (the record is a shortcut,
not a different protocol).

Variants (overrides of ``attacks.interval``): ``paper`` (params.yaml as is: Table I's 20 iterations), ``cpu``
(the ``cpu`` scale's ERA setting, ``scales.cpu.attack_overrides``), ``authors-schedule`` (PGD before every interval
step, as the authors' released code runs it), ``vertex`` (``step_size = eps``: the authors' code literally, whose step
is at least 1 pixel unit, so every step lands on a vertex of the ε-ball).  ``--variant-json`` adds any other as a
JSON mapping (used for the pre-fix implementation: run with ``PYTHONPATH`` pointing at an export of the old
``pipeline`` package and its old parameters).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

# the repository's package, unless PYTHONPATH already names another copy (the pre-fix measurement uses an export)
sys.path.append(str(Path(__file__).resolve().parents[1]))

from pipeline.attacks import get_attack  # noqa: E402
from pipeline.data import NORMALIZATION, load_split, load_test_subset, subset_indices  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.params.evaluation import resolve_attack_params  # noqa: E402
from pipeline.evaluation import equal_budget  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.utils import wilson_interval  # noqa: E402

VARIANTS = {"paper": {}, "cpu": {"iterations": 2, "max_delta_tries": 4},
            "authors-schedule": {"pgd_between": True}, "vertex": {"step_size": "eps"}}


def load_case(model_name: str, model_path: Path, images: int, data_root: Path):
    """``(model in eval mode, x, y)``: an MNIST model and the first ``images`` of the committed test subset."""
    norm = NORMALIZATION["mnist"]
    model = load_model(model_name, model_path, norm.mean, norm.std).eval()
    test = load_split("mnist", data_root, "test")
    idx = subset_indices(test, load_test_subset("mnist")[:images])
    return model, test.float_images(idx), test.y[idx]


def attack_params(params_path: Path, scale: str | None = None) -> dict[str, dict]:
    """Each attack's MNIST constructor arguments from params.yaml (read and validated by the pipeline's own loader),
    with ``scale``'s ERA overrides applied if given."""
    p = load_params(params_path)
    return resolve_attack_params(p.attacks, p.scales[scale].attack_overrides if scale else {}, "mnist")


def add_case_arguments(ap: argparse.ArgumentParser, model_name: str, images: int) -> None:
    """The options every interval-attack benchmark shares: the model, ε, test images, params.yaml, threads,
    output and data root."""
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--model-name", default=model_name)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--images", type=int, default=images)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")


def restart_record(model, x, y, eps, attack, correct, seed, max_budget):
    """:func:`pipeline.evaluation.equal_budget`'s restart loop for one attack, run up to ``max_budget`` and recorded:
    ``[(passes spent, successes, seconds, runs)]`` after every run."""
    gen = torch.Generator().manual_seed(seed)
    broken = ~correct
    spent, seconds, runs, last = 0.0, 0.0, 0, 0.0
    record = [(0.0, 0, 0.0, 0)]
    while runs == 0 or spent + last <= max_budget:
        todo = (~broken).nonzero().flatten()
        if not todo.numel():
            break
        res = attack(model, x[todo], y[todo], eps, generator=gen)
        last = res.passes * todo.numel() / len(x)
        spent, seconds, runs = spent + last, seconds + res.seconds, runs + 1
        broken[todo] |= res.success
        record.append((spent, int((broken & correct).sum()), seconds, runs))
    return record


def at_budget(record, budget):
    """The record's entry where equal_budget with this budget stops (its last run whose cost still fitted)."""
    best = record[1]  # every attack runs at least once
    for i in range(2, len(record)):
        prev_cost = record[i - 1][0] - record[i - 2][0]  # equal_budget's estimate of the next run: the last one
        if record[i - 1][0] + prev_cost <= budget:
            best = record[i]
        else:
            break
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(ap, "MNIST_FC1", 100)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--variant-json", action="append", default=[], help='NAME=JSON of constructor arguments')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-equal-budget", action="store_true")
    ap.add_argument("--max-budget", type=int, help="stop PGD/CW there (CPU time); a variant whose budget is larger "
                    "gets their success at this budget, marked '>=' (a lower bound: more passes never break fewer)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, x, y = load_case(args.model_name, args.model, args.images, args.data_root)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    n_correct = int(correct.sum())

    params = attack_params(args.params)
    base = params["interval"]
    variants: dict[str, dict] = {}
    for v in args.variant or ["paper"]:
        kw = {**base, **VARIANTS[v]}
        variants[v] = {k: (args.eps if val == "eps" else val) for k, val in kw.items()}
    for item in args.variant_json:
        name, text = item.split("=", 1)
        variants[name] = json.loads(text)

    rows: dict[str, dict] = {}
    for name, kw in variants.items():
        attack = get_attack("interval")(**kw)
        res = attack(model, x, y, args.eps, generator=torch.Generator().manual_seed(args.seed + 7000))
        rows[name] = {"params": kw, "success": int((res.success & correct).sum()), "passes": res.passes,
                      "seconds": res.seconds}
        print(f"interval[{name}]: {rows[name]['success']}/{n_correct} broken, {res.passes} passes, "
              f"{res.seconds:.0f} s", file=sys.stderr, flush=True)

    max_budget = max(max(1, math.ceil(r["passes"])) for r in rows.values())
    if args.max_budget is not None:
        max_budget = min(max_budget, args.max_budget)
    records = {}
    for i, name in enumerate(("pgd", "cw")):
        attack = get_attack(name)(**params[name])
        records[name] = restart_record(model, x, y, args.eps, attack, correct, args.seed + 7000 + i + 1, max_budget)
        last = records[name][-1]
        print(f"{name}: {last[1]}/{n_correct} broken after {last[3]} runs, {last[0]:.0f} passes, {last[2]:.0f} s",
              file=sys.stderr, flush=True)

    out = {"model": str(args.model), "eps": args.eps, "images": args.images, "correct": n_correct, "variants": {}}
    print(f"\n{args.images} images, {n_correct} correctly classified, eps {args.eps}")
    print("| interval variant | budget (passes) | interval | PGD | CW |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        budget = max(1, math.ceil(r["passes"]))
        capped = budget > max_budget
        cells = {"interval": (r["success"], r["passes"], r["seconds"], 1)}
        for a in ("pgd", "cw"):
            spent, succ, secs, runs = at_budget(records[a], min(budget, max_budget))
            cells[a] = (succ, spent, secs, runs)

        def fmt(c, bound=""):
            lo, hi = wilson_interval(c[0], n_correct)
            return (f"{bound}{100 * c[0] / n_correct:.1f}% ({c[0]}) [{100 * lo:.1f}, {100 * hi:.1f}], "
                    f"{c[3]} run(s), {c[1]:,.0f} passes, {c[2]:.0f} s")
        b = ">= " if capped else ""
        print(f"| {name} | {budget:,} | {fmt(cells['interval'])} | {fmt(cells['pgd'], b)} | {fmt(cells['cw'], b)} |")
        out["variants"][name] = {"budget": budget, "pgd_cw_capped_at": max_budget if capped else None,
                                 **{a: dict(zip(("success", "passes", "seconds", "runs"), c))
                                    for a, c in cells.items()}, "params": r["params"]}

    if args.check_equal_budget:
        name = next(iter(variants))
        attacks = {"interval": get_attack("interval")(**variants[name]),
                   "pgd": get_attack("pgd")(**params["pgd"]),
                   "cw": get_attack("cw")(**params["cw"])}
        t0 = time.perf_counter()
        eb = equal_budget(model, x, y, args.eps, attacks, None, args.seed)
        got = {a: (eb["attacks"][a]["success"], eb["attacks"][a]["runs"]) for a in attacks}
        want = {a: (out["variants"][name][a]["success"], out["variants"][name][a]["runs"]) for a in attacks}
        print(f"equal_budget({name}): {got} (budget {eb['budget_passes']}, {time.perf_counter() - t0:.0f} s); "
              f"record: {want}", file=sys.stderr)
        assert got == want, "the recorded restart loop disagrees with pipeline.evaluation.equal_budget"
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
