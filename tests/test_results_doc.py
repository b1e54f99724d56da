"""docs/results.md quotes the fidelity bars exactly as benchmarks/fidelity_bars.py computes them from the committed
reports/cpu/metrics.json, so the doc cannot drift from the numbers it reports."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "reports" / "cpu" / "metrics.json"
BEGIN, END = "<!-- fidelity-bars:begin -->", "<!-- fidelity-bars:end -->"


def _bars():
    spec = importlib.util.spec_from_file_location("fidelity_bars", ROOT / "benchmarks" / "fidelity_bars.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not METRICS.is_file(), reason="no committed cpu-scale metrics")
def test_results_doc_quotes_the_committed_fidelity_bars():
    text = (ROOT / "docs" / "results.md").read_text()
    assert BEGIN in text and END in text, "docs/results.md lost its fidelity-bars block"
    quoted = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    bars = _bars()
    assert quoted == bars.markdown(bars.rows(json.loads(METRICS.read_text()))).strip()


@pytest.mark.skipif(not METRICS.is_file(), reason="no committed cpu-scale metrics")
def test_results_doc_quotes_the_committed_summary():
    text = (ROOT / "docs" / "results.md").read_text()
    begin, end = "<!-- cpu-summary:begin -->", "<!-- cpu-summary:end -->"
    assert begin in text and end in text, "docs/results.md lost its cpu-summary block"
    quoted = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert quoted == _bars().summary_markdown(json.loads(METRICS.read_text())).strip()


def test_bar_rows_mark_missing_runs_and_misses():
    bars = _bars()
    rows = bars.rows({"mixtrain-MNIST_Small-eps0.1": {"acc": 0.99, "vra": 0.5}})
    first, second = rows[0], rows[1]
    assert first["holds"] is True and first["ci95"][0] < 99.0 < first["ci95"][1]
    assert second["holds"] is False
    assert all(r["ours"] is None and r["holds"] is None for r in rows[2:])
    md = bars.markdown(rows)
    assert "**no**" in md and "not run" in md
