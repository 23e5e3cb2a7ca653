# The ablation workflow: prepare -> train (run x seed) -> eval -> collect -> tables ->
# figures -> report. Rules are thin calls of the `workbench` CLI; the grid itself (runs,
# scales, seeds, dependencies) is read through workbench.grid.
#
#   snakemake --cores 2                                  # the mini grid, 3 seeds
#   snakemake --cores 2 --config scale=smoke seeds=[0]   # the whole grid in minutes
#   snakemake --cores 2 --config runs=[opd,sgopd]        # a subset
#   snakemake -n                                         # list every job
from snakemake.utils import min_version, validate

from workbench import grid as G

min_version("9.0")


configfile: "experiments/workflow.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

SCALE = G.load_scale(config["scale"])
SEEDS = [int(s) for s in config["seeds"]] if config["seeds"] else list(SCALE.seeds)
RUNS = config["runs"] or G.run_ids()
BACKEND = config["backend"] or SCALE.backend
R = f"{config['results']}/{SCALE.name}"
WORLD = f"{R}/world"
GRID = f"{R}/grid.json"
# The committed report is the mini scale's; other scales report under results/.
REPORT = "reports" if SCALE.name == "mini" else f"{R}/report"
EXTRA = G.extra_evals(RUNS)
for run in RUNS:
    G.run_file(run)  # unknown run ids fail here, listing the valid ones

wildcard_constraints:
    run="|".join(G.run_ids()),
    seed=r"\d+",
    extra="|".join(G.EXTRA_EVALS_FILES),


rule all:
    input:
        f"{REPORT}/REPRODUCTION.md",


rule prepare:
    output:
        f"{WORLD}/manifest.json",
    log:
        f"{R}/logs/prepare.log",
    threads: 2
    shell:
        "workbench prepare --scale {SCALE.world} --out {WORLD} --threads {threads} > {log} 2>&1"


rule grid_start:
    output:
        GRID,
    log:
        f"{R}/logs/grid_start.log",
    shell:
        "workbench grid-start --scale {SCALE.name} --out {output} > {log} 2>&1"


rule train:
    input:
        config="experiments/runs/{run}.yaml",
        scale=f"experiments/scales/{SCALE.name}.yaml",
        world=f"{WORLD}/manifest.json",
        grid=GRID,
        init=lambda wc: G.init_inputs(wc.run, f"{R}/runs", wc.seed),
    output:
        f"{R}/runs/{{run}}/seed{{seed}}/eval.json",
    log:
        f"{R}/logs/train/{{run}}-seed{{seed}}.log",
    threads: SCALE.threads
    resources:
        gpu=1 if BACKEND == "verl" else 0,
    params:
        cmd=G.train_command(BACKEND),
        run_dir=lambda wc: f"{R}/runs/{wc.run}/seed{wc.seed}",
    shell:
        "{params.cmd} {input.config} --run-dir {params.run_dir} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} --threads {threads} > {log} 2>&1"


rule eval_extra:
    input:
        world=f"{WORLD}/manifest.json",
        grid=GRID,
        run=lambda wc: G.extra_eval_inputs(wc.extra, f"{R}/runs", wc.seed),
    output:
        f"{R}/evals/{{extra}}/seed{{seed}}.json",
    log:
        f"{R}/logs/eval/{{extra}}-seed{{seed}}.log",
    threads: SCALE.threads
    params:
        args=lambda wc: G.extra_eval_args(wc.extra, f"{R}/runs", wc.seed),
    shell:
        "workbench eval {params.args} --out {output} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} --threads {threads} > {log} 2>&1"


rule collect:
    input:
        runs=expand(f"{R}/runs/{{run}}/seed{{seed}}/eval.json", run=RUNS, seed=SEEDS),
        evals=expand(f"{R}/evals/{{extra}}/seed{{seed}}.json", extra=EXTRA, seed=SEEDS),
        grid=GRID,
    output:
        runs=f"{R}/collect/runs.csv",
        history=f"{R}/collect/history.csv",
    log:
        f"{R}/logs/collect.log",
    shell:
        "workbench collect --grid {input.grid} --out-dir {R}/collect > {log} 2>&1"


rule tables:
    input:
        rules.collect.output,
    output:
        f"{REPORT}/tables/table1.md",
    log:
        f"{R}/logs/tables.log",
    shell:
        "workbench tables --collected {R}/collect --out-dir {REPORT}/tables > {log} 2>&1"


rule figures:
    input:
        rules.collect.output,
    output:
        f"{REPORT}/figures/fig4_avg_accuracy.png",
    log:
        f"{R}/logs/figures.log",
    shell:
        "workbench figures --collected {R}/collect --out-dir {REPORT}/figures > {log} 2>&1"


rule report:
    input:
        tables=rules.tables.output,
        figures=rules.figures.output,
    output:
        f"{REPORT}/REPRODUCTION.md",
    log:
        f"{R}/logs/report.log",
    shell:
        "workbench report --collected {R}/collect --out-dir {REPORT} --scale {SCALE.name} > {log} 2>&1"
