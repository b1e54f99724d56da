"""Run a command under a memory cap, in its own process, and measure its peak.

The MixTrain paper reports a training that does not fit its GPU (11 GiB) as "Out of memory"; the pipeline does the
same instead of crashing or skipping the row.  :func:`run_capped` starts the worker, polls its resident set size
(``VmRSS`` from ``/proc``, Linux) every ``poll_s`` seconds, and kills it as soon as it exceeds the cap.  On CUDA the
worker itself caps the allocator (:func:`cap_cuda_memory`) and exits with :data:`OOM_EXIT` on an out-of-memory error,
so GPU memory is capped exactly; the worker then says so with a flag file (``lift_cap_file``) and host memory is only
measured from that point (before it, while torch starts, the host cap applies).

The worker dies with its parent (``PR_SET_PDEATHSIG``, :func:`die_with_parent`), so killing the stage never leaves an
orphan training behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["CapResult", "run_capped", "die_with_parent", "cap_cuda_memory", "OOM_EXIT", "rss_bytes"]

#: exit status a worker uses to say "out of memory" (CUDA allocator refused)
OOM_EXIT = 75


@dataclass(frozen=True)
class CapResult:
    returncode: int
    out_of_memory: bool
    peak_rss_mb: float  # highest VmRSS seen by polling (a lower bound on the true peak)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes, or ``None`` where ``/proc`` cannot tell (process gone, not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _pdeathsig_for(parent: int) -> Callable[[], None]:
    """``preexec_fn`` (runs in the child between fork and exec): die with the parent, and exit at once if the parent
    already died in between (the death signal only covers deaths after it is set).  The setting survives exec, so
    there is no window in which the worker can outlive its supervisor."""
    def preexec() -> None:
        die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def run_capped(cmd: list[str], cap_bytes: int | None, poll_s: float = 0.05, lift_cap_file: Path | None = None,
               **popen_kwargs) -> CapResult:
    """Run ``cmd``; kill it if its RSS exceeds ``cap_bytes`` (``None``: no cap, still measured).  The child is
    killed with this process (Linux), also if this process is SIGKILLed.  Once ``lift_cap_file`` exists the cap is
    lifted (RSS still measured): the child creates it when it finds itself on CUDA and caps its allocator instead."""
    if sys.platform.startswith("linux"):
        popen_kwargs.setdefault("preexec_fn", _pdeathsig_for(os.getpid()))
    proc = subprocess.Popen(cmd, **popen_kwargs)
    peak, killed = 0, False
    try:
        while proc.poll() is None:
            rss = rss_bytes(proc.pid)
            if rss is not None:
                peak = max(peak, rss)
                if cap_bytes is not None and lift_cap_file is not None and lift_cap_file.exists():
                    cap_bytes = None
                if cap_bytes is not None and rss > cap_bytes:
                    proc.kill()
                    killed = True
                    break
            time.sleep(poll_s)
    except BaseException:
        proc.kill()
        raise
    rc = proc.wait()
    return CapResult(rc, killed or rc == OOM_EXIT, peak / 2**20)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def cap_cuda_memory(device, cap_bytes: int | None) -> None:
    """Limit the CUDA caching allocator on ``device`` to ``cap_bytes`` (no-op on CPU or without a cap)."""
    import torch
    if cap_bytes is None or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
