"""Figure data: the k-sample of Fig. 4 is a uniform draw (distribution close to the population's), Fig. 7 series are
ordered by α, and every plot writes a real PNG."""
import torch

from pipeline.figures import (fig4_data, fig5_data, fig7_data, per_sample_verified_loss, plot_fig2, plot_fig4,
                              plot_fig5, plot_fig7)
from pipeline.models import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_fig4_sample_tracks_population_and_caps_k(tmp_path):
    g = torch.Generator().manual_seed(0)
    losses = torch.distributions.Gamma(2.0, 1.0).sample((5000,))
    d = fig4_data(losses, 1000, g)
    assert d["k_used"] == 1000 == len(d["sample"]) and d["population"] == 5000
    assert len(set(d["sample"])) == 1000  # without replacement
    assert d["ks_pvalue"] > 0.001 and abs(d["mean_full"] - d["mean_sample"]) < 0.2
    small = fig4_data(losses[:10], 1000, g)
    assert small["k_used"] == 5  # capped at half the population
    plot_fig4(d, "test", tmp_path / "fig4.png")
    assert (tmp_path / "fig4.png").read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*tmp"))


def test_per_sample_verified_loss_matches_batched_mean():
    torch.manual_seed(0)
    model = build_model("MNIST_FC1", [0.0], [1.0])
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    per = per_sample_verified_loss(model, x, y, 0.01, "interval", chunk=3)
    from pipeline.bounds import bound_margins, verified_loss
    lb, _ = bound_margins(model, x, y, 0.01, "interval")
    assert per.shape == (10,) and torch.allclose(per.mean(), verified_loss(lb, y), atol=1e-5)


def test_fig7_fig5_fig2_plots(tmp_path):
    d = fig7_data([(0.9, {"acc": 0.5, "vra": 0.3, "era_pgd": 0.4, "n": 16}),
                   (0.1, {"acc": 0.9, "vra": 0.1, "era_pgd": 0.2, "n": 16}), (0.5, {})])
    assert d["alpha"] == [0.1, 0.5, 0.9] and d["acc"] == [0.9, None, 0.5]
    plot_fig7(d, "t", tmp_path / "fig7.png")
    plot_fig5({"a": fig5_data([0.1, 0.2], [0.5, 0.3], [0.4, 0.1], 16)}, tmp_path / "fig5.png")
    plot_fig2({"pgd": [[1.0, 2.0], [0.5, 0.7]], "cw": [[1.5, 1.0], [0.2, 0.1]]}, "t", tmp_path / "fig2.png")
    for f in ("fig7", "fig5", "fig2"):
        assert (tmp_path / f"{f}.png").read_bytes()[:8] == PNG


def test_note_png_for_a_figure_that_cannot_be_drawn(tmp_path):
    from pipeline.figures import plot_note
    plot_note("fig5 not drawn: run ran out of memory in training", tmp_path / "fig5.png")
    assert (tmp_path / "fig5.png").read_bytes()[:8] == PNG
