"""The evaluate stage on real test images: metrics, per-sample results, external (published-layout) checkpoints."""
import json

import pytest
import torch

from conftest import DATA_ROOT, needs_data
from pipeline.runconfig import EvalConfig
from pipeline.errors import CheckpointError
from pipeline.models import build_model
from pipeline.stages import evaluate

VERIFY = {"dtype": "float64", "margin_tol": 1e-4, "batch_size": 8}


def _cfg(**kw):
    base = dict(run_id="external-pub-MNIST_Small-eps0.001", train_id="", scale="test", method="external",
                model="MNIST_Small", dataset="mnist", eps=0.001, eps_text="0.001", test_images=12,
                vra_domains=["interval", "symbolic_linear", "backward"], verify=VERIFY,
                checkpoint={"path": "unused", "mean": [0.0], "std": [1.0]}, data_root=str(DATA_ROOT),
                device="cpu", threads=1)
    base.update(kw)
    return EvalConfig(**base)


def _trained_net():
    """A quickly fitted MNIST_Small so that some samples are correct and verifiable at a tiny ε."""
    from pipeline.data import load_split
    torch.manual_seed(0)
    train = load_split("mnist", DATA_ROOT, "train")
    x, y = train.float_images(slice(0, 2000)), train.y[:2000]
    model = build_model("MNIST_Small", [0.0], [1.0])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        for i in range(0, 2000, 50):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@needs_data
def test_external_checkpoint_is_attacked_and_verified_by_the_same_code(tmp_path):
    model = _trained_net()
    ck = tmp_path / "pub.pth"
    torch.save(model.net.state_dict(), ck)  # plain nn.Sequential layout: 0.weight, 0.bias, 2.weight, ...
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_cfg().to_json())
    assert evaluate.main(["--config", str(cfg), "--model", str(ck), "--out", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    s = json.loads((tmp_path / "out/samples.json").read_text())
    assert m["n"] == 12 == len(s["ids"]) and m["vra_domains"] == ["interval", "symbolic_linear", "backward"]
    assert 0 <= m["vra"] <= m["acc"] and m["acc"] > 0.5 and m["vra"] > 0
    lo, hi = m["acc_ci95"]
    assert lo <= m["acc"] <= hi
    for v, d, p, t in zip(s["verified"], s["verified_by"], s["predictions"], s["labels"]):
        assert (d is not None) == v and (not v or p == t)
    assert m["provenance"]["checkpoint_sha256"] and m["provenance"]["torch"] == torch.__version__
    assert s["ids"] == json.loads((evaluate.Path(evaluate.__file__).parents[1] / "data/subsets/mnist_test.json")
                                  .read_text())["ids"][:12]


@needs_data
def test_mismatched_external_checkpoint_fails_before_writing(tmp_path):
    ck = tmp_path / "pub.pth"
    torch.save(build_model("MNIST_Large", [0.0], [1.0]).net.state_dict(), ck)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_cfg().to_json())
    with pytest.raises(CheckpointError, match="does not match architecture MNIST_Small"):
        evaluate.main(["--config", str(cfg), "--model", str(ck), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
