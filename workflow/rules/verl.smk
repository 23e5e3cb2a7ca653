# The verl backend's rules: every grid run as a verl job, then its real-scale evaluation, and
# the evaluations without training (experiments/grid.yaml). The Snakefile includes them, after
# verl_common.smk, with backend=verl:
#     snakemake --profile profiles/slurm --config scale=paper backend=verl
# collect, tables, figures and report (report.smk) then run as for mini.


rule verl_all:
    input:
        VERL_EVAL_RESULTS,


rule verl_check:
    output:
        f"{R}/verl-check.txt",
    shell:
        "{VERL_CLI} verl-check{VERL_SCALE_ARGS} > {output}"


# Every data file the scale names (training, validation, benchmarks), from the offline layout
# (no declared input: a missing raw folder is the verb's error, naming the download). Every
# verl_train job waits for it, so evaluation finds the staged benchmarks too.
rule verl_stage:
    output:
        [item.out for item in VERL_STAGE],
    localrule: True
    shell:
        "{VERL_CLI} verl-stage{VERL_SCALE_ARGS} --from {VERL_RAW}"


# `done` marks the run's checkpoints/ final (verl_merge_at reads them). checkpoints/ itself
# cannot be an output: Snakemake deletes a job's outputs before it runs again, and a
# restarted training resumes from them.
rule verl_train:
    input:
        config="experiments/runs/{run}.yaml",
        init=verl_init_input,
        data=verl_data_input,
        grid=GRID,
    output:
        done=touch(VERL.done),
        hf=directory(VERL.hf),
    params:
        parent=verl_parent_arg,
    resources:
        gpu=verl_gpus,
        nodes=verl_nodes,
        cpus_per_task=verl_cpus,
        mem_mb=verl_mem_mb,
        runtime=24 * 60,
    shell:
        "{VERL_CLI} verl-launch --run {wildcards.run} --seed {wildcards.seed}{VERL_SCALE_ARGS}"
        " --results {VERL_RESULTS} --experiment {VERL_EXPERIMENT} {params.parent}"


rule verl_eval:
    input:
        hf=VERL.hf,
        done=VERL.done,
    output:
        VERL.eval_results,
    params:
        ev=VERL_SCALE.eval,
        sources=VERL_BENCH_SOURCES,
        out=verl_eval_dir,
        state=verl_state,
        steps=verl_steps,
    resources:
        gpu=VERL_SCALE.eval.gpus,
        cpus_per_task=CPUS_PER_GPU * VERL_SCALE.eval.gpus,
        mem_mb=MEM_MB_PER_GPU * VERL_SCALE.eval.gpus,
        runtime=6 * 60,
    shell:
        "{VERL_CLI} realscale-eval {input.hf} --out {params.out} --engine vllm"
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
        ckpt=verl_checkpoints,
    resources:
        cpus_per_task=8,
        mem_mb=64000,
        runtime=60,
    shell:
        "{sys.executable} -m workbench.backends.verl.launch merge {params.ckpt} {output} {wildcards.step}"


rule verl_eval_extra:
    input:
        grid=GRID,
        model=verl_extra_input,
        # the staged benchmarks (a trained run's evaluation waits for verl_stage through verl_train)
        bench=list(VERL_SCALE.eval.benchmarks.values()),
    output:
        f"{VERL_EXTRA_DIR}/results.json",
    params:
        ev=VERL_SCALE.eval,
        model=verl_extra_model,
        label=verl_extra_label,
        sources=VERL_BENCH_SOURCES,
        out=verl_extra_dir,
    resources:
        gpu=VERL_SCALE.eval.gpus,
        cpus_per_task=CPUS_PER_GPU * VERL_SCALE.eval.gpus,
        mem_mb=MEM_MB_PER_GPU * VERL_SCALE.eval.gpus,
        runtime=6 * 60,
    shell:
        "{VERL_CLI} realscale-eval {params.model} --out {params.out} --engine vllm"
        " --n-samples {params.ev.n_samples} --k {params.ev.k} --temperature {params.ev.temperature}"
        " --top-p {params.ev.top_p} --max-new-tokens {params.ev.max_new_tokens}"
        " --tensor-parallel-size {params.ev.tensor_parallel_size} --label {params.label}"
        " --grid {input.grid} --seed {wildcards.seed}{params.sources}"
