# The grid's tracking and its report, for both backends: the grid's parent MLflow run that
# every job logs under (grid_start), then collect -> tables, figures -> report, the SG-OPD
# case study, and the copy of the complete mini grid's report (and its runs.csv) to the
# committed reports/.


rule grid_start:
    output:
        GRID,
    log:
        f"{R}/logs/grid_start.log",
    shell:
        "{WB} grid-start --scale {SCALE.name} --out {output} > {log} 2>&1"


rule collect:
    input:
        runs=run_results(),
        evals=extra_results(),
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
        world=report_world(),
    output:
        report=f"{REPORT}/REPRODUCTION.md",
        runs=f"{REPORT}/runs.csv",
    log:
        f"{R}/logs/report.log",
    params:
        command=provenance(),
        world=" ".join(f"--world-manifest {m}" for m in report_world()),
    shell:
        "{WB} report --collected {R}/collect --out-dir {REPORT} --reuse-figures --reuse-tables "
        "{params.world} --command '{params.command}' > {log} 2>&1"


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


# The marker is the one output under results/ that stands for the copy (see PUBLISH in
# common.smk: with the committed reports/ files as outputs, a fresh clone would look done).
rule publish:
    input:
        report_files(),
        f"{REPORT}/runs.csv",
    output:
        touch(f"{R}/published/grid.done"),
    localrule: True
    run:
        if not (PUBLISH and FULL_GRID):
            raise ValueError(f"publish: reports/ holds the complete default grid's report only (scale mini, "
                             f"every run, seeds {list(SCALE.seeds)}); this one stays in {REPORT}")
        publish_copy([f"{REPORT}/tables", f"{REPORT}/figures", *input], PUBLISH)
