"""Where a grid's wall time went, from the Snakemake log of one `make reproduce`.

    python benchmarks/grid_timing.py .snakemake/log/<when>.snakemake.log --out benchmarks/results/x.json

Reads each job's start and finish lines (Snakemake 9's format: a ``[date]`` line, then
``rule NAME:`` / ``localrule NAME:`` with ``output:`` and ``jobid:``; later a ``[date]``
line, then ``Finished jobid: N``) and writes per-job seconds, the sum per rule, the busy
share of the cores and the wall time from the first job's start to the last job's end.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

DATE = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse(log: str) -> list[dict]:
    jobs: dict[int, dict] = {}
    when = None
    pending: dict | None = None
    for line in log.splitlines():
        if m := DATE.match(line.strip()):
            when = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        s = line.strip()
        if m := re.match(r"^(local)?rule (\w+):$", s):
            pending = {"rule": m.group(2), "start": when}
        elif pending is not None and s.startswith("output:"):
            pending["output"] = s.removeprefix("output:").strip()
        elif pending is not None and (m := re.match(r"^jobid: (\d+)$", s)):
            jobs[int(m.group(1))] = pending
            pending = None
        elif m := re.match(r"^Finished jobid: (\d+)", s):
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job["end"] = when
    done = [j for j in jobs.values() if "end" in j and j["start"] is not None]
    for j in done:
        j["seconds"] = (j["end"] - j["start"]).total_seconds()
    return done


def summary(jobs: list[dict], cores: int) -> dict:
    start = min(j["start"] for j in jobs)
    end = max(j["end"] for j in jobs)
    wall = (end - start).total_seconds()
    per_rule: dict[str, float] = {}
    for j in jobs:
        per_rule[j["rule"]] = per_rule.get(j["rule"], 0.0) + j["seconds"]
    busy = sum(j["seconds"] for j in jobs)
    return {
        "wall_seconds": wall,
        "wall_minutes": round(wall / 60, 1),
        "jobs": len(jobs),
        "job_seconds_per_rule": {k: round(v) for k, v in sorted(per_rule.items(), key=lambda kv: -kv[1])},
        "core_busy_share": round(busy / (cores * wall), 3) if wall else None,
        "per_job": [
            {"rule": j["rule"], "output": j.get("output", ""), "start": j["start"].isoformat(), "seconds": j["seconds"]}
            for j in sorted(jobs, key=lambda j: j["start"])
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = summary(parse(args.log.read_text()), args.cores)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_job"}, indent=1))


if __name__ == "__main__":
    main()
