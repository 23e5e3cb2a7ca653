# What the verl backend's rules (verl.smk) share: its scale, its paths and the rules' input,
# parameter and resource functions. Kept apart from common.smk because only backend=verl
# includes it: a mini workflow never reads the verl scale or imports the verl backend.
#
# Every file of a run comes from overrides.run_paths(results, scale, run, seed): these rules
# and `workbench verl-launch --results` (which writes checkpoints, hf/ and verl_run.json)
# both call it, so what a rule reads is what the command before it wrote.
#
# Each job declares its GPUs as the `gpu` resource (training: the student pool plus, for
# distillation, the teacher's own pool, from the scale), which snakemake-executor-plugin-slurm
# turns into --gpus=N; CPUs and memory scale with the GPUs (cpus_per_task, mem_mb).
import functools
import json
import os
import shlex
import sys

from workbench.backends.verl.overrides import build_job, load_scale, run_paths, run_steps
from workbench.backends.verl.stage import job_inputs
from workbench.backends.verl.stage import plan as stage_plan
from workbench.config import load_config

# The grid subset, seeds, scale, results root and the grid's parent MLflow run come from
# common.smk and report.smk.
# Scale fields set from the environment (each as `--scale-set`), e.g. local model copies on a
# cluster without hub access:
#   WORKBENCH_VERL_SCALE_SET="student=/models/Qwen3-1.7B teacher=/models/Qwen3-4B" snakemake ...
VERL_SCALE_SET = shlex.split(os.environ.get("WORKBENCH_VERL_SCALE_SET", ""))
VERL_SCALE = load_scale(SCALE.name, VERL_SCALE_SET)
VERL_SCALE_ARGS = "".join([f" --scale {SCALE.name}", *(f" --scale-set {shlex.quote(s)}" for s in VERL_SCALE_SET)])
# The offline layout verl_stage reads (docs/verl.md): one folder per data set.
VERL_RAW = os.environ.get("WORKBENCH_VERL_RAW", "data/raw")
VERL_STAGE = stage_plan(VERL_SCALE, VERL_RAW)
VERL_RESULTS = config["results"]
VERL_EXPERIMENT = f"sgopd-{SCALE.name}"
VERL_RUNS = RUNS
VERL_CLI = f"{sys.executable} -m workbench"
# The rules' file patterns ({run}, {seed} wildcards).
VERL = run_paths(VERL_RESULTS, VERL_SCALE.name, "{run}", "{seed}")
# Per GPU of a job (one 8-GPU node: 64 CPUs, 480 GB); a profile's set-resources overrides them.
CPUS_PER_GPU = 8
MEM_MB_PER_GPU = 60000
# The scale's staged benchmarks as realscale-eval options (none: all four from the hub).
VERL_BENCH_SOURCES = "".join(f" --benchmark {b} --source {b}={shlex.quote(f)}" for b, f in VERL_SCALE.eval.benchmarks.items())


@functools.cache
def _verl_job(run, seed):
    return build_job(load_config(f"experiments/runs/{run}.yaml"), VERL_SCALE, seed=int(seed),
                     experiment=VERL_EXPERIMENT, results=VERL_RESULTS)


def _paths(wildcards):
    return run_paths(VERL_RESULTS, VERL_SCALE.name, wildcards.run, int(wildcards.seed))


# -- verl_train ---------------------------------------------------------------------------
def verl_data_input(wildcards):
    """The staged files a run reads (verl_stage makes them)."""
    return [ref for what, ref in job_inputs(_verl_job(wildcards.run, wildcards.seed)) if what.endswith("prompts")]


def verl_init_input(wildcards):
    """A stage-2 run (train.init_from: RUN) starts from RUN's exported model."""
    ref = load_config(f"experiments/runs/{wildcards.run}.yaml").train.init_from
    return [run_paths(VERL_RESULTS, VERL_SCALE.name, ref, int(wildcards.seed)).hf] if ref and ref in VERL_RUNS else []


def verl_parent_arg(wildcards, input):
    """The grid's parent MLflow run, which grid_start wrote to the grid file."""
    return "--parent-run-id " + json.loads(open(input.grid).read())["parent_run_id"]


def verl_gpus(wildcards):
    return _verl_job(wildcards.run, wildcards.seed).gpus


def verl_nodes(wildcards):
    return _verl_job(wildcards.run, wildcards.seed).nodes


def verl_cpus(wildcards):
    return CPUS_PER_GPU * verl_gpus(wildcards)


def verl_mem_mb(wildcards):
    return MEM_MB_PER_GPU * verl_gpus(wildcards)


# -- verl_eval, verl_merge_at -------------------------------------------------------------
def verl_eval_dir(wildcards):
    return _paths(wildcards).eval_dir


def verl_state(wildcards):
    return _paths(wildcards).state


def verl_steps(wildcards):
    return _verl_job(wildcards.run, wildcards.seed).steps


def verl_checkpoints(wildcards):
    return _paths(wildcards).checkpoints


# -- verl_eval_extra ----------------------------------------------------------------------
# Evaluated, not trained (experiments/grid.yaml, as the mini backend's eval_extra): the
# scale's student and teacher, and a run's checkpoint at a fraction of its steps (sgopd at
# 90%). The run's config keeps that checkpoint (train.keep_checkpoints_at: verl saves at that
# step and keeps every checkpoint); verl_merge_at merges it. Each evaluation is its own child
# run of the grid (realscale-eval --grid), as `workbench eval --grid` logs one.
VERL_EXTRA_DIR = f"{R}/verl-evals/{{extra}}/seed{{seed}}"


@functools.cache
def _verl_extra_model(extra, seed):
    x = G.FACTS.extra_evals[extra]
    if x.run:
        step = round(x.at_frac * run_steps(load_config(f"experiments/runs/{x.run}.yaml"), VERL_SCALE))
        return run_paths(VERL_RESULTS, VERL_SCALE.name, x.run, int(seed)).hf_at(step)
    return {"student-init": VERL_SCALE.student, "teacher": VERL_SCALE.teacher}[x.model]


def verl_extra_input(wildcards):
    """A checkpoint's evaluation waits for its merge (a prepared model is the scale's to fetch)."""
    return [_verl_extra_model(wildcards.extra, wildcards.seed)] if G.FACTS.extra_evals[wildcards.extra].run else []


def verl_extra_model(wildcards):
    return shlex.quote(_verl_extra_model(wildcards.extra, wildcards.seed))


def verl_extra_label(wildcards):
    return shlex.quote(G.EXTRA_EVALS[wildcards.extra])


def verl_extra_dir(wildcards):
    return VERL_EXTRA_DIR.format(extra=wildcards.extra, seed=wildcards.seed)


# collect's inputs (common.smk): every run's evaluation and every extra evaluation
VERL_EVAL_RESULTS = [run_paths(VERL_RESULTS, VERL_SCALE.name, run, seed).eval_results for run in VERL_RUNS for seed in SEEDS]
VERL_EXTRA_RESULTS = expand(f"{VERL_EXTRA_DIR}/results.json", extra=EXTRA, seed=SEEDS)
