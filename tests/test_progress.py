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


def test_a_postfix_updated_every_step_does_not_write_a_line_per_step():
    """The trainer sets the loss as a postfix on every step: in a log that must not force a redraw per step (it
    did: 66,000 lines of '0/1100' in one cpu-scale training log, no position, no ETA)."""
    log = io.StringIO()
    bar = progress(range(300), total=300, desc="train run-x epoch 1/1", unit="batch", log_interval_s=30, stream=log)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = [ln for ln in log.getvalue().splitlines() if ln.strip()]
    assert len(lines) <= 3, lines[:5]
    assert "300/300" in lines[-1] and "loss=" in lines[-1]
