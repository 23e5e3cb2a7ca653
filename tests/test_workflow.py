"""The Snakemake workflow: dry runs of every scale, and the smoke grid end to end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workbench import grid as G
from workbench.errors import UserError
from workbench.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(*args: str, cwd: Path = REPO, check: bool = True, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})}
    )


def job_counts(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The repository's tracked files only, as `git clone` gives them: committed reports/, no
    results/, no .snakemake/ metadata."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    dest = tmp_path_factory.mktemp("clone")
    for name in filter(None, files.stdout.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.parametrize("scale", [s for s in G.scale_names() if G.load_scale(s).backend == "mini"])
def test_dry_run_on_a_fresh_clone_lists_every_job(scale, fresh_clone, tmp_path):
    # The committed reports/ must not make a fresh clone's workflow look finished.
    out = snakemake("-n", "--config", f"scale={scale}", f"results={tmp_path}", cwd=fresh_clone).stdout
    counts = job_counts(out)
    n_seeds, n_runs = len(G.load_scale(scale).seeds), len(G.run_ids())
    assert counts["train"] == n_runs * n_seeds
    assert counts["eval_extra"] == 3 * n_seeds  # student-init, teacher, sgopd@90%
    for rule in ("prepare", "grid_start", "collect", "tables", "figures", "report"):
        assert counts[rule] == 1, rule
    # Only the mini scale's report is copied to the committed reports/.
    assert counts.get("publish", 0) == (scale == "mini")


def test_subsets_and_stage_dependencies(tmp_path):
    out = snakemake("-n", "--config", "scale=smoke", "seeds=[0,1]", "runs=[opd,timesep-1.5]", f"results={tmp_path}").stdout
    counts = job_counts(out)
    # timesep-1.5 starts from timesep-stage1's checkpoint, so stage 1 trains too.
    assert counts["train"] == 2 * 3
    assert counts["eval_extra"] == 2 * 2  # no sgopd in the subset: no sgopd@90%
    assert "runs/timesep-stage1/seed1/eval.json" in out


def test_only_the_runs_a_figure_draws_evaluate_during_training(tmp_path):
    """experiments/grid.yaml: Fig 6 draws accuracy over training for a few runs; every other
    grid run is told to evaluate its final model only (a shorter grid, same training)."""
    out = snakemake("-n", "-p", "--config", "scale=mini", "seeds=[0]", f"results={tmp_path}").stdout
    commands = re.findall(r"-m workbench train experiments/runs/([\w.-]+)\.yaml .*", out)
    assert sorted(commands) == G.run_ids()
    for line in re.findall(r"-m workbench train experiments/runs/.*", out):
        run = re.search(r"runs/([\w.-]+)\.yaml", line).group(1)
        assert ("--set train.eval_every=0" not in line) == G.evaluates_during_training(run), run
    assert {r for r in G.run_ids() if G.evaluates_during_training(r)} == {"opd", "exopd-1.25", "sgopd"}
    # Longest jobs first: each training job's priority is the training it starts.
    prio = dict(re.findall(r"wildcards: run=([\w.-]+), seed=0\n\s+priority: (\d+)", out))
    assert {r: int(p) for r, p in prio.items()} == {r: G.train_priority(r, "mini") for r in G.run_ids()}
    assert G.train_priority("timesep-stage1", "mini") > G.train_priority("timesep-1.5", "mini") > G.train_priority("sft", "mini")
    assert G.train_priority("opd", "mini") > G.train_priority("seqkd", "mini")


def test_bad_workflow_config_fails_before_any_job(tmp_path):
    r = snakemake("-n", "--config", "scale=smoke", "seeds=oops", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "seeds" in (r.stdout + r.stderr)
    r = snakemake("-n", "--config", "scale=nope", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "unknown scale 'nope'" in (r.stdout + r.stderr)
    r = snakemake("-n", "--config", "scale=smoke", "runs=[nope]", f"results={tmp_path}", check=False)
    assert r.returncode != 0 and "unknown run 'nope'" in (r.stdout + r.stderr)


def test_grid_facts_name_the_file_the_key_and_what_is_valid(tmp_path):
    experiments = shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    facts = experiments / "grid.yaml"
    text = facts.read_text()
    facts.write_text(text.replace("1b: [sgopd, exopd-1.25]", "1b: [sgopd, nope]"))
    with pytest.raises(UnknownNameError) as e:
        G.load_facts(experiments)
    assert str(e.value) == f"{facts}: claims.1b: unknown run 'nope'; valid: {', '.join(G.run_ids())}"
    # a checkpoint is evaluated only if its run keeps it
    facts.write_text(text.replace("{run: sgopd, at_frac: 0.9", "{run: opd, at_frac: 0.9"))
    with pytest.raises(UserError, match=r"extra_evals\.sgopd-at90\.at_frac: opd's config keeps no checkpoint at 0\.9"):
        G.load_facts(experiments)


def job_resources(out: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run prints."""
    jobs, rule = [], None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs.append((rule, dict(kv.split("=", 1) for kv in m.group(1).split(", "))))
            rule = None
    return jobs


def test_profiles_parse(tmp_path):
    out = snakemake("-n", "--profile", "profiles/default", "--config", "scale=smoke", f"results={tmp_path}").stdout
    assert "Job stats:" in out
    # The SLURM profile, through its executor plugin (the dev extra), on both backends: every
    # job gets the account and the default resources (a rule may declare its own values), the
    # rules it names exist and get what it sets, and exactly the GPU jobs leave the default
    # (CPU) partition.
    import snakemake_executor_plugin_slurm  # noqa: F401

    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    defaults, per_rule = profile["default-resources"], profile["set-resources"]
    seen = set()
    for backend in ("mini", "verl"):
        args = ("--config", "scale=smoke", f"backend={backend}", "seeds=[0]", f"results={tmp_path / backend}")
        out = snakemake("-n", "--profile", "profiles/slurm", *args).stdout
        assert "Job stats:" in out
        jobs = job_resources(out)
        assert jobs, out[-2000:]
        for rule, res in jobs:
            seen.add(rule)
            assert set(defaults) <= set(res), (rule, res)
            assert res["slurm_account"] == str(defaults["slurm_account"])
            assert all(res[k] == str(v) for k, v in per_rule.get(rule, {}).items()), (rule, res)
            assert ("gpu" in res) == (res["slurm_partition"] != defaults["slurm_partition"]), (rule, res)
    assert set(per_rule) <= seen, set(per_rule) - seen


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the workflow ended early"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.5)


def _run_workflow(args: list[str], env: dict, timeout: float = 900) -> str:
    r = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", "--nolock", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def check_smoke_outputs(results: Path, tracking_uri: str, runs: list[str], seeds: list[int]) -> None:
    import mlflow

    report = (results / "smoke" / "report" / "REPRODUCTION.md").read_text()
    for word in ("Table 1", "Table 2", "Table 3", "29.53", "verdict"):
        assert word in report, word
    assert (results / "smoke" / "report" / "tables" / "table1.csv").exists()
    assert (results / "smoke" / "report" / "figures" / "fig4_avg_bars.png").stat().st_size > 5000
    if "sgopd" in runs:
        assert "consensus" in (results / "smoke" / "report" / "casestudy_sgopd.html").read_text()
    client = mlflow.tracking.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sgopd-smoke")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    trained = [(r.data.tags["run"], r.data.tags["seed"]) for r in children if r.data.tags.get("workbench.kind") != "eval"]
    assert sorted(trained) == sorted((run, str(s)) for run in runs for s in seeds)  # one MLflow run each
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["run"] for r in children if r.data.tags.get("workbench.kind") == "eval"} == {
        G.EXTRA_EVALS[e] for e in G.extra_evals(runs)
    }
    # Evaluations during training only for the runs the accuracy-over-training figure draws.
    for r in children:
        if r.data.tags.get("workbench.kind") != "eval":
            points = client.get_metric_history(r.info.run_id, "eval/avg_at_k")
            assert (len(points) > 1) == G.evaluates_during_training(r.data.tags["run"]), r.data.tags["run"]


def test_smoke_subset_end_to_end_and_an_interrupted_workflow_resumes(tmp_path):
    runs = ["opd", "sgopd", "timesep-1.5"]  # every rule, stage dependencies and sgopd@90% included
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    args = ["--config", "scale=smoke", "seeds=[0]", f"runs=[{','.join(runs)}]", f"results={tmp_path}"]
    proc = subprocess.Popen(
        [str(SNAKEMAKE), "--cores", "2", "--nolock", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Stage 2 starts only once Snakemake has recorded stage 1 as finished, so at least
        # one train job is complete when the workflow is interrupted (an eval.json alone may
        # belong to a job killed before Snakemake marked it done).
        _wait_for(tmp_path / "smoke" / "runs" / "timesep-1.5" / "seed0" / "config.yaml", proc)
    finally:
        proc.send_signal(signal.SIGINT)  # as a user's Ctrl-C
        proc.wait(timeout=120)
    assert not (tmp_path / "smoke" / "report" / "REPRODUCTION.md").exists()

    out = _run_workflow(args, env)
    # Only unfinished jobs ran again (a job killed after writing its output counts as
    # unfinished), and interrupted trainings resumed into their MLflow runs.
    assert job_counts(out).get("train", 0) < 4
    check_smoke_outputs(tmp_path, uri, ["opd", "sgopd", "timesep-stage1", "timesep-1.5"], [0])
    assert "Nothing to be done" in _run_workflow(args, env)


@pytest.mark.slow
def test_the_whole_smoke_grid_end_to_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _run_workflow(["--config", "scale=smoke", f"results={tmp_path}"], {"MLFLOW_TRACKING_URI": uri}, timeout=3600)
    check_smoke_outputs(tmp_path, uri, G.run_ids(), list(G.load_scale("smoke").seeds))
