# The ablation workflow: prepare -> train (run x seed) -> eval -> collect -> tables ->
# figures -> report. Rules are thin calls of the `workbench` CLI; the grid itself (runs,
# scales, seeds, dependencies) is read through workbench.grid.
#
#   snakemake --cores 2                                  # the mini grid, 3 seeds
#   snakemake --cores 2 --config scale=smoke seeds=[0]   # the whole grid in minutes
#   snakemake --cores 2 --config runs=[opd,sgopd]        # a subset
#   snakemake -n                                         # list every job
import sys

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
REPORT = f"{R}/report"
# The mini scale's report is also copied to the committed reports/. Every target stays under
# results/: a fresh clone has reports/ but no results, and with reports/ as the target
# Snakemake would find it up to date and train nothing.
PUBLISH = "reports" if SCALE.name == "mini" else None
# reports/REPRODUCTION.md stands for the complete default grid: every run, the scale's seeds,
# its backend. A subset (`--config seeds=[0]`) keeps its report in results/ and publishes nothing.
FULL_GRID = set(RUNS) == set(G.run_ids()) and set(SEEDS) == set(SCALE.seeds) and BACKEND == SCALE.backend
EXTRA = G.extra_evals(RUNS)
# The CLI of the Python running this workflow, whatever is on PATH.
WB = f"{sys.executable} -m workbench"
# Long jobs (prepare, train, eval) also write a status line per stage ("train opd seed0:
# resuming from step 120/200") to descriptor 3, which their rule points at Snakemake's own
# stderr before sending the rest to the log: the terminal shows progress, the logs keep all.
STATUS = "WORKBENCH_STATUS_FD=3"
for run in RUNS:
    G.run_file(run)  # unknown run ids fail here, listing the valid ones

wildcard_constraints:
    run="|".join(G.run_ids()),
    seed=r"\d+",
    extra="|".join(G.EXTRA_EVALS_FILES),


def report_files():
    # the case study reads the mini trainer's casestudy.json (verl writes none)
    return [f"{REPORT}/REPRODUCTION.md"] + ([f"{REPORT}/casestudy_sgopd.html"] if "sgopd" in RUNS and BACKEND == "mini" else [])


def provenance():
    """The snakemake command line that makes this report, as the report prints it."""
    parts = [f"scale={SCALE.name}"]
    if config["seeds"]:
        parts.append(f"seeds=[{','.join(map(str, SEEDS))}]")
    if config["runs"]:
        parts.append(f"runs=[{','.join(RUNS)}]")
    if config["backend"]:
        parts.append(f"backend={BACKEND}")
    head = "snakemake --profile profiles/slurm" if BACKEND == "verl" else "snakemake --cores 2"
    return head + " --config " + " ".join(parts)


rule all:
    input:
        ([f"{R}/published/grid.done"] if PUBLISH and FULL_GRID else report_files()) if BACKEND == "mini" else report_files(),


# backend=verl: every grid run as a verl job on a GPU cluster, then its real-scale evaluation
# (and the extra evaluations); collect, tables, figures and report below as for mini.
if BACKEND == "verl":

    include: "workbench/backends/verl/verl.smk"


rule prepare:
    output:
        f"{WORLD}/manifest.json",
    log:
        f"{R}/logs/prepare.log",
    threads: 2
    shell:
        "{STATUS} {WB} prepare --scale {SCALE.world} --out {WORLD} --threads {threads} 3>&2 > {log} 2>&1"


rule grid_start:
    output:
        GRID,
    log:
        f"{R}/logs/grid_start.log",
    shell:
        "{WB} grid-start --scale {SCALE.name} --out {output} > {log} 2>&1"


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
    params:
        run_dir=lambda wc: f"{R}/runs/{wc.run}/seed{wc.seed}",
    shell:
        "{STATUS} {WB} train {input.config} --run-dir {params.run_dir} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} --threads {threads} 3>&2 > {log} 2>&1"


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
        "{STATUS} {WB} eval {params.args} --out {output} --world {WORLD} --scale {SCALE.name} "
        "--seed {wildcards.seed} --grid {input.grid} --threads {threads} 3>&2 > {log} 2>&1"


rule collect:
    input:
        runs=expand(f"{R}/runs/{{run}}/seed{{seed}}/eval.json", run=RUNS, seed=SEEDS) if BACKEND == "mini" else VERL_EVAL_RESULTS,
        evals=expand(f"{R}/evals/{{extra}}/seed{{seed}}.json", extra=EXTRA, seed=SEEDS) if BACKEND == "mini" else VERL_EXTRA_RESULTS,
        grid=GRID,
    output:
        runs=f"{R}/collect/runs.parquet",
        history=f"{R}/collect/history.parquet",
    log:
        f"{R}/logs/collect.log",
    shell:
        "{WB} collect --grid {input.grid} --out-dir {R}/collect > {log} 2>&1"


rule tables:
    input:
        rules.collect.output,
    output:
        f"{REPORT}/tables/table1.md",
    log:
        f"{R}/logs/tables.log",
    shell:
        "{WB} tables --collected {R}/collect --out-dir {REPORT}/tables > {log} 2>&1"


rule figures:
    input:
        rules.collect.output,
    output:
        f"{REPORT}/figures/fig4_avg_bars.png",
    log:
        f"{R}/logs/figures.log",
    shell:
        "{WB} figures --collected {R}/collect --out-dir {REPORT}/figures > {log} 2>&1"


rule report:
    input:
        tables=rules.tables.output,
        figures=rules.figures.output,
    output:
        f"{REPORT}/REPRODUCTION.md",
    log:
        f"{R}/logs/report.log",
    params:
        command=provenance(),
    shell:
        "{WB} report --collected {R}/collect --out-dir {REPORT} --reuse-figures --reuse-tables "
        "--command '{params.command}' > {log} 2>&1"


rule casestudy:
    input:
        f"{R}/runs/sgopd/seed{SEEDS[0]}/eval.json",
    output:
        f"{REPORT}/casestudy_sgopd.html",
    log:
        f"{R}/logs/casestudy.log",
    shell:
        "{WB} casestudy {R}/runs/sgopd/seed{SEEDS[0]}/casestudy.json --out {output} "
        "--title 'SG-OPD, seed {SEEDS[0]}: the last step of training' > {log} 2>&1"


def publish_copy(sources, dest):
    """Copy files and directories into ``dest``, each through a temp sibling and a rename, so
    that an interrupted publish leaves every item whole (old or new)."""
    import shutil
    from pathlib import Path

    from workbench.io import atomic_dir, atomic_write_text

    for src in map(Path, sources):
        if src.is_dir():
            with atomic_dir(Path(dest) / src.name) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            atomic_write_text(Path(dest) / src.name, src.read_text(encoding="utf-8"))


rule publish:
    input:
        report_files(),
    output:
        touch(f"{R}/published/grid.done"),
    localrule: True
    run:
        if not (PUBLISH and FULL_GRID):
            raise ValueError(f"publish: reports/ holds the complete default grid's report only (scale mini, "
                             f"every run, seeds {list(SCALE.seeds)}); this one stays in {REPORT}")
        publish_copy([f"{REPORT}/tables", f"{REPORT}/figures", *input], PUBLISH)


# Hyper-parameter search (not part of `all`): the study is set up once, then SEARCH_WORKERS
# jobs work on its one storage (any RDB URL lets them run on several machines), then the
# best trial is evaluated once on the benchmarks and the report is written.
#   snakemake --cores 2 search                                  # experiments/search/pts-lambda.yaml
#   snakemake --cores 2 search --config search=<space>          # any space of experiments/search/
SEARCH_WORKERS = 2


def _search_args(wc):
    return (f"experiments/search/{wc.space}.yaml --scale {SCALE.name} --study {wc.space} "
            f"--out {R}/search --world {WORLD}")


rule search:
    input:
        (f"{R}/published/search-{config['search']}.done" if PUBLISH
         else f"{REPORT}/search/{config['search']}/summary.md"),


rule search_start:
    input:
        space="experiments/search/{space}.yaml",
        world=f"{WORLD}/manifest.json",
    output:
        f"{R}/search/{{space}}/study.json",
    log:
        f"{R}/logs/search/{{space}}-start.log",
    params:
        args=_search_args,
    shell:
        "{WB} search {params.args} --workers 0 > {log} 2>&1"


rule search_worker:
    input:
        f"{R}/search/{{space}}/study.json",
    output:
        touch(f"{R}/search/{{space}}/workers/{{i}}.done"),
    log:
        f"{R}/logs/search/{{space}}-worker{{i}}.log",
    threads: SCALE.threads
    params:
        args=_search_args,
    shell:
        "{WB} search-worker {params.args} --threads {threads} > {log} 2>&1"


rule search_report:
    input:
        expand(f"{R}/search/{{{{space}}}}/workers/{{i}}.done", i=range(SEARCH_WORKERS)),
    output:
        f"{REPORT}/search/{{space}}/summary.md",
    log:
        f"{R}/logs/search/{{space}}-report.log",
    params:
        args=_search_args,
    shell:
        "{WB} search-report {params.args} --reports {REPORT}/search > {log} 2>&1"


rule publish_search:
    input:
        f"{REPORT}/search/{{space}}/summary.md",
    output:
        touch(f"{R}/published/search-{{space}}.done"),
    localrule: True
    run:
        publish_copy([f"{REPORT}/search/{wildcards.space}"], f"{PUBLISH}/search")
