"""Progress bars with an ETA that also read well in log files.

On a terminal this is plain tqdm.  Written to a file (a Snakemake job's log), tqdm's carriage-return redraws would
pile up on one line, so each refresh becomes its own line instead, at most every ``log_interval_s`` seconds: a user
running ``tail -f`` on a log sees what the job is doing, how far it is and when it will finish.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO, TypeVar

from tqdm import tqdm

__all__ = ["progress"]

T = TypeVar("T")


class _LineWriter:
    """A file-like object turning tqdm's ``\\r``-redraws into one line per refresh."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, s: str) -> int:
        s = s.replace("\r", "").rstrip("\n")
        if s.strip():
            self.stream.write(s + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


class _LogTqdm(tqdm):
    """tqdm for a log: ``set_postfix`` only records the values for the next timed refresh.  (tqdm's default redraws
    at once, with the position of the last timed refresh: a step loop updating its loss every step would write one
    line per step, all reading 0%, and no ETA.)"""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):  # noqa: D102 - tqdm's signature
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             log_interval_s: float = 30.0, stream: TextIO | None = None) -> "tqdm[T]":
    """``tqdm`` over ``iterable`` on stderr: redrawn in place on a terminal, one line per refresh in a log."""
    stream = sys.stderr if stream is None else stream
    tty = hasattr(stream, "isatty") and stream.isatty()
    if tty:
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=False)
    return _LogTqdm(iterable, total=total, desc=desc, unit=unit, file=_LineWriter(stream),
                    mininterval=log_interval_s, maxinterval=log_interval_s, ascii=True, ncols=110, leave=True)
