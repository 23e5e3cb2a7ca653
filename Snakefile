# The ablation workflow (prepare -> train -> eval -> collect -> tables -> figures ->
# report) arrives with the workflow issue. Today it validates the grid's run configs.
RUNS = glob_wildcards("experiments/runs/{run}.yaml").run


rule all:
    input:
        "results/config-check.txt",


rule config_check:
    input:
        expand("experiments/runs/{run}.yaml", run=RUNS),
    output:
        "results/config-check.txt",
    shell:
        "workbench config check --quiet {input} > {output}"
