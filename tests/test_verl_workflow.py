"""The verl workflow as Snakemake plans it (dry run, CPU): paths and SLURM resources.

One real ``snakemake -n`` of the whole verl grid at paper scale, through the SLURM profile
(plus the workflow profile ``profiles/default`` that Snakemake adds by itself), records
every job the scheduler would submit: rule, inputs, outputs, shell command, resources.
Then:

- every path a verl rule reads is the path the command before it writes, as that command
  computes it (``verl-launch --dry-run`` of the rule's own command line, and the MLflow run
  file ``ensure_mlflow_run`` writes), not as a second template;
- every job passes snakemake-executor-plugin-slurm's own validation and sbatch assembly
  (the functions its ``run_job`` calls), asking for the GPUs the verl job takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import snakemake_executor_plugin_slurm  # noqa: F401  (the dev extra: its checks are the test)

from workbench.backends.verl.overrides import build_job, load_scale, run_paths
from workbench.config import load_config
from workbench.grid import EXTRA_EVALS

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "experiments" / "runs"


# Runs in a subprocess: Snakemake's CLI, with the dry-run executor's run_job wrapped to
# record each job and put it through the SLURM plugin's checks (no SLURM needed).
DUMP = r"""
import json, sys
import snakemake.executors.dryrun as dryrun
from snakemake_executor_plugin_slurm.partitions import get_job_cpu_requirement, parse_gpu_requirements
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

out, argv = sys.argv[1], sys.argv[2:]
jobs = []
run_job = dryrun.Executor.run_job


def record(self, job):
    res = {k: v for k, v in job.resources.items() if not k.startswith("_") and isinstance(v, (int, float, str))}
    rec = {"rule": job.rule.name, "wildcards": dict(job.wildcards.items()), "input": [str(f) for f in job.input],
           "output": [str(f) for f in job.output], "shell": job.shellcmd, "resources": res}
    try:
        validate_slurm_extra(job)
        rec["gpu"] = list(parse_gpu_requirements(job))
        rec["cpus"] = list(get_job_cpu_requirement(job))
        params = {"run_uuid": "uuid", "slurm_logfile": "slurm.log", "comment_str": "rule", "workdir": None,
                  "account": "-A " + str(job.resources.get("slurm_account")),
                  "partition": "-p " + str(job.resources.get("slurm_partition"))}
        rec["sbatch"] = get_submit_command(job, params) + set_gres_string(job)
    except Exception as e:
        rec["slurm_error"] = f"{type(e).__name__}: {e}"
    jobs.append(rec)
    return run_job(self, job)


dryrun.Executor.run_job = record
from snakemake.cli import main

try:
    main(argv)
finally:
    with open(out, "w") as f:
        json.dump(jobs, f)
"""


def dry_run(out: Path, *args: str) -> list[dict]:
    snakemake_args = ["-n", "--nolock", "--profile", "profiles/slurm", *args]
    r = subprocess.run(
        [sys.executable, "-c", DUMP, str(out), *snakemake_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """Every job of the verl grid at paper scale (every run, the scale's seed 0)."""
    root = tmp_path_factory.mktemp("verl-results")
    jobs = dry_run(root / "jobs.json", "--config", "scale=paper", "backend=verl", f"results={root}")
    return root, jobs


def by_rule(jobs, rule):
    return {(j["wildcards"]["run"], int(j["wildcards"]["seed"])): j for j in jobs if j["rule"] == rule}


def verb_parser():
    from workbench.backends.verl.cli import add_verbs

    parser = argparse.ArgumentParser(prog="workbench")
    add_verbs(parser.add_subparsers(dest="verb", required=True))
    return parser


def verb_argv(shell: str, verb: str) -> list[str]:
    """The verb's arguments in a rule's shell command (the parent MLflow run is <TBD> in a dry run)."""
    argv = [a for a in shlex.split(shell) if a != "<TBD>"]
    return argv[argv.index(verb) :]


def launch_plan(argv: list[str], capsys) -> dict[str, list[str]]:
    """``verl-launch ... --dry-run``: the commands the rule's own command line runs, by step."""
    args = verb_parser().parse_args([*argv, "--dry-run"])
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    steps, name = {}, None
    for line in text.splitlines():
        if line.startswith("# "):
            name = line[2:]
        elif name:
            steps[name] = shlex.split(line)
    return steps


def override(argv: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+") == key)


def eval_args(shell: str) -> argparse.Namespace:
    return verb_parser().parse_args(verb_argv(shell, "realscale-eval"))


def one(jobs, rule):
    (job,) = [j for j in jobs if j["rule"] == rule]
    return job


def test_every_grid_run_is_trained_and_evaluated_then_reported(paper):
    root, jobs = paper
    train, ev = by_rule(jobs, "verl_train"), by_rule(jobs, "verl_eval")
    extra = {(j["wildcards"]["extra"], int(j["wildcards"]["seed"])): j for j in jobs if j["rule"] == "verl_eval_extra"}
    runs = {p.stem for p in RUNS.glob("*.yaml")}
    assert {r for r, _ in train} == {r for r, _ in ev} == runs
    assert set(extra) == {(e, 0) for e in EXTRA_EVALS}  # every extra of docs/algorithm.md section 8, sgopd@90% included
    # collect reads every evaluation (trained runs and extras) and the grid; then tables, figures, report
    collect, grid = one(jobs, "collect"), one(jobs, "grid_start")["output"][0]
    assert sorted(collect["input"]) == sorted([*(j["output"][0] for j in [*ev.values(), *extra.values()]), grid])
    assert f"--grid {grid} --out-dir {root}/paper/collect" in collect["shell"]
    for rule in ("tables", "figures"):
        assert sorted(one(jobs, rule)["input"]) == sorted(collect["output"])
    report = one(jobs, "report")
    assert sorted(report["input"]) == sorted(one(jobs, "tables")["output"] + one(jobs, "figures")["output"])
    assert "--command 'snakemake --profile profiles/slurm --config scale=paper backend=verl'" in report["shell"]
    assert one(jobs, "all")["input"] == [f"{root}/paper/report/REPRODUCTION.md"]  # Table 1 is in it


def test_extra_evaluations_read_the_models_they_name(paper, capsys, monkeypatch):
    """student-init and teacher are the scale's models; sgopd@90% is sgopd's kept checkpoint
    at 90% of its steps, merged after training from the folder verl saved it in."""
    monkeypatch.chdir(REPO)
    _, jobs = paper
    scale = load_scale("paper")
    grid = one(jobs, "grid_start")["output"][0]
    extra = {j["wildcards"]["extra"]: j for j in jobs if j["rule"] == "verl_eval_extra"}
    for name, j in extra.items():
        args = eval_args(j["shell"])
        assert (args.label, args.grid, args.seed) == (EXTRA_EVALS[name], grid, 0)
        assert not args.mlflow_run_file and not args.mlflow_run_id  # a child run of its own
        assert j["output"] == [str(Path(args.out) / "results.json")]
        assert set(scale.eval.benchmarks.values()) <= set(j["input"])  # waits for verl_stage
    assert eval_args(extra["student-init"]["shell"]).model == scale.student
    assert eval_args(extra["teacher"]["shell"]).model == scale.teacher
    merge = one(jobs, "verl_merge_at")
    at90 = eval_args(extra["sgopd-at90"]["shell"])
    assert merge["output"] == [at90.model] and at90.model in extra["sgopd-at90"]["input"]
    t = by_rule(jobs, "verl_train")[("sgopd", 0)]
    assert merge["input"] == [t["output"][0]]  # after sgopd's training
    steps = launch_plan(verb_argv(t["shell"], "verl-launch") + ["--mlflow-run-id", "x"], capsys)["train"]
    step = int(merge["wildcards"]["step"])
    total, save_freq = int(override(steps, "trainer.total_training_steps")), int(override(steps, "trainer.save_freq"))
    assert 0.9 in load_config(RUNS / "sgopd.yaml").train.keep_checkpoints_at
    assert step == round(0.9 * total) and step % save_freq == 0  # verl saves that step ...
    assert override(steps, "trainer.max_actor_ckpt_to_keep") == "null"  # ... and keeps it
    argv = shlex.split(merge["shell"])
    assert argv[1:4] == ["-m", "workbench.backends.verl.launch", "merge"]
    assert argv[4:] == [override(steps, "trainer.default_local_dir"), at90.model, str(step)]


def test_the_workflows_commands_log_runs_that_make_table1(paper, tmp_path, monkeypatch):
    """The MLflow runs as the rules' own commands make them (grid-start, verl-launch's
    ensure_mlflow_run, realscale-eval into the run and realscale-eval --grid for the extras),
    with a fixed-answer engine in place of vLLM: `workbench collect` and `workbench tables`
    give Table 1's rows from them, and the extras as eval runs of the grid."""
    pytest.importorskip("math_verify")  # the verl extra
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from workbench.backends.verl import launch, realscale
    from workbench.cli import main

    root, jobs = paper
    monkeypatch.chdir(tmp_path)  # the rules' relative paths (staged benchmarks) resolve here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    scale = load_scale("paper")
    answers = {f"problem of {b}": str(7 + i) for i, b in enumerate(scale.eval.benchmarks)}
    for (b, f), (problem, answer) in zip(scale.eval.benchmarks.items(), answers.items()):
        realscale.write_parquet([{"id": f"{b}-0", "problem": problem, "answer": answer}], f)
    n = scale.eval.n_samples
    correct: dict[str, int] = {}  # model -> correct samples per problem

    class FixedEngine:
        def __init__(self, model):
            self.c = correct[model]

        def generate(self, prompts, n, **_):
            gold = [next(a for p, a in answers.items() if p in prompt) for prompt in prompts]
            return [[f"\\boxed{{{g}}}"] * self.c + ["\\boxed{-1}"] * (n - self.c) for g in gold]

    monkeypatch.setattr(realscale, "make_engine", lambda kind, model, **kw: FixedEngine(model))

    def shell_argv(job, verb):
        argv = verb_argv(job["shell"], verb)
        return argv[: argv.index(">")] if ">" in argv else argv

    assert main(shell_argv(one(jobs, "grid_start"), "grid-start")) == 0
    grid = json.loads(Path(one(jobs, "grid_start")["output"][0]).read_text())
    train, ev = by_rule(jobs, "verl_train"), by_rule(jobs, "verl_eval")
    table1_runs = ["sft", "seqkd", "gkd", "opd", "exopd-1.25", "sgopd"]
    want = {}
    for i, (run, seed) in enumerate([(r, 0) for r in table1_runs] + [("sgopd", 1)]):
        argv = verb_argv(train[(run, 0)]["shell"], "verl-launch")
        argv[argv.index("--seed") + 1] = str(seed)  # the scale has seed 0 only; a second seed as the rule writes it
        args = verb_parser().parse_args(argv)
        cfg = load_config(RUNS / f"{run}.yaml")
        job = build_job(cfg, load_scale(args.scale), seed=args.seed, experiment=args.experiment, results=args.results)
        run_id, uri = launch.ensure_mlflow_run(
            job, cfg, experiment=args.experiment, parent_run_id=grid["parent_run_id"], tracking_uri=None
        )
        steps = job.steps
        MlflowClient(uri).log_metric(run_id, "training/global_step", steps, step=steps)  # what verl logs
        launch.end_mlflow_run({"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri}, "FINISHED")
        eargv = verb_argv(ev[(run, 0)]["shell"], "realscale-eval")
        paths = run_paths(args.results, "paper", run, seed)
        eargv[1], eargv[eargv.index("--out") + 1] = paths.hf, paths.eval_dir
        eargv[eargv.index("--mlflow-run-file") + 1] = paths.state
        correct[paths.hf] = 4 * (i + 1)
        want[run] = [*want.get(run, []), 100 * correct[paths.hf] / n]
        assert main([*eargv, "--limit", "1", "--grade-workers", "1"]) == 0
    extras = {j["wildcards"]["extra"]: j for j in jobs if j["rule"] == "verl_eval_extra"}
    for i, (name, j) in enumerate(sorted(extras.items())):
        eargv = verb_argv(j["shell"], "realscale-eval")
        correct[eargv[1]] = 2 + i
        assert main([*eargv, "--limit", "1", "--grade-workers", "1"]) == 0

    assert main(shell_argv(one(jobs, "collect"), "collect")) == 0
    collected = f"{root}/paper/collect"
    runs = pd.read_parquet(f"{collected}/runs.parquet")
    assert set(zip(runs["run"], runs["seed"])) == {
        *((r, 0) for r in table1_runs),
        ("sgopd", 1),
        ("student-init", 0),
        ("teacher", 0),
        ("sgopd@90%", 0),
    }
    assert set(runs["backend"]) == {"verl"}
    extra_rows = runs[runs["kind"] == "eval"]
    assert sorted(extra_rows["run"]) == sorted(EXTRA_EVALS.values()) and set(extra_rows["group"]) == {"extra"}
    trained = runs[runs["kind"] == "train"].set_index(["run", "seed"])
    assert trained.loc[("sgopd", 0), "method"] == "sgopd" and trained.loc[("sgopd", 0), "group"] == "d"
    assert main(["tables", "--collected", collected, "--out-dir", str(tmp_path / "tables")]) == 0
    t1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    avg = t1[(t1["block"] == "avg@k (%)") & (t1["column"] == "AVG")].set_index("run")
    for run, values in want.items():
        assert avg.loc[run, "n"] == len(values)
        assert avg.loc[run, "mean"] == pytest.approx(sum(values) / len(values))


def test_each_path_a_verl_rule_reads_is_the_path_its_producer_writes(paper, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    root, jobs = paper
    train, ev = by_rule(jobs, "verl_train"), by_rule(jobs, "verl_eval")
    outputs = {o: j for j in jobs for o in j["output"]}
    for (run, seed), t in train.items():
        argv = verb_argv(t["shell"], "verl-launch")
        assert argv[argv.index("--results") + 1] == str(root)  # the rule hands its results root to the verb
        steps = launch_plan(argv + ["--mlflow-run-id", "x"], capsys)
        ckpt = override(steps["train"], "trainer.default_local_dir")
        merge_src, merge_dst = steps["merge"][-2:]
        assert merge_src == ckpt  # the HF export reads the checkpoints verl writes
        done, hf = t["output"]
        assert merge_dst == hf  # the rule's declared output is what the export writes
        assert Path(hf).is_relative_to(root) and Path(ckpt).is_relative_to(root)
        e = ev[(run, seed)]
        args = eval_args(e["shell"])
        assert args.model == hf and sorted(e["input"]) == sorted([hf, done])  # evaluation reads the export
        assert e["output"] == [str(Path(args.out) / "results.json")]  # realscale.evaluate's results file
        assert args.step == int(override(steps["train"], "trainer.total_training_steps"))
        # the MLflow run file: where verl-launch's job puts it (checked for real below)
        cfg = load_config(RUNS / f"{run}.yaml")
        job = build_job(cfg, load_scale("paper"), seed=seed, results=argv[argv.index("--results") + 1])
        assert args.mlflow_run_file == job.paths.state
        if "teacher-data" in steps:  # SFT family: the trainer reads the teacher data the step before writes
            assert override(steps["train"], "data.train_files") == json.loads(steps["teacher-data"][-1])["out"]
        # a stage-2 run starts from its stage 1's export, and waits for it
        init = override(steps["train"], "model.path" if "teacher-data" in steps else "actor_rollout_ref.model.path")
        if cfg.train.init_from:
            assert init in t["input"] and outputs[init]["rule"] == "verl_train"
            assert outputs[init]["wildcards"] == {"run": cfg.train.init_from, "seed": str(seed)}
        else:
            assert init == load_scale("paper").student


def test_the_mlflow_run_file_is_written_where_evaluation_reads_it(paper, monkeypatch, tmp_path):
    from workbench.backends.verl import launch

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder lands here, not in the checkout
    _, jobs = paper
    e = by_rule(jobs, "verl_eval")[("sgopd", 0)]
    t = by_rule(jobs, "verl_train")[("sgopd", 0)]
    args = verb_parser().parse_args(verb_argv(t["shell"], "verl-launch"))
    cfg = load_config(RUNS / "sgopd.yaml")
    job = build_job(cfg, load_scale(args.scale), seed=args.seed, experiment=args.experiment, results=args.results)
    run_id, _ = launch.ensure_mlflow_run(
        job, cfg, experiment=args.experiment, parent_run_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    written = Path(eval_args(e["shell"]).mlflow_run_file)
    assert json.loads(written.read_text())["run_id"] == run_id


def test_every_job_passes_the_slurm_plugins_validation(paper):
    _, jobs = paper
    scale = load_scale("paper")
    bad = [f"{j['rule']} {j['wildcards']}: {j['slurm_error']}" for j in jobs if "slurm_error" in j]
    assert not bad, "\n".join(bad)
    for (run, seed), t in by_rule(jobs, "verl_train").items():
        want = build_job(load_config(RUNS / f"{run}.yaml"), scale, seed=seed)
        assert t["gpu"] == [want.gpus, None]  # not capped by a global `gpu` resource of a profile
        assert f"--gpus={want.gpus}" in t["sbatch"] and f"--nodes={want.nodes}" in t["sbatch"]
        assert "-p gpu" in t["sbatch"] and f"--cpus-per-task={t['cpus'][0]}" in t["sbatch"]
        assert f"--mem {t['resources']['mem_mb']}" in t["sbatch"]
    for e in by_rule(jobs, "verl_eval").values():
        assert e["gpu"] == [scale.eval.gpus, None] and f"--gpus={scale.eval.gpus}" in e["sbatch"]
    gpus = {by_rule(jobs, "verl_train")[(r, 0)]["gpu"][0] for r in ("sgopd", "grpo", "sft")}
    assert gpus == {scale.trainer_gpus + scale.teacher_gpus, scale.trainer_gpus}  # distillation adds the teacher pool


def test_the_slurm_plugin_refuses_gpus_in_slurm_extra():
    """The check above is the plugin's real one: the old rules' slurm_extra fails it."""
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_interface_common.exceptions import WorkflowError

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        resources = Resources(slurm_extra="'--gpus=8'", gpu=8)

    with pytest.raises(WorkflowError, match="GPU"):
        validate_slurm_extra(Job())


def test_gpu_smoke_scale_layout():
    """The one-GPU development scale: 1 GPU without a teacher, 2 with one (verl's own teacher pool)."""
    scale = load_scale("gpu-smoke")
    assert (scale.trainer_gpus, scale.teacher_gpus) == (1, 1)
    paths = run_paths("results", "gpu-smoke", "sgopd", 0)
    assert paths.run_dir == "results/gpu-smoke/verl-runs/sgopd/seed0"
    assert scale.student == "results/gpu-smoke/models/student" and scale.teacher == "results/gpu-smoke/models/teacher"
    assert all(p.startswith("results/gpu-smoke/data/") for p in [*scale.data.sources.values(), *scale.data.val_files])


def test_evaluation_reads_the_run_file_before_it_evaluates(tmp_path):
    """A missing verl_run.json stops realscale-eval at once, not after hours of sampling."""
    from workbench.errors import UserError

    args = verb_parser().parse_args(
        [
            "realscale-eval",
            str(tmp_path / "no-model"),
            "--engine",
            "transformers",
            "--out",
            str(tmp_path / "eval"),
            "--mlflow-run-file",
            str(tmp_path / "verl_run.json"),
        ]
    )
    with pytest.raises(UserError, match="--mlflow-run-file .*verl_run.json: no such file"):
        args.handler(args)
    assert not (tmp_path / "eval").exists()


def test_an_extra_evaluation_is_checked_before_it_evaluates(tmp_path, monkeypatch):
    """realscale-eval --grid: a label is needed, and a SQLite store is refused inside a SLURM job."""
    from workbench.errors import UserError

    base = [
        "realscale-eval",
        str(tmp_path / "no-model"),
        "--engine",
        "transformers",
        "--out",
        str(tmp_path / "eval"),
        "--grid",
        str(tmp_path / "grid.json"),
    ]
    with pytest.raises(UserError, match="--grid needs --label"):
        args = verb_parser().parse_args(base)
        args.handler(args)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    args = verb_parser().parse_args([*base, "--label", "teacher", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    with pytest.raises(UserError, match="sqlite store, and this is SLURM job 42"):
        args.handler(args)
    assert not (tmp_path / "eval").exists()


def test_a_kept_checkpoint_is_found_by_its_step(tmp_path):
    from workbench.backends.verl.launch import latest_actor_checkpoint, step_actor_checkpoint

    for n in (20, 180, 200):
        (tmp_path / f"global_step_{n}" / "actor").mkdir(parents=True)
    assert step_actor_checkpoint(tmp_path, 180) == tmp_path / "global_step_180" / "actor"
    assert latest_actor_checkpoint(tmp_path) == tmp_path / "global_step_200" / "actor"
    with pytest.raises(FileNotFoundError, match="have: global_step_180, global_step_20, global_step_200"):
        step_actor_checkpoint(tmp_path, 190)
