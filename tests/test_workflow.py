"""The Snakemake workflow: dry runs of every scale, and the smoke grid end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import grid as G

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed in this environment")


def snakemake(*args: str, cwd: Path = REPO, check: bool = True, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True, check=check,
                          env={**os.environ, **(env or {})})


def job_counts(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("scale", [s for s in G.scale_names() if G.load_scale(s).backend == "mini"])
def test_dry_run_lists_every_job(scale, tmp_path):
    out = snakemake("-n", "--config", f"scale={scale}", f"results={tmp_path}").stdout
    counts = job_counts(out)
    n_seeds, n_runs = len(G.load_scale(scale).seeds), len(G.run_ids())
    assert counts["train"] == n_runs * n_seeds
    assert counts["eval_extra"] == 3 * n_seeds  # student-init, teacher, sgopd@90%
    for rule in ("prepare", "grid_start", "collect", "tables", "figures", "report"):
        assert counts[rule] == 1, rule


def test_subsets_and_stage_dependencies(tmp_path):
    out = snakemake("-n", "--config", "scale=smoke", "seeds=[0,1]", "runs=[opd,timesep-1.5]",
                    f"results={tmp_path}").stdout
    counts = job_counts(out)
    # timesep-1.5 starts from timesep-stage1's checkpoint, so stage 1 trains too.
    assert counts["train"] == 2 * 3
    assert counts["eval_extra"] == 2 * 2  # no sgopd in the subset: no sgopd@90%
    assert "runs/timesep-stage1/seed1/eval.json" in out


def test_bad_workflow_config_fails_before_any_job(tmp_path):
    r = snakemake("-n", "--config", "scale=smoke", "seeds=oops", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "seeds" in (r.stdout + r.stderr)
    r = snakemake("-n", "--config", "scale=nope", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "unknown scale 'nope'" in (r.stdout + r.stderr)
    r = snakemake("-n", "--config", "scale=smoke", "runs=[nope]", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "unknown run 'nope'" in (r.stdout + r.stderr)


def test_profiles_parse(tmp_path):
    out = snakemake("-n", "--profile", "profiles/default", "--config", "scale=smoke", f"results={tmp_path}").stdout
    assert "Job stats:" in out
