"""Which samples each ERA attack breaks, on the evaluate stage's code path (why ERA(Interval) could equal ERA(CW)).

    python benchmarks/era_attack_sets.py --model results/<scale>/train/<id>/model.pt --model-name MNIST_Small \\
        --eps 0.3 [--images 256] [--scale cpu] [--extra pgd_nors,cw_nors,tail] --json out.json

Builds PGD, CW and the interval attack exactly as the evaluate stage does for ``--scale`` (``attacks`` of
``params.yaml`` with ``scales.<scale>.attack_overrides``, MNIST values) and runs them with
:func:`pipeline.evaluation.run_attacks` (same seeds, same chunking) on the first ``--images`` test images of the
committed subset.  Prints each attack's broken count and how the broken sets overlap, and saves the per-sample lists.
``--extra`` adds diagnostics run the same way: ``pgd_nors`` / ``cw_nors`` (PGD / CW without a random start) and
``tail`` (the interval attack's PGD tail alone: PGD from ``x``, cross-entropy, the interval's ``pgd_steps``).
``--safe-boxes 0.008,0.05`` also counts the correctly classified images whose box of each half-width the symbolic
linear relaxation proves safe (what the interval attack's box search sees at the clean point).
Run it with ``PYTHONPATH`` naming an export of another ``pipeline`` (e.g. the pre-fix commit) to measure that code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # unless PYTHONPATH names another copy of the package

from pipeline.attacks import get_attack  # noqa: E402
from pipeline.bounds import bound_margins  # noqa: E402
from pipeline.evaluation import run_attacks  # noqa: E402
from table1_interval import add_case_arguments, attack_params, load_case  # noqa: E402  (same directory)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(ap, "MNIST_Small", 256)
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--extra", default="")
    ap.add_argument("--safe-boxes", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, y = load_case(args.model_name, args.model, args.images, args.data_root)
    with torch.no_grad():
        logits = model(x)
    correct = (logits.argmax(1) == y)
    params = attack_params(args.params, args.scale)
    attacks = {name: get_attack(name)(**kw) for name, kw in params.items()}
    broken, cost = run_attacks(model, x, y, args.eps, attacks, seed=0, chunk=256)
    extras = [e for e in args.extra.split(",") if e]
    if extras:
        more = {}
        for e in extras:
            if e == "pgd_nors":
                more[e] = get_attack("pgd")(**{**params["pgd"], "random_start": False})
            elif e == "cw_nors":
                more[e] = get_attack("cw")(**{**params["cw"], "random_start": False})
            elif e == "tail":
                more[e] = get_attack("pgd")(steps=params["interval"]["pgd_steps"],
                                            step_size=params["interval"]["pgd_step_size"], random_start=False)
            else:
                raise SystemExit(f"unknown extra {e!r}")
        b2, c2 = run_attacks(model, x, y, args.eps, more, seed=0, chunk=256)
        broken.update(b2)
        cost.update(c2)
    n = len(y)
    ok = correct.tolist()
    sets = {a: {i for i, (b, c) in enumerate(zip(bl, ok)) if b and c} for a, bl in broken.items()}
    print(f"{n} images, {sum(ok)} correct, eps {args.eps}, scale {args.scale} attack settings")
    for a, s in sets.items():
        print(f"  {a:9s} breaks {len(s):4d}  ERA {100 * (sum(ok) - len(s)) / n:5.1f}%  "
              f"({cost[a].passes} passes, {cost[a].seconds:.0f} s)")
    names = list(sets)
    print("  overlaps (|A only|, |B only|, |both|):")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"    {a} vs {b}: {len(sets[a] - sets[b])}, {len(sets[b] - sets[a])}, {len(sets[a] & sets[b])}")
    for d in [float(v) for v in args.safe_boxes.split(",") if v]:
        xs, ys = x[correct], y[correct]
        safe = 0
        with torch.no_grad():
            for i in range(0, len(ys), 16):
                lb, _ = bound_margins(model, xs[i:i + 16], ys[i:i + 16], d, "symbolic_linear")
                safe += int((lb.scatter(1, ys[i:i + 16, None], float("inf")).amin(1) > 0).sum())
        print(f"  box of half-width {d}: proven safe for {safe} of {len(ys)} correctly classified images")
    margin = logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -float("inf")).amax(1)
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(args.model), "eps": args.eps, "images": n, "params": params, "correct": ok,
            "broken": broken, "cost": {a: [c.passes, c.seconds] for a, c in cost.items()},
            "clean_margin": margin.tolist()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
