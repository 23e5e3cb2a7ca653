# The ablation workflow: prepare -> train (run x seed) -> eval -> collect -> tables ->
# figures -> report. Rules are thin calls of the `workbench` CLI; the grid itself (runs,
# scales, seeds, dependencies, extra evaluations) is read through workbench.grid.
#
#   snakemake --cores 2                                  # the mini grid, 3 seeds
#   snakemake --cores 2 --config scale=smoke seeds=[0]   # the whole grid in minutes
#   snakemake --cores 2 --config runs=[opd,sgopd]        # a subset
#   snakemake -n                                         # list every job
#
# Layout (the Snakemake workflow catalog's): this file is the entry point; the default config
# is config/config.yaml (its schema workflow/schemas/config.schema.yaml); the rules are in
# workflow/rules/: common.smk (the grid of this invocation, paths, input functions), mini.smk
# (the mini backend), verl_common.smk and verl.smk (the verl backend, with backend=verl),
# report.smk (the grid's MLflow run, collect, tables, figures, report, publish) and
# search.smk (`snakemake search`).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


rule all:
    input:
        final_targets(),


# backend=verl: every grid run as a verl job on a GPU cluster, then its real-scale evaluation
# (and the extra evaluations); collect, tables, figures and report as for mini.
if BACKEND == "verl":

    include: "workflow/rules/verl_common.smk"
    include: "workflow/rules/verl.smk"


include: "workflow/rules/mini.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/search.smk"
