"""Where a Snakemake run's wall time went: per-job durations read from its log.

    python benchmarks/snakemake_jobs.py                      # the newest .snakemake/log/*.snakemake.log
    python benchmarks/snakemake_jobs.py LOG --top 15 --json

Prints the run's elapsed time, each rule's job count and summed job time (from the log's "[date] rule ..." line to
its "Finished jobid" line, whole seconds), the summed time of the jobs that hold the ``gpu`` token (trainings: with
``--resources gpu=N`` at most N run at once, so that sum / N is a floor on the run's wall time), and the slowest
jobs.
Used for docs/performance.md's smoke-pipeline numbers.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_STAMP = re.compile(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")
_RULE = re.compile(r"(?:local)?rule (\w+):")
_JOBID = re.compile(r"\s+jobid: (\d+)")
_WILDCARDS = re.compile(r"\s+wildcards: (.*)")
_RESOURCES = re.compile(r"\s+resources: (.*)")
_DONE = re.compile(r"Finished jobid: (\d+)")
_ELAPSED = re.compile(r"Elapsed time: (\d+):(\d+):([\d.]+)")


def jobs(log: str) -> tuple[list[dict], float | None]:
    """``([{rule, wildcards, seconds, gpu}], elapsed seconds or None)`` from a Snakemake log's text."""
    now, pending, started, done, elapsed = None, None, {}, [], None
    for line in log.splitlines():
        if m := _STAMP.match(line):
            now = dt.datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            pending = {"rule": m.group(1), "start": now, "wildcards": "", "gpu": False}
        elif (m := _JOBID.match(line)) and pending is not None:
            started[m.group(1)] = pending
        elif (m := _WILDCARDS.match(line)) and pending is not None:
            pending["wildcards"] = m.group(1)
        elif (m := _RESOURCES.match(line)) and pending is not None:
            pending["gpu"] = bool(re.search(r"\bgpu=[1-9]", m.group(1)))
        elif (m := _DONE.match(line)) and m.group(1) in started:
            job = started.pop(m.group(1))
            done.append({"rule": job["rule"], "wildcards": job["wildcards"], "gpu": job["gpu"],
                         "seconds": (now - job["start"]).total_seconds()})
        elif m := _ELAPSED.search(line):
            elapsed = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return done, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", nargs="?", type=Path, help="a Snakemake log (default: the newest in .snakemake/log)")
    ap.add_argument("--top", type=int, default=10, help="how many of the slowest jobs to list (>= 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = args.log
    if log is None:
        logs = sorted((ROOT / ".snakemake/log").glob("*.snakemake.log"))
        if not logs:
            ap.error("no .snakemake/log/*.snakemake.log here; pass a log file")
        log = logs[-1]
    if not log.is_file():
        ap.error(f"log: {log} is not a file")
    if args.top < 0:
        ap.error(f"--top: expected a number >= 0, got {args.top}")
    done, elapsed = jobs(log.read_text())
    per_rule = collections.defaultdict(lambda: [0, 0.0])
    for j in done:
        per_rule[j["rule"]][0] += 1
        per_rule[j["rule"]][1] += j["seconds"]
    gpu_sum = sum(j["seconds"] for j in done if j["gpu"])
    top = sorted(done, key=lambda j: -j["seconds"])[: args.top]
    if args.json:
        print(json.dumps({"log": str(log), "elapsed_s": elapsed, "jobs": len(done), "gpu_jobs_sum_s": gpu_sum,
                          "per_rule": {r: {"jobs": n, "sum_s": s} for r, (n, s) in per_rule.items()},
                          "slowest": top}))
        return 0
    print(f"{log.name}: {len(done)} jobs, elapsed {elapsed if elapsed is not None else '?'} s")
    for rule, (n, s) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
        print(f"  {rule:10s} {n:4d} jobs  {s:7.0f} s summed")
    print(f"  jobs holding the gpu token: {gpu_sum:.0f} s summed")
    for j in top:
        print(f"  {j['seconds']:6.0f} s  {j['rule']:9s} {j['wildcards']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
