"""The paper's numbers beside ours: one comparison cell per measured value, and the legend that explains them.

A cell shows the paper's value, the difference ours − paper (percentage points; times and memory as a ratio), and
``✗`` where the paper's value lies outside our 95% interval as printed; a missing paper value is ``n/a`` with a
numbered footnote saying why (:class:`Footnotes`).  Used by :mod:`pipeline.stages.tables` for Tables I and III–VI.
"""
from __future__ import annotations

from pipeline.paper import SECONDS_COLUMNS, PaperNumbers, PaperValue
from pipeline.utils import wilson_interval

__all__ = ["PAPER_TABLES", "PAPER_COLUMNS", "PAPER_LABEL", "OUTSIDE", "UNCHECKED", "NO_ENTRY", "Footnotes",
           "ours_value", "paper_cell", "paper_legend", "min_sec"]

PAPER_TABLES = ("table1", "table3", "table4", "table5", "table6")
#: column header -> the paper column (pipeline.paper) it is compared with
PAPER_COLUMNS = {"ACC (%)": "acc", "ERA PGD (%)": "era_pgd", "ERA CW (%)": "era_cw", "ERA Interval (%)": "era_interval",
                 "VRA (%)": "vra", "Batch Time": "batch_time_s", "Train Time": "train_time_s",
                 "Peak Memory": "peak_mem_mb", "PGD success": "success_pgd", "CW success": "success_cw",
                 "Interval success": "success_interval", "Time to target": "time_to_target_s"}
PAPER_LABEL = "↳ paper"
OUTSIDE = "✗"      # the paper's value lies outside our 95% interval
UNCHECKED = "†"    # a secondary quote of the paper, not yet checked against the paper's own table
NO_ENTRY = "no entry for this row in pipeline/paper/mixtrain_paper.yaml"
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def min_sec(t: float) -> str:
    """Seconds as ``<m>m<ss.s>s``."""
    minutes, seconds = divmod(t, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def ours_value(m: dict, column: str) -> tuple[float | None, tuple[float, float] | None]:
    """Our number for a paper column, in the paper's unit (percent, seconds, MB), and its 95% interval (percent
    columns only); ``(None, None)`` where we have no number (not run, out of memory, not measured)."""
    if m.get("status") == "out_of_memory":
        return None, None
    if column in ("acc", "era_pgd", "era_cw", "era_interval", "vra"):
        if m.get(column) is None:
            return None, None
        lo, hi = m.get(f"{column}_ci95") or (None, None)
        return 100 * m[column], (None if lo is None or hi is None else (100 * lo, 100 * hi))
    if column.startswith("success_"):
        a = ((m.get("table1") or {}).get("attacks") or {}).get(column[len("success_"):])
        if not a:
            return None, None
        lo, hi = wilson_interval(a["success"], a["attacked"]) if a["attacked"] else (0.0, 1.0)
        return 100 * a["rate"], (100 * lo, 100 * hi)
    if column in ("batch_time_s", "train_time_s", "peak_mem_mb"):
        return (m.get("train") or {}).get(column), None
    return None, None  # time_to_target_s: our Table V cell is text (epoch granularity), shown beside the paper's


def _signed(d: float) -> str:
    d = round(d, 1) + 0.0  # no "-0.0"
    return "±0.0" if d == 0 else f"{d:+.1f}".replace("-", "−")


def _paper_number(pv: PaperValue) -> str:
    v = pv.value
    assert v is not None
    if pv.column == "train_time_s":
        return min_sec(v)
    if pv.column in SECONDS_COLUMNS:
        return f"{v:g} s"
    if pv.unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:.1f}"


class Footnotes:
    """Numbered reasons for the n/a cells of one table (each distinct reason once)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return str(self.reasons.index(reason) + 1).translate(_SUPERSCRIPT)

    def section(self) -> str:
        if not self.reasons:
            return ""
        return ("\nWhy a paper value is n/a:\n\n"
                + "".join(f"- {str(i + 1).translate(_SUPERSCRIPT)} {r}\n" for i, r in enumerate(self.reasons)))


def paper_cell(pv: PaperValue | None, ours: float | None, ci: tuple[float, float] | None,
               notes: Footnotes | None = None) -> str:
    """The paper's value for one cell, the difference ours − paper, and ✗ when it lies outside our interval.

    Percentages: ``Δ`` in percentage points; the interval test uses the interval as printed (one decimal), so the mark
    agrees with what the reader sees.  Times and memory: no interval; ``×`` is ours ÷ paper.  No number: ``n/a`` with
    a footnote marker (``notes``) for its reason."""
    notes = notes or Footnotes()
    if pv is None or pv.value is None:
        return "n/a" + notes.mark(pv.reason if pv is not None and pv.reason else NO_ENTRY)
    text = _paper_number(pv) + ("" if pv.checked else UNCHECKED)
    if ours is None:
        return text
    if pv.unit == "%":
        text += f" · Δ {_signed(ours - pv.value)}"
        if ci is not None and not round(ci[0], 1) <= round(pv.value, 1) <= round(ci[1], 1):
            text += f" {OUTSIDE}"
        return text
    if pv.value > 0:
        ratio = ours / pv.value
        text += f" · ×{ratio:,.0f}" if ratio >= 100 else f" · ×{ratio:.3g}"
    return text


def paper_legend(paper: PaperNumbers) -> str:
    unchecked = any(not e.checked for e in paper.entries if e.value is not None)
    return (f"Under each row, **{PAPER_LABEL}**: the paper's value for the cell above, then Δ = ours − paper in "
            f"percentage points (times and memory: ours ÷ paper, as ×); {OUTSIDE} = the paper's value lies outside "
            f"our 95% interval (as printed)"
            + (f"; {UNCHECKED} = quoted in this project's issues/docs, not yet checked against the paper's own table"
               if unchecked else "")
            + "; n/a¹ = no paper value, the note under the table says why. "
            "Data and sources: `pipeline/paper/mixtrain_paper.yaml`, `docs/paper_numbers.md`.\n\n")
