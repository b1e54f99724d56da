"""The paper beside every cell: the paper-numbers data (loader, coverage of params.yaml's tables), the rendered
comparison (paper value, Δ, ✗ outside our interval), the schedule in each table's header, and the refusal of rows
computed from different data.  Synthetic metrics only: fast, no data, no training."""
import copy
import json

import pytest
import yaml

from conftest import ROOT
from pipeline.paper import (DEFAULT_PATH, TABLES, WHOLE_ROW, PaperNumbersError, load_paper_numbers,
                            parse_paper_numbers)
from pipeline.stages import tables
from pipeline.stages.tables import (PAPER_TABLES, DataMismatchError, check_data_hashes, paper_cell, render,
                                    schedule_section)
from pipeline.utils import wilson_interval

SOURCES = {"quote": {"kind": "secondary", "checked_against_paper": False, "title": "t", "version": "v", "url": None},
           "v2": {"kind": "paper", "checked_against_paper": True, "title": "t", "version": "v2", "url": "https://x"}}
GOOD = {"sources": SOURCES, "entries": [
    {"table": "table3", "run": "mixtrain-MNIST_Small-eps0.1", "column": "acc", "value": 98.5, "source": "v2",
     "where": "Table III, row MixTrain"},
    {"table": "table3", "run": "mixtrain-MNIST_Small-eps0.1", "column": "batch_time_s", "value": 0.011,
     "source": "quote", "where": "docs"},
    {"table": "table3", "run": "mixtrain-MNIST_Small-eps0.1", "column": "vra", "value": 87.0, "source": "v2",
     "where": "Table III, row MixTrain"},
    {"table": "table3", "run": "mixtrain-MNIST_Small-eps0.1", "column": WHOLE_ROW, "reason": "not read yet"},
    {"table": "table3", "run": "natural-MNIST_Small-eps0.1", "column": WHOLE_ROW, "reason": "not a paper row"},
]}


def _params_tables() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_paper_numbers_cover_every_table_row():
    """Every run of params.yaml's Tables I, III-VI has a paper entry (a value or an explicit n/a), and no entry
    names a row that is not in that table."""
    paper = load_paper_numbers()
    params = _params_tables()
    missing = [(t, rid) for t in PAPER_TABLES for rid in params["tables"].get(t, []) if not paper.has_row(t, rid)]
    assert not missing, f"rows without a paper entry or explicit n/a in {DEFAULT_PATH.name}: {missing}"
    stray = sorted({(e.table, e.run) for e in paper.entries if e.run not in params["tables"].get(e.table, [])})
    assert not stray, f"entries for rows that params.yaml's tables do not have: {stray}"
    for e in paper.entries:  # every number says where it was read; every n/a says why
        assert (e.value is not None and e.where and e.source) or (e.value is None and e.reason), e
    assert set(PAPER_TABLES) == set(TABLES)


@pytest.mark.parametrize("change, expect", [
    ({"value": "98.5"}, "'value' must be a finite number"),
    ({"column": "era_cw", "value": 120.0}, "in [0, 100]"),
    ({"value": -1}, "'value' must be a finite number >= 0"),
    ({"reason": "also this"}, "exactly one of 'value'"),
    ({"value": None}, "exactly one of 'value'"),
    ({"column": "accuracy"}, "'column' must be"),
    ({"table": "table9"}, "'table' must be one of"),
    ({"source": "somewhere"}, "'source' must be one of"),
    ({"where": None}, "'where' must be a non-empty string"),
    ({"colour": "red"}, "unknown keys ['colour']"),
])
def test_loader_rejects_a_malformed_entry_naming_it(change, expect):
    raw = copy.deepcopy(GOOD)
    raw["entries"][1].update(change)
    with pytest.raises(PaperNumbersError) as e:
        parse_paper_numbers(raw, "paper.yaml")
    msg = str(e.value)
    assert "paper.yaml entries[1]" in msg and expect in msg, msg
    assert "mixtrain-MNIST_Small-eps0.1" in msg  # the entry is named by its row too


def test_loader_rejects_duplicates_whole_row_values_and_bad_files(tmp_path):
    raw = copy.deepcopy(GOOD)
    raw["entries"].append(dict(raw["entries"][0]))
    with pytest.raises(PaperNumbersError, match=r"entries\[5\].*duplicate of entries\[0\]"):
        parse_paper_numbers(raw)
    raw = copy.deepcopy(GOOD)
    raw["entries"][3] = {**raw["entries"][3], "value": 1.0, "reason": None, "source": "v2", "where": "x"}
    with pytest.raises(PaperNumbersError, match=r"entries\[3\].*covers a whole row"):
        parse_paper_numbers(raw)
    with pytest.raises(PaperNumbersError, match="missing"):
        parse_paper_numbers({"entries": []})
    bad = tmp_path / "p.yaml"
    bad.write_text("sources: {a: 1}\nsources: {}\n")
    with pytest.raises(PaperNumbersError, match="given twice"):
        load_paper_numbers(bad)
    bad.write_text("entries: [unclosed\n")
    with pytest.raises(PaperNumbersError, match="not valid YAML"):
        load_paper_numbers(bad)
    with pytest.raises(PaperNumbersError, match="cannot read"):
        load_paper_numbers(tmp_path / "absent.yaml")


def test_cell_outside_our_interval_is_marked_and_inside_is_not():
    paper = parse_paper_numbers(GOOD)
    acc = paper.lookup("table3", "mixtrain-MNIST_Small-eps0.1", "acc")  # 98.5, read in the paper (no dagger)
    lo, hi = wilson_interval(993, 1024)  # 97.0 [95.7, 97.9]
    outside = paper_cell(acc, 100 * 993 / 1024, (100 * lo, 100 * hi))
    assert outside == "98.5 · Δ −1.5 ✗"
    lo, hi = wilson_interval(1001, 1024)  # 97.8 [96.7, 98.497]: 98.5 is the printed upper bound: inside
    inside = paper_cell(acc, 100 * 1001 / 1024, (100 * lo, 100 * hi))
    assert inside == "98.5 · Δ −0.7", inside
    lo, hi = wilson_interval(1000, 1024)  # 97.7 [96.5, 98.4]: just outside
    assert paper_cell(acc, 100 * 1000 / 1024, (100 * lo, 100 * hi)).endswith("✗")
    # a time: the paper's value and ours ÷ paper, no interval, never marked; a secondary quote carries a dagger
    t = paper.lookup("table3", "mixtrain-MNIST_Small-eps0.1", "batch_time_s")
    assert paper_cell(t, 0.2805, None) == "0.011 s† · ×25.5"
    # no number: n/a with a footnote marker, the row's reason
    assert paper_cell(paper.lookup("table3", "mixtrain-MNIST_Small-eps0.1", "era_pgd"), 90.0, (88.0, 92.0)) == "n/a¹"


def _run(method, model="MNIST_Small", eps_text="0.1", eps_free=False):
    return {"method": method, "model": model, "eps": 0.1, "eps_text": eps_text, "dataset": "mnist", "overrides": {},
            "train": {"epochs": 10, "batch_size": 50, "batches_per_epoch": None, "eps_ramp_epochs": 3,
                      "eps_start": 0.0 if eps_free else 0.01, "eps_free": eps_free, "optimizer": "adam",
                      "lr": 0.001, "lr_decay_every": 2, "lr_decay_factor": 0.6}}


def _metrics(rid, counts, n=1024, data=None):
    m = {"run_id": rid, "n": n, "provenance": {"device": "cpu", "commit": "0123456789abcdef"},
         "train": {"batch_time_s": 0.2805, "train_time_s": 3600.0, "history": []}}
    if data is not None:
        m["provenance"]["data_sha256"] = data
    for k, c in counts.items():
        m[k], m[f"{k}_ci95"] = c / n, list(wilson_interval(c, n))
    return m


CFG = {"scale": "smoke", "implemented_methods": ["natural", "mixtrain"], "time_budget_s": 60, "memory_cap_gib": 11,
       "runs": {"mixtrain-MNIST_Small-eps0.1": _run("mixtrain"),
                "natural-MNIST_Small-eps0.1": _run("natural", eps_free=True)}}
ROWS = ["natural-MNIST_Small-eps0.1", "mixtrain-MNIST_Small-eps0.1"]
METRICS = {"mixtrain-MNIST_Small-eps0.1": _metrics("mixtrain-MNIST_Small-eps0.1",
                                                   {"acc": 993, "era_pgd": 928, "vra": 894}),
           "natural-MNIST_Small-eps0.1": _metrics("natural-MNIST_Small-eps0.1", {"acc": 1010, "era_pgd": 0, "vra": 0})}


def test_render_puts_the_paper_under_each_row_with_legend_schedule_and_smoke_banner():
    text = render("table3", ROWS, CFG, METRICS, parse_paper_numbers(GOOD))
    lines = text.splitlines()
    ours = next(i for i, line in enumerate(lines) if "| MixTrain" in line)
    assert "97.0 [95.7, 97.9]" in lines[ours] and "87.3 [85.1, 89.2]" in lines[ours]
    below = lines[ours + 1]
    assert "↳ paper" in below and "98.5 · Δ −1.5 ✗" in below and "0.011 s† · ×25.5" in below
    assert "87.0 · Δ +0.3" in below and "87.0 · Δ +0.3 ✗" not in below  # inside [85.1, 89.2]: not marked
    natural_paper = lines[next(i for i, line in enumerate(lines) if "| Baseline" in line) + 1]
    assert "↳ paper" in natural_paper and natural_paper.count("n/a¹") == 5
    assert "| n/a² " in below  # MixTrain's ERA PGD: its row's reason
    assert "- ¹ not a paper row" in text and "- ² not read yet" in text  # the footnotes say why
    assert "SMOKE SCALE" in text and "✗ = the paper's value lies outside our" in text
    assert "MNIST — Baseline: 10 epochs × batch 50 · Adam lr 0.001, ×0.6 every 2 epochs · no ε" in text
    assert ("MNIST — MixTrain: 10 epochs × batch 50 · Adam lr 0.001, ×0.6 every 2 epochs · ε ramped from 0.01 "
            "over 3 epochs") in text
    # Tables VII/VIII are not the paper's I, III-VI: no paper rows; without paper data, no paper rows either
    assert "↳ paper" not in render("table7", ROWS, CFG, METRICS, parse_paper_numbers(GOOD))
    assert "↳ paper" not in render("table3", ROWS, CFG, METRICS)


def test_schedule_section_is_empty_for_configs_without_schedules():
    cfg = {"runs": {rid: {k: v for k, v in r.items() if k != "train"} for rid, r in CFG["runs"].items()}}
    assert schedule_section(ROWS, cfg) == ""


def test_table1_rows_compare_attack_success_rates():
    run = {**_run("madry", model="MNIST_FC1"), "eps": 0.3, "eps_text": "0.3"}
    cfg = {**CFG, "implemented_methods": ["madry"], "runs": {"madry-MNIST_FC1-eps0.3": run}}
    m = {"run_id": "madry-MNIST_FC1-eps0.3", "provenance": {"device": "cpu", "commit": "0" * 16},
         "table1": {"budget_passes": 100, "attacks": {
             a: {"success": s, "attacked": 98, "rate": s / 98, "passes": 100, "seconds": 1.0}
             for a, s in (("pgd", 47), ("cw", 44), ("interval", 39))}}}
    paper = parse_paper_numbers({"sources": SOURCES, "entries": [
        {"table": "table1", "run": "madry-MNIST_FC1-eps0.3", "column": "success_interval", "value": 56.2,
         "source": "quote", "where": "issue"},
        {"table": "table1", "run": "madry-MNIST_FC1-eps0.3", "column": "success_pgd", "value": 39.2,
         "source": "quote", "where": "issue"}]})
    text = render("table1", ["madry-MNIST_FC1-eps0.3"], cfg, {"madry-MNIST_FC1-eps0.3": m}, paper)
    below = text.splitlines()[next(i for i, line in enumerate(text.splitlines()) if "| MNIST_FC1" in line) + 1]
    assert "56.2† · Δ −16.4 ✗" in below  # outside [30.7, 49.7]
    assert "39.2† · Δ +8.8" in below and "39.2† · Δ +8.8 ✗" not in below  # inside [38.3, 57.7]
    assert "n/a¹" in below and "no entry for this row" in text  # CW: the data say nothing of it


def test_rows_with_different_data_hashes_are_refused(tmp_path):
    # as the train/evaluate stages record it: provenance.data_sha256, path under data_root -> sha256
    a = {"mnist/train-images-idx3-ubyte": "a" * 64, "mnist/t10k-images-idx3-ubyte": "c" * 64}
    b = {"mnist/train-images-idx3-ubyte": "b" * 64, "mnist/t10k-images-idx3-ubyte": "c" * 64}
    metrics = {"r1": _metrics("r1", {"acc": 1}, data=a), "r2": _metrics("r2", {"acc": 1}, data=b),
               "r3": _metrics("r3", {"acc": 1})}  # r3: recorded nothing (older metrics): unknown, not a mismatch
    with pytest.raises(DataMismatchError) as e:
        check_data_hashes(["r1", "r2", "r3"], metrics)
    msg = str(e.value)
    assert "mnist/train-images-idx3-ubyte" in msg and "r1" in msg and "r2" in msg and "aaaaaaaaaaaa" in msg
    assert "t10k-images-idx3-ubyte" not in msg and "r3" not in msg
    assert check_data_hashes(["r1", "r3"], metrics) == \
        "data: 2 files, same sha256 in all 1 runs that record it (1 do not)"
    assert check_data_hashes(["r3"], metrics) == "data sha256: not recorded by these runs"
    top_level = {**_metrics("r4", {"acc": 1}), "data_sha256": b}  # read where the stage records it, either place
    with pytest.raises(DataMismatchError):
        check_data_hashes(["r1", "r4"], {**metrics, "r4": top_level})

    # the stage itself: exits non-zero with the message, writes no table
    cfg = {**CFG, "tables": {"table3": ["mixtrain-MNIST_Small-eps0.1", "natural-MNIST_Small-eps0.1"]}, "figures": []}
    (tmp_path / "tables.json").write_text(json.dumps(cfg))
    for rid, data in (("mixtrain-MNIST_Small-eps0.1", a), ("natural-MNIST_Small-eps0.1", b)):
        (tmp_path / "eval" / rid).mkdir(parents=True)
        (tmp_path / "eval" / rid / "metrics.json").write_text(json.dumps({**METRICS[rid], "data_sha256": data}))
    rc = tables.main(["--config", str(tmp_path / "tables.json"), "--results", str(tmp_path), "--out",
                      str(tmp_path / "out")])
    assert rc == 1 and not (tmp_path / "out" / "tables.md").exists()


def test_tables_config_carries_each_runs_training_schedule():
    """The tables' headers state what the train configs say: params.yaml's scale and optimiser values."""
    from pipeline.config import load_params
    from pipeline.workflow_support import tables_config
    raw = _params_tables()
    cfg = tables_config(load_params(ROOT / "params.yaml", overrides={"scale": "cpu"}), ["natural", "mixtrain"])
    t, s = cfg["runs"]["mixtrain-MNIST_Small-eps0.1"]["train"], raw["scales"]["cpu"]
    assert (t["epochs"], t["eps_ramp_epochs"], t["lr_decay_every"], t["batch_size"]) == \
        (s["epochs"], s["eps_ramp_epochs"], s["lr_decay_every"], s["batch_size"])
    assert t["lr_decay_factor"] == raw["optim"]["mnist"]["decay_factor"] and not t["eps_free"]
    assert cfg["runs"]["natural-MNIST_Small-eps0.1"]["train"]["eps_free"]
    assert len(cfg["paper_numbers_sha256"]) == 64  # an edit of the paper's numbers re-renders the tables


def test_stage_refuses_a_malformed_paper_file_naming_the_entry(tmp_path, capsys):
    cfg = {**CFG, "tables": {"table3": ROWS}, "figures": []}
    (tmp_path / "tables.json").write_text(json.dumps(cfg))
    bad = copy.deepcopy(GOOD)
    bad["entries"][2]["value"] = 180.0
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(bad, allow_unicode=True))
    rc = tables.main(["--config", str(tmp_path / "tables.json"), "--results", str(tmp_path), "--out",
                      str(tmp_path / "out"), "--paper", str(tmp_path / "paper.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and "entries[2] (table3 / mixtrain-MNIST_Small-eps0.1 / vra)" in err and "[0, 100]" in err
    assert not (tmp_path / "out").exists()
