# Hyper-parameter search (not part of `all`): the study is set up once, then SEARCH_WORKERS
# jobs work on its one storage (any RDB URL lets them run on several machines), then the
# best trial is evaluated once on the benchmarks and the report is written.
#   snakemake --cores 2 search                                  # experiments/search/pts-lambda.yaml
#   snakemake --cores 2 search --config search=<space>          # any space of experiments/search/
SEARCH_WORKERS = 2


rule search:
    input:
        search_target(),


rule search_start:
    input:
        space="experiments/search/{space}.yaml",
        world=f"{WORLD}/manifest.json",
    output:
        f"{R}/search/{{space}}/study.json",
    log:
        f"{R}/logs/search/{{space}}-start.log",
    params:
        args=search_args,
    shell:
        "{WB} search {params.args} --workers 0 > {log} 2>&1"


# A worker's real output is trials in the study's storage (a database, possibly shared by
# several machines), not a file; the marker is what gives each of the SEARCH_WORKERS jobs
# its own output so that Snakemake runs them side by side.
rule search_worker:
    input:
        f"{R}/search/{{space}}/study.json",
    output:
        touch(f"{R}/search/{{space}}/workers/{{i}}.done"),
    log:
        f"{R}/logs/search/{{space}}-worker{{i}}.log",
    threads: SCALE.threads
    params:
        args=search_args,
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
        args=search_args,
    shell:
        "{WB} search-report {params.args} --reports {REPORT}/search > {log} 2>&1"


# As publish (report.smk): the committed reports/search/ cannot be the output.
rule publish_search:
    input:
        f"{REPORT}/search/{{space}}/summary.md",
    output:
        touch(f"{R}/published/search-{{space}}.done"),
    localrule: True
    run:
        publish_copy([f"{REPORT}/search/{wildcards.space}"], f"{PUBLISH}/search")
