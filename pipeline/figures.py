"""The paper's figures as data + matplotlib PNGs.  Each ``figN_data`` returns plain JSON-able data (what DVC tracks
and what tests check); each ``plot_figN`` draws it.  Nothing here reads files or parses arguments.

- Fig. 2: for a few test images, the losses reached by PGD, CW and the interval attack from many random starts.
- Fig. 4: the distribution of the verified robust loss over a population of training images vs. a k-sample of it
  (the stochastic output approximation's premise: a small sample tracks the full distribution).
- Fig. 5: ERA(PGD) and VRA of a trained model evaluated at several ε.
- Fig. 7: ACC, ERA(PGD) and VRA against a fixed α (CIFAR_Small).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import stats  # noqa: E402

from pipeline.bounds import margin_lower_bounds  # noqa: E402

__all__ = ["per_sample_verified_loss", "fig4_data", "plot_fig4", "fig7_data", "plot_fig7", "fig5_data", "plot_fig5",
           "plot_fig2", "plot_note"]


def _save(fig, path) -> None:
    """Write the PNG atomically (temporary file + rename) and close the figure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


@torch.no_grad()
def per_sample_verified_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, domain: str,
                             chunk: int = 8) -> torch.Tensor:
    """Verified robust loss (CE on the worst-case logits) of each sample ``[N]``, computed ``chunk`` at a time."""
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        lb = margin_lower_bounds(model, x[i:i + chunk], y[i:i + chunk], eps, domain)
        out.append(F.cross_entropy(-lb, y[i:i + chunk], reduction="none"))
    return torch.cat(out)


def fig4_data(losses: torch.Tensor, k: int, generator: torch.Generator) -> dict[str, Any]:
    """Population losses, a uniformly drawn k-sample, and the two-sample KS test.  ``k`` is capped at half the
    population (a sample as large as the population would compare it with itself)."""
    n = len(losses)
    k_used = max(1, min(k, n // 2))
    pick = torch.randperm(n, generator=generator)[:k_used]
    full, sample = losses.tolist(), losses[pick].tolist()
    ks = stats.ks_2samp(full, sample)
    return {"population": n, "k": k, "k_used": k_used, "full": full, "sample": sample,
            "mean_full": float(np.mean(full)), "mean_sample": float(np.mean(sample)),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}


def plot_fig4(d: dict[str, Any], title: str, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    hi = max(max(d["full"]), 1e-6)
    bins = np.linspace(0, hi, 30)
    ax.hist(d["full"], bins=bins, density=True, alpha=0.5, label=f"all {d['population']} images")
    ax.hist(d["sample"], bins=bins, density=True, alpha=0.5, label=f"random k={d['k_used']}")
    ax.set_xlabel("verified robust loss")
    ax.set_ylabel("density")
    ax.set_title(f"{title}\nKS D={d['ks_statistic']:.3f} (p={d['ks_pvalue']:.2f})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def fig7_data(points: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """``points``: (α, metrics.json) pairs -> series sorted by α (missing metrics stay ``None``)."""
    pts = sorted(points, key=lambda p: p[0])
    return {"alpha": [a for a, _ in pts], **{key: [m.get(key) for _, m in pts] for key in ("acc", "era_pgd", "vra")},
            "n": [m.get("n") for _, m in pts]}


def plot_fig7(d: dict[str, Any], title: str, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("acc", "ACC"), ("era_pgd", "ERA (PGD)"), ("vra", "VRA")):
        ys = [np.nan if v is None else 100 * v for v in d[key]]
        ax.plot(d["alpha"], ys, marker="o", label=label)
    ax.set_xlabel("fixed α")
    ax.set_ylabel("% of test subset")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def fig5_data(eps_values: Sequence[float], era: Sequence[float], vra: Sequence[float], n: int) -> dict[str, Any]:
    return {"eps": list(eps_values), "era_pgd": list(era), "vra": list(vra), "n": n}


def plot_fig5(panels: dict[str, dict[str, Any]], path) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (name, d) in zip(axes[0], panels.items()):
        ax.plot(d["eps"], [100 * v for v in d["era_pgd"]], marker="o", label="ERA (PGD)")
        ax.plot(d["eps"], [100 * v for v in d["vra"]], marker="s", label="VRA")
        ax.set_xlabel("ε (pixel space)")
        ax.set_ylim(-2, 102)
        ax.set_ylabel(f"% of {d['n']} test images")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_note(text: str, path) -> None:
    """A PNG that says why a figure could not be drawn (the pipeline completes; nothing is silently missing)."""
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    _save(fig, path)


def plot_fig2(losses: dict[str, list[list[float]]], title: str, path) -> None:
    """``losses[attack][image]``: final loss of each random start; one panel per image."""
    attacks = list(losses)
    n_img = len(next(iter(losses.values()))) if losses else 0
    fig, axes = plt.subplots(1, max(1, n_img), figsize=(3.6 * max(1, n_img), 3.2), squeeze=False)
    for i in range(n_img):
        ax = axes[0][i]
        ax.boxplot([losses[a][i] for a in attacks], showfliers=True)
        ax.set_xticks(range(1, len(attacks) + 1), attacks, fontsize=8)
        ax.set_title(f"test image {i + 1}", fontsize=9)
        ax.set_ylabel("loss found (CE)" if i == 0 else "")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
