# The verl backend's Snakemake rules: every grid run as a verl job, then its real-scale
# evaluation. Include from the Snakefile:
#
#     include: "workbench/backends/verl/verl.smk"
#
# It is included when the workflow runs with backend=verl:
#     snakemake --profile profiles/slurm --config scale=paper backend=verl
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

from workbench.backends.verl.overrides import build_job, load_scale, run_paths, run_steps
from workbench.backends.verl.stage import job_inputs
from workbench.backends.verl.stage import plan as stage_plan
from workbench.config import load_config

# Included by the Snakefile with backend=verl: the grid subset, seeds, scale, results root
# and the grid's parent MLflow run come from there.
# Scale fields set from the environment (each as `--scale-set`), e.g. local model copies on a
# cluster without hub access:
#   WORKBENCH_VERL_SCALE_SET="student=/models/Qwen3-1.7B teacher=/models/Qwen3-4B" snakemake ...
VERL_SCALE_SET = shlex.split(os.environ.get("WORKBENCH_VERL_SCALE_SET", ""))
VERL_SCALE = load_scale(SCALE.name, VERL_SCALE_SET)
VERL_SCALE_ARGS = " --scale " + SCALE.name + "".join(" --scale-set " + shlex.quote(s) for s in VERL_SCALE_SET)
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


@functools.cache
def _verl_job(run, seed):
    return build_job(load_config(f"experiments/runs/{run}.yaml"), VERL_SCALE, seed=int(seed),
                     experiment=VERL_EXPERIMENT, results=VERL_RESULTS)


def _paths(wc):
    return run_paths(VERL_RESULTS, VERL_SCALE.name, wc.run, int(wc.seed))


def _verl_data_input(wc):
    """The staged files a run reads (verl_stage makes them)."""
    return [ref for what, ref in job_inputs(_verl_job(wc.run, wc.seed)) if what.endswith("prompts")]


def _verl_init_input(wc):
    """A stage-2 run (train.init_from: RUN) starts from RUN's exported model."""
    ref = load_config(f"experiments/runs/{wc.run}.yaml").train.init_from
    return [run_paths(VERL_RESULTS, VERL_SCALE.name, ref, int(wc.seed)).hf] if ref and ref in VERL_RUNS else []


# Evaluated, not trained (grid.EXTRA_EVALS, as the mini backend's eval_extra): the scale's
# student and teacher, and sgopd's checkpoint at 90% of its steps. sgopd's run config keeps
# that checkpoint (train.keep_checkpoints_at: [0.9]: verl saves at that step and keeps every
# checkpoint); verl_merge_at merges it. Each evaluation is its own child run of the grid
# (realscale-eval --grid), as `workbench eval --grid` logs one.
SGOPD_AT90_STEP = round(0.9 * run_steps(load_config("experiments/runs/sgopd.yaml"), VERL_SCALE))
VERL_EXTRA_DIR = f"{R}/verl-evals/{{extra}}/seed{{seed}}"


def _verl_extra_model(extra, seed):
    if extra == "sgopd-at90":
        return run_paths(VERL_RESULTS, VERL_SCALE.name, "sgopd", int(seed)).hf_at(SGOPD_AT90_STEP)
    return {"student-init": VERL_SCALE.student, "teacher": VERL_SCALE.teacher}[extra]


# collect's inputs (the Snakefile): every run's evaluation and every extra evaluation
VERL_EVAL_RESULTS = [run_paths(VERL_RESULTS, VERL_SCALE.name, run, seed).eval_results for run in VERL_RUNS for seed in SEEDS]
VERL_EXTRA_RESULTS = expand(f"{VERL_EXTRA_DIR}/results.json", extra=EXTRA, seed=SEEDS)


rule verl_all:
    input:
        VERL_EVAL_RESULTS,


rule verl_check:
    output:
        f"{R}/verl-check.txt",
    shell:
        VERL_CLI + " verl-check" + VERL_SCALE_ARGS + " > {output}"


# Every data file the scale names (training, validation, benchmarks), from the offline layout
# (no declared input: a missing raw folder is the verb's error, naming the download). Every
# verl_train job waits for it, so evaluation finds the staged benchmarks too.
rule verl_stage:
    output:
        [item.out for item in VERL_STAGE],
    localrule: True
    shell:
        VERL_CLI + " verl-stage" + VERL_SCALE_ARGS + " --from " + VERL_RAW


rule verl_train:
    input:
        config="experiments/runs/{run}.yaml",
        init=_verl_init_input,
        data=_verl_data_input,
        grid=GRID,
    output:
        done=touch(VERL.done),
        hf=directory(VERL.hf),
    params:
        parent=lambda wc, input: "--parent-run-id " + json.loads(open(input.grid).read())["parent_run_id"],
    resources:
        gpu=lambda wc: _verl_job(wc.run, wc.seed).gpus,
        nodes=lambda wc: _verl_job(wc.run, wc.seed).nodes,
        cpus_per_task=lambda wc: CPUS_PER_GPU * _verl_job(wc.run, wc.seed).gpus,
        mem_mb=lambda wc: MEM_MB_PER_GPU * _verl_job(wc.run, wc.seed).gpus,
        runtime=24 * 60,
    shell:
        VERL_CLI + " verl-launch --run {wildcards.run} --seed {wildcards.seed}" + VERL_SCALE_ARGS
        + " --results " + VERL_RESULTS + " --experiment " + VERL_EXPERIMENT + " {params.parent}"


rule verl_eval:
    input:
        hf=VERL.hf,
        done=VERL.done,
    output:
        VERL.eval_results,
    params:
        ev=VERL_SCALE.eval,
        # the scale's staged benchmarks (none: all four from the hub)
        sources="".join(f" --benchmark {b} --source {b}={shlex.quote(f)}" for b, f in VERL_SCALE.eval.benchmarks.items()),
        out=lambda wc: _paths(wc).eval_dir,
        state=lambda wc: _paths(wc).state,
        steps=lambda wc: _verl_job(wc.run, wc.seed).steps,
    resources:
        gpu=VERL_SCALE.eval.gpus,
        cpus_per_task=CPUS_PER_GPU * VERL_SCALE.eval.gpus,
        mem_mb=MEM_MB_PER_GPU * VERL_SCALE.eval.gpus,
        runtime=6 * 60,
    shell:
        VERL_CLI + " realscale-eval {input.hf} --out {params.out} --engine vllm"
        " --n-samples {params.ev.n_samples} --k {params.ev.k} --temperature {params.ev.temperature}"
        " --top-p {params.ev.top_p} --max-new-tokens {params.ev.max_new_tokens}"
        " --tensor-parallel-size {params.ev.tensor_parallel_size} --label {wildcards.run}"
        " --mlflow-run-file {params.state} --step {params.steps}{params.sources}"


# A kept checkpoint (global_step_N, N = {step}) merged to Hugging Face format, after training.
rule verl_merge_at:
    input:
        done=VERL.done,
    output:
        directory(run_paths(VERL_RESULTS, VERL_SCALE.name, "{run}", "{seed}").hf_at("{step}")),
    wildcard_constraints:
        step=r"\d+",
    params:
        ckpt=lambda wc: _paths(wc).checkpoints,
    resources:
        cpus_per_task=8,
        mem_mb=64000,
        runtime=60,
    shell:
        sys.executable + " -m workbench.backends.verl.launch merge {params.ckpt} {output} {wildcards.step}"


rule verl_eval_extra:
    input:
        grid=GRID,
        model=lambda wc: [_verl_extra_model(wc.extra, wc.seed)] if wc.extra == "sgopd-at90" else [],
        # the staged benchmarks (a trained run's evaluation waits for verl_stage through verl_train)
        bench=list(VERL_SCALE.eval.benchmarks.values()),
    output:
        f"{VERL_EXTRA_DIR}/results.json",
    params:
        ev=VERL_SCALE.eval,
        model=lambda wc: shlex.quote(_verl_extra_model(wc.extra, wc.seed)),
        label=lambda wc: shlex.quote(G.EXTRA_EVALS[wc.extra]),
        sources="".join(f" --benchmark {b} --source {b}={shlex.quote(f)}" for b, f in VERL_SCALE.eval.benchmarks.items()),
        out=lambda wc: VERL_EXTRA_DIR.format(extra=wc.extra, seed=wc.seed),
    resources:
        gpu=VERL_SCALE.eval.gpus,
        cpus_per_task=CPUS_PER_GPU * VERL_SCALE.eval.gpus,
        mem_mb=MEM_MB_PER_GPU * VERL_SCALE.eval.gpus,
        runtime=6 * 60,
    shell:
        VERL_CLI + " realscale-eval {params.model} --out {params.out} --engine vllm"
        " --n-samples {params.ev.n_samples} --k {params.ev.k} --temperature {params.ev.temperature}"
        " --top-p {params.ev.top_p} --max-new-tokens {params.ev.max_new_tokens}"
        " --tensor-parallel-size {params.ev.tensor_parallel_size} --label {params.label}"
        " --grid {input.grid} --seed {wildcards.seed}{params.sources}"
