"""benchmarks/grid_timing.py reads a Snakemake log into per-job seconds (hand-computed case)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "grid_timing", Path(__file__).resolve().parents[1] / "benchmarks" / "grid_timing.py"
)
grid_timing = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(grid_timing)

LOG = """\
Select jobs to execute...
Execute 2 jobs...
[Mon Dec  7 12:00:00 2026]
localrule train:
    input: experiments/runs/opd.yaml
    output: results/mini/runs/opd/seed0/eval.json
    jobid: 3
    reason: Missing output files
[Mon Dec  7 12:00:10 2026]
rule eval_extra:
    output: results/mini/evals/teacher/seed0.json
    jobid: 4
[Mon Dec  7 12:01:10 2026]
Finished jobid: 4 (Rule: eval_extra)
[Mon Dec  7 12:05:00 2026]
Finished jobid: 3 (Rule: train)
[Mon Dec  7 12:05:00 2026]
localrule train:
    output: results/mini/runs/sft/seed0/eval.json
    jobid: 5
"""


def test_jobs_their_seconds_and_the_busy_share():
    jobs = grid_timing.parse(LOG)
    assert sorted((j["rule"], j["seconds"]) for j in jobs) == [("eval_extra", 60.0), ("train", 300.0)]  # job 5 never finished
    out = grid_timing.summary(jobs, cores=2)
    assert out["wall_seconds"] == 300.0 and out["jobs"] == 2
    assert out["job_seconds_per_rule"] == {"train": 300, "eval_extra": 60}
    assert out["core_busy_share"] == round(360 / 600, 3)
    assert [j["output"] for j in out["per_job"]] == [
        "results/mini/runs/opd/seed0/eval.json",
        "results/mini/evals/teacher/seed0.json",
    ]
