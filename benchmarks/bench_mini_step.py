"""Time the mini trainer per method at the default mini scale and project the grid's wall time.

For each grid run it trains ``--steps`` steps (after one warm-up step that is not
counted) in a scratch directory and reads the trainer's own timings from
``metrics.jsonl``: seconds per step split into sampling, teacher scoring (PTS teacher
generation included), reference scoring and update (advantages, losses, backward,
optimiser), plus tokens per second. It then times one evaluation with the default eval
settings and projects the full grid (every run config x its steps + one evaluation per
run and for student-init / teacher / sgopd@90%) on this machine.

    python benchmarks/bench_mini_step.py --world results/mini/world [--steps 5] [--runs opd sgopd ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PHASES = ("sample", "teacher", "ref", "update")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=str(REPO / "results" / "mini" / "world"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--runs", nargs="*", default=None, help="run ids (default: every grid run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mini_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import os

    from workbench.config import load_config
    from workbench.mini.runs import _evaluate
    from workbench.mini.trainer import train
    from workbench.mini.world import World
    from workbench.tracking import Tracker, load_history, standard_tags

    runs = args.runs or sorted(p.stem for p in (REPO / "experiments" / "runs").glob("*.yaml"))
    world = World.open(args.world)
    scratch = Path(tempfile.mkdtemp(prefix="bench-mini-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{scratch / 'mlflow.db'}")
    rows = {}
    try:
        for run in runs:
            cfg = load_config(REPO / "experiments" / "runs" / f"{run}.yaml")
            if cfg.train.init_from:  # stage 2 costs what its method costs: start from the student
                cfg = cfg.with_overrides({"train.init_from": None})
            # One warm-up step + the measured ones. The short schedule keeps PTS in proportion:
            # the teacher samples in its first 35%, as in the first 35% of a full run.
            short = cfg.with_overrides(
                {
                    "train.steps": args.steps + 1,
                    "train.checkpoint_every": 10**6,
                    "optim.warmup_steps": 0,
                    "train.keep_checkpoints_at": [],
                }
            )
            run_dir = scratch / run
            with Tracker(run_dir, experiment="bench", run_name=run, tags=standard_tags(short), config=short.to_dict()) as tr:
                t0 = time.time()
                train(short, run_dir, world.root, tr)
                wall = time.time() - t0
            hist = [r for r in load_history(run_dir) if r["step"] > 1]
            row = {f"{p}_s": statistics.mean(r[f"perf/{p}_seconds"] for r in hist) for p in PHASES}
            row["step_s"] = statistics.mean(r["perf/step_seconds"] for r in hist)
            row["tokens_per_s"] = statistics.mean(r["perf/tokens_per_second"] for r in hist)
            row["steps_in_grid_run"] = cfg.train.steps
            row["wall_s_incl_load"] = wall
            rows[run] = row
            print(
                f"{run:28s} step {row['step_s']:6.3f}s  "
                + "  ".join(f"{p} {row[p + '_s']:.3f}" for p in PHASES)
                + f"  tok/s {row['tokens_per_s']:8.0f}",
                flush=True,
            )
        t0 = time.time()
        _evaluate(world.root / "student", world, load_config(REPO / "experiments" / "runs" / "opd.yaml"))
        eval_s = time.time() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    train_total = sum(r["step_s"] * r["steps_in_grid_run"] for r in rows.values())
    n_evals = len(rows) + 3  # + student-init, teacher, sgopd@90%
    projected = train_total + n_evals * eval_s
    gate_cost = None
    if {"opd", "gate-1.8-pass"} <= rows.keys():
        gate_cost = rows["gate-1.8-pass"]["step_s"] / rows["opd"]["step_s"] - 1
    result = {
        "benchmark": "mini trainer seconds per step by method (default mini scale)",
        "machine": f"{platform.machine()} cpu, {args.threads} torch threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "measured_steps_per_run": args.steps,
        "runs": rows,
        "eval_seconds_student_init": eval_s,
        "projected_grid_seconds_one_seed": projected,
        "projected_grid_train_seconds": train_total,
        "gate_step_overhead_vs_opd": gate_cost,
        "note": "only the runs listed were measured" if args.runs else "every grid run measured",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"eval (student-init, default eval settings): {eval_s:.1f}s")
    print(f"projected grid, one seed: {projected / 60:.1f} min (training {train_total / 60:.1f} min)")
    if gate_cost is not None:
        print(f"gate-1.8-pass step vs opd step: {100 * gate_cost:+.1f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
