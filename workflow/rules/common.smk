# What every file of rules shares: the grid this invocation runs (from the config and
# workbench.grid), the paths under results/, and the rules' input and parameter functions.
import sys

from workbench import grid as G

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


# -- targets ------------------------------------------------------------------------------
def report_files():
    # the case study reads the mini trainer's casestudy.json (verl writes none)
    return [f"{REPORT}/REPRODUCTION.md"] + ([f"{REPORT}/casestudy_sgopd.html"] if "sgopd" in RUNS and BACKEND == "mini" else [])


def report_world():
    """The world's manifest, for the report's world-level premises (docs/mini-world.md): the
    mini backend's prepared world only (a verl scale's models are no such world)."""
    return [f"{WORLD}/manifest.json"] if BACKEND == "mini" else []


def final_targets():
    """`all`: the report; the complete default mini grid's is also published to reports/."""
    return [f"{R}/published/grid.done"] if BACKEND == "mini" and PUBLISH and FULL_GRID else report_files()


def search_target():
    """`search`: the study's summary of config["search"], published to reports/search/ at mini scale."""
    space = config["search"]
    return f"{R}/published/search-{space}.done" if PUBLISH else f"{REPORT}/search/{space}/summary.md"


def run_results():
    """collect's input: every trained run's evaluation, where its backend writes it."""
    if BACKEND == "verl":
        return VERL_EVAL_RESULTS  # workflow/rules/verl.smk
    return expand(f"{R}/runs/{{run}}/seed{{seed}}/eval.json", run=RUNS, seed=SEEDS)


def extra_results():
    """collect's input: every evaluation without training (experiments/grid.yaml)."""
    if BACKEND == "verl":
        return VERL_EXTRA_RESULTS  # workflow/rules/verl.smk
    return expand(f"{R}/evals/{{extra}}/seed{{seed}}.json", extra=EXTRA, seed=SEEDS)


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
    return f"{head} --config {' '.join(parts)}"


# -- input and parameter functions of the mini backend's and the search's rules -------------
def train_init(wildcards):
    """A time-separated stage 2 waits for stage 1, whose checkpoint it starts from."""
    return G.init_inputs(wildcards.run, f"{R}/runs", wildcards.seed)


def train_priority(wildcards):
    """Longest jobs first (workbench.grid.train_priority)."""
    return G.train_priority(wildcards.run, SCALE.name)


def train_run_dir(wildcards):
    return f"{R}/runs/{wildcards.run}/seed{wildcards.seed}"


def train_evals(wildcards):
    """Evaluations during training only for the runs a figure draws them for (grid.yaml)."""
    return "" if G.evaluates_during_training(wildcards.run) else "--set train.eval_every=0"


def eval_extra_run(wildcards):
    """A checkpoint's evaluation waits for its run (none for a prepared model)."""
    return G.extra_eval_inputs(wildcards.extra, f"{R}/runs", wildcards.seed)


def eval_extra_args(wildcards):
    return G.extra_eval_args(wildcards.extra, f"{R}/runs", wildcards.seed)


def search_args(wildcards):
    return (
        f"experiments/search/{wildcards.space}.yaml --scale {SCALE.name} --study {wildcards.space} "
        f"--out {R}/search --world {WORLD}"
    )


# -- publishing ---------------------------------------------------------------------------
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
