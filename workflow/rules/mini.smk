# The mini backend: the world (prepare), every grid run x seed (train, which also evaluates
# the run), and the evaluations without training (eval_extra, experiments/grid.yaml). Each
# rule is one call of the `workbench` CLI.


rule prepare:
    output:
        f"{WORLD}/manifest.json",
    log:
        f"{R}/logs/prepare.log",
    threads: 2
    shell:
        "{STATUS} {WB} prepare --preset {SCALE.world} --out {WORLD} --threads {threads} 3>&2 > {log} 2>&1"


rule train:
    input:
        config="experiments/runs/{run}.yaml",
        scale=f"experiments/scales/{SCALE.name}.yaml",
        world=f"{WORLD}/manifest.json",
        grid=GRID,
        init=train_init,
    output:
        f"{R}/runs/{{run}}/seed{{seed}}/eval.json",
    log:
        f"{R}/logs/train/{{run}}-seed{{seed}}.log",
    threads: SCALE.threads
    priority: train_priority
    params:
        run_dir=train_run_dir,
        evals=train_evals,
    shell:
        "{STATUS} {WB} train {input.config} --run-dir {params.run_dir} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} {params.evals} --threads {threads} 3>&2 > {log} 2>&1"


rule eval_extra:
    input:
        world=f"{WORLD}/manifest.json",
        grid=GRID,
        run=eval_extra_run,
    output:
        f"{R}/evals/{{extra}}/seed{{seed}}.json",
    log:
        f"{R}/logs/eval/{{extra}}-seed{{seed}}.log",
    threads: SCALE.threads
    params:
        args=eval_extra_args,
    shell:
        "{STATUS} {WB} eval {params.args} --out {output} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} --threads {threads} 3>&2 > {log} 2>&1"
