# The verl backend's Snakemake rules: every grid run as a verl job, then its real-scale
# evaluation. Include from the Snakefile:
#
#     include: "workbench/backends/verl/verl.smk"
#
# It is included when the workflow runs with backend=verl:
#     snakemake --profile profiles/slurm --config scale=paper backend=verl
# Each training job declares the GPUs its verl job takes (student pool + teacher pool, from
# the scale) as `gpu` and `slurm_extra`, so a SLURM profile requests exactly that.
import json

from workbench.backends.verl.overrides import build_job, load_scale
from workbench.config import load_config

# Included by the Snakefile with backend=verl: the grid subset, seeds, scale and the grid's
# parent MLflow run come from there.
VERL_SCALE = SCALE.name
VERL_SEEDS = SEEDS
VERL_EXPERIMENT = f"sgopd-{SCALE.name}"
VERL_RUNS = RUNS
VERL_ROOT = f"{R}/verl-runs"
VERL_CLI = f"{sys.executable} -m workbench"


def _verl_job(run, seed=0):
    return build_job(load_config(f"experiments/runs/{run}.yaml"), load_scale(VERL_SCALE), seed=int(seed),
                     experiment=VERL_EXPERIMENT)


def _verl_init_input(wc):
    """A stage-2 run (train.init_from: RUN) waits for RUN's exported model."""
    ref = load_config(f"experiments/runs/{wc.run}.yaml").train.init_from
    return [f"{VERL_ROOT}/{ref}/seed{wc.seed}/done"] if ref and ref in VERL_RUNS else []


rule verl_all:
    input:
        expand(VERL_ROOT + "/{run}/seed{seed}/eval/results.json", run=VERL_RUNS, seed=VERL_SEEDS),


rule verl_check:
    output:
        "results/verl/verl-check.txt",
    shell:
        VERL_CLI + " verl-check --scale " + VERL_SCALE + " > {output}"


rule verl_train:
    input:
        config="experiments/runs/{run}.yaml",
        init=_verl_init_input,
        grid=GRID,
    output:
        touch(VERL_ROOT + "/{run}/seed{seed}/done"),
    params:
        parent=lambda wc, input: "--parent-run-id " + json.loads(open(input.grid).read())["parent_run_id"],
    resources:
        gpu=lambda wc: _verl_job(wc.run, wc.seed).gpus,
        nodes=lambda wc: _verl_job(wc.run, wc.seed).nodes,
        slurm_extra=lambda wc: f"'--gpus={_verl_job(wc.run, wc.seed).gpus}'",
        runtime=24 * 60,
    shell:
        VERL_CLI + " verl-launch --run {wildcards.run} --seed {wildcards.seed} --scale " + VERL_SCALE
        + " --experiment " + VERL_EXPERIMENT + " {params.parent}"


rule verl_eval:
    input:
        VERL_ROOT + "/{run}/seed{seed}/done",
    output:
        VERL_ROOT + "/{run}/seed{seed}/eval/results.json",
    params:
        ev=lambda wc: load_scale(VERL_SCALE).eval,
        steps=lambda wc: load_scale(VERL_SCALE).train.steps,
    resources:
        gpu=lambda wc: load_scale(VERL_SCALE).eval.gpus,
        slurm_extra=lambda wc: f"'--gpus={load_scale(VERL_SCALE).eval.gpus}'",
        runtime=6 * 60,
    shell:
        VERL_CLI + " realscale-eval " + VERL_ROOT + "/{wildcards.run}/seed{wildcards.seed}/hf"
        " --out " + VERL_ROOT + "/{wildcards.run}/seed{wildcards.seed}/eval --engine vllm"
        " --n-samples {params.ev.n_samples} --k {params.ev.k} --temperature {params.ev.temperature}"
        " --top-p {params.ev.top_p} --max-new-tokens {params.ev.max_new_tokens}"
        " --tensor-parallel-size {params.ev.tensor_parallel_size} --label {wildcards.run}"
        " --mlflow-run-file " + VERL_ROOT + "/{wildcards.run}/seed{wildcards.seed}/verl_run.json --step {params.steps}"
