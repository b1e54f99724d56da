"""Progress bars in logs: one line per refresh with the position and an ETA, never carriage-return redraws."""
import io

from pipeline.utils.progress import progress


def test_progress_in_a_log_writes_lines_with_eta():
    log = io.StringIO()  # not a terminal
    out = list(progress(range(5), total=5, desc="eval run-x verify interval", unit="batch", log_interval_s=0,
                        stream=log))
    assert out == list(range(5))
    text = log.getvalue()
    assert "\r" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) >= 2  # at least the start and the end
    assert lines[-1].startswith("eval run-x verify interval") and "5/5" in lines[-1]
    assert all("<" in ln for ln in lines)  # tqdm's [elapsed<remaining] field: the ETA
