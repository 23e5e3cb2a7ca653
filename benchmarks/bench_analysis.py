"""Time the analysis end of the workflow: collect (MLflow -> parquet), tables, figures.

The goal (workflow issue): <= 10 s for collect + tables + figures of the whole grid. With
``--grid`` it times the real grid that the workflow tracked (its MLflow store, read only;
outputs go to a scratch directory, never to reports/); without, a synthetic 3-seed grid of
every run (200 logged steps each) written to a scratch SQLite store first. Each phase runs in
this process, as the CLI verbs do, ``--repeats`` times; the median is recorded.

    python benchmarks/bench_analysis.py [--grid results/mini/grid.json] [--out benchmarks/results/analysis.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

GOAL_S = 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", help="grid.json of a tracked workflow run (default: a synthetic grid)")
    ap.add_argument("--tracking-uri", help="MLflow store of --grid (default: the workbench default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/analysis.json")
    args = ap.parse_args()

    import torch  # noqa: F401  (imported by the CLI process too; keep it out of the timings)

    from workbench.analysis import collect, write_figures, write_tables
    from workbench.analysis.load import Runs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.grid:
            from workbench.grid import read_grid
            from workbench.tracking import default_tracking_uri

            grid = read_grid(args.grid)
            uri, experiment, parent = args.tracking_uri or default_tracking_uri(), grid["experiment"], grid["parent_run_id"]
            source = f"tracked grid {args.grid} (experiment {experiment})"
        else:
            from workbench.analysis.synthetic import make_synthetic_grid, write_runs

            uri, experiment = f"sqlite:///{tmp / 'mlflow.db'}", "sgopd-synthetic"
            parent = write_runs(uri, experiment, make_synthetic_grid(seeds=(0, 1, 2), steps=200))
            source = "synthetic grid, 3 seeds x every run, 200 steps"

        times: dict[str, list[float]] = {"collect": [], "tables": [], "figures": []}
        for i in range(args.repeats):
            out = tmp / f"rep{i}"
            t0 = time.perf_counter()
            collect(uri, experiment, out / "collect", parent_run_id=parent)
            t1 = time.perf_counter()
            runs = Runs.read(out / "collect")  # what the tables and figures verbs read
            write_tables(runs, out / "tables")
            t2 = time.perf_counter()
            write_figures(Runs.read(out / "collect"), out / "figures")
            t3 = time.perf_counter()
            for phase, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[phase].append(dt)
        n_runs = len(runs.runs)

    median = {phase: statistics.median(ts) for phase, ts in times.items()}
    total = sum(median.values())
    result = {
        "benchmark": "collect + tables + figures (in-process, median of repeats)",
        "source": source,
        "training_runs": n_runs,
        "machine": f"{platform.machine()} cpu",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # > 0.5: other jobs shared the CPUs
        "repeats": args.repeats,
        "seconds": {**{k: round(v, 3) for k, v in median.items()}, "total": round(total, 3)},
        "all_seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "goal_s": GOAL_S,
        "goal_met": total <= GOAL_S,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["seconds"]), "goal met" if result["goal_met"] else "goal NOT met")


if __name__ == "__main__":
    main()
