"""The ``workbench`` command line: the one seam used by people, Snakemake, Optuna and tests.

Each verb imports what it needs inside its handler, so ``workbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _config_check(args: argparse.Namespace) -> int:
    from workbench.config import ConfigError, load_config

    failed = 0
    for path in args.files:
        try:
            cfg = load_config(path, args.set)
        except (ConfigError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.quiet:
            print(f"ok: {path} (hash {cfg.config_hash()})")
        else:
            print(f"# {path}: ok (hash {cfg.config_hash()})")
            print(cfg.to_yaml())
    return 1 if failed else 0


def _config_defaults(args: argparse.Namespace) -> int:
    from workbench.config import parse_config

    print(parse_config({"method": args.method}).to_yaml(), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.kind == "methods":
        from workbench.methods import METHODS

        for name, m in METHODS.items():
            print(f"{name:8s} {m.family:4s} {m.summary}")
        return 0
    if args.kind == "backends":
        from workbench.config import BACKENDS as reg
    elif args.kind == "fallbacks":
        from workbench.algo import FALLBACKS as reg
    else:
        from workbench.algo import STABILITY_WEIGHTS as reg
    print("\n".join(reg.names()))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from workbench.mini.prepare import prepare

    _threads(args.threads)
    man = prepare(args.out, seed=args.seed, scale=args.scale, force=args.force, verbose=True)
    for role, info in man["models"].items():
        acc = info["accuracy"]
        print(f"{role}: {info['params']} params, greedy train {acc['greedy']['train_dist']:.3f}, "
              f"bench avg greedy {acc['greedy']['bench_avg']:.3f} / sampled {acc['sampled_t1']['bench_avg']:.3f}")
    print(f"world: {args.out} (hash {man['config_hash']})")
    return 0


def _train(args: argparse.Namespace) -> int:
    import signal

    from workbench.runner import read_grid, train_run

    _threads(args.threads)
    # A scheduler's SIGTERM ends the run like Ctrl-C: MLflow marks it KILLED, and the
    # next `workbench train` on the same directory resumes from the last checkpoint.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    grid = read_grid(args.grid)
    sets = args.set + ([f"seed={args.seed}"] if args.seed is not None else [])
    train_run(args.config, run_dir=args.run_dir, world=args.world, overrides=sets, scale=args.scale,
              experiment=grid.get("experiment", args.experiment), parent_run_id=grid.get("parent_run_id"),
              evaluate_final=not args.no_eval)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from workbench.runner import eval_model

    _threads(args.threads)
    eval_model(args.model, world=args.world, out=args.out, config=args.config, overrides=args.set, scale=args.scale,
               at_frac=args.at_frac, name=args.name, seed=args.seed, grid=args.grid)
    return 0


def _grid_start(args: argparse.Namespace) -> int:
    from workbench.runner import start_grid

    grid = start_grid(args.out, experiment=args.experiment or f"sgopd-{args.scale}", scale=args.scale)
    print(f"grid {grid['scale']}: experiment {grid['experiment']}, parent run {grid['parent_run_id']}")
    return 0


def _collect(args: argparse.Namespace) -> int:
    from workbench.analysis import collect
    from workbench.runner import read_grid
    from workbench.tracking import default_tracking_uri

    grid = read_grid(args.grid)
    out = collect(args.tracking_uri or default_tracking_uri(), grid["experiment"], args.out_dir,
                  parent_run_id=grid["parent_run_id"])
    print(f"collected {grid['experiment']} into {out}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    from workbench.analysis import write_tables
    from workbench.analysis.load import Runs

    for path in write_tables(Runs.read(args.collected), args.out_dir):
        print(path)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from workbench.analysis import write_figures
    from workbench.analysis.load import Runs

    for path in write_figures(Runs.read(args.collected), args.out_dir):
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from workbench.analysis import write_report
    from workbench.analysis.load import Runs

    print(write_report(Runs.read(args.collected), args.out_dir, make_figures=not args.reuse_figures,
                       write_table_files=not args.reuse_tables, command=args.command))
    return 0


def _casestudy(args: argparse.Namespace) -> int:
    from workbench.analysis import write_casestudy

    print(write_casestudy(args.rollouts, args.out, title=args.title))
    return 0


def _search_context(args: argparse.Namespace, *, training: bool = False, threads: int | None = None):
    """The study's context, or exit 2 naming what is wrong with the space. A ``training``
    process also sets torch's ``threads`` and turns SIGTERM into KeyboardInterrupt, so that a
    scheduler's stop re-queues the running trial instead of losing it."""
    import signal

    from workbench.search import SearchSpaceError
    from workbench.search.study import make_context

    try:
        ctx = make_context(args.space, scale=args.scale, study=args.study, storage=args.storage, out=args.out,
                           world=args.world, experiment=args.experiment,
                           **{k: getattr(args, k) for k in ("heartbeat_s", "stale_after_s", "poll_s") if hasattr(args, k)})
    except SearchSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if training:
        _threads(threads)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return ctx


def _search(args: argparse.Namespace) -> int:
    import os

    from workbench.search import run_search

    if args.check:
        from workbench.search.space import corner

        ctx = _search_context(args)
        print(f"ok: {args.space}: study {ctx.study_name}, {ctx.space.n_trials} trials, scale {ctx.scale}, "
              f"storage {ctx.storage_url}")
        for which in ("low", "high"):
            print(f"  {which} corner: {corner(ctx.space, which)}")
        return 0
    # Each worker gets its share of the cores unless told otherwise.
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    ctx = _search_context(args, training=True, threads=threads)
    reports = None if args.no_report else f"{args.reports}/{ctx.study_name}"
    return run_search(ctx, workers=args.workers, threads=threads, reports_dir=reports, benchmarks=not args.no_benchmarks)


def _search_worker(args: argparse.Namespace) -> int:
    from workbench.search.study import run_worker

    run_worker(_search_context(args, training=True, threads=args.threads), max_trials=args.max_trials)
    return 0


def _search_report(args: argparse.Namespace) -> int:
    from workbench.search import finalize

    ctx = _search_context(args)
    print(finalize(ctx, reports_dir=f"{args.reports}/{ctx.study_name}", benchmarks=not args.no_benchmarks))
    return 0


def _search_args(p: argparse.ArgumentParser, *, worker: bool) -> None:
    p.add_argument("space", help="search space YAML (experiments/search/)")
    p.add_argument("--study", default=None, help="study name (default: the space's name, suffixed with --scale "
                   "when it differs from the space's)")
    p.add_argument("--storage", default=None, help="an RDB URL (sqlite:///..., postgresql://...) or a journal file "
                   "(default: OUT/STUDY/optuna.journal)")
    p.add_argument("--scale", default=None, help="scale of experiments/scales (default: the space's)")
    p.add_argument("--world", default=None, help="prepared world (default: results/SCALE/world)")
    p.add_argument("--out", default="results/search", help="trial run directories go to OUT/STUDY (default: %(default)s)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: sgopd-search-SCALE)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    if worker:
        p.add_argument("--heartbeat", dest="heartbeat_s", type=float, default=30.0,
                       help="seconds between a running trial's heartbeats (default: %(default)s)")
        p.add_argument("--stale-after", dest="stale_after_s", type=float, default=600.0,
                       help="a trial of another machine without heartbeat for this long is re-queued; on this "
                       "machine a dead worker's trial is re-queued at once (default: %(default)s)")
        p.add_argument("--poll", dest="poll_s", type=float, default=2.0, help="idle worker poll seconds")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="results/mini/world", help="prepared world (default: %(default)s)")
    p.add_argument("--scale", default=None, help="apply experiments/scales/SCALE.yaml's overrides")
    p.add_argument("--seed", type=int, default=None, help="training / sampling seed (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--grid", default=None, help="grid file from `workbench grid-start`: log as its child run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    from workbench import __version__
    from workbench.methods import METHODS

    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Reproduce, extend and stress-test Sign-Gated On-Policy Distillation (SG-OPD).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    config = verbs.add_parser("config", help="validate and show run configs")
    config_verbs = config.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = config_verbs.add_parser(
        "check", help="validate run config files and print the resolved configs",
        description="Validate YAML run configs (each lists only what differs from the defaults) "
        "and print the resolved config. Exits 1 if any file is invalid.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set gate.lambda_high=1.5 (repeatable)")
    check.add_argument("-q", "--quiet", action="store_true", help="print one line per file")
    check.set_defaults(handler=_config_check)
    defaults = config_verbs.add_parser("defaults", help="print the fully resolved default config of a method")
    defaults.add_argument("--method", choices=METHODS.names(), default="sgopd")
    defaults.set_defaults(handler=_config_defaults)

    prep = verbs.add_parser("prepare", help="build the miniature world: data, tokenizer, teacher and student",
                            description="Generate the synthetic task, train the teacher and the student from "
                            "scratch (deterministic from --seed) and cache them with a manifest. "
                            "Reuses the cache when the config hash matches.")
    prep.add_argument("--out", default="results/mini/world", help="world directory (default: %(default)s)")
    prep.add_argument("--scale", default="mini", choices=("mini", "smoke"))
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    prep.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    prep.set_defaults(handler=_prepare)

    tr = verbs.add_parser("train", help="train one run (resumes from its last checkpoint)",
                          description="Train a run config with its backend, log to MLflow and metrics.jsonl, "
                          "then evaluate the final model. A run directory with checkpoints resumes.")
    tr.add_argument("config", help="run config YAML")
    tr.add_argument("--run-dir", required=True, help="output directory of this run")
    _common_run_args(tr)
    tr.add_argument("--experiment", default="sgopd-mini", help="MLflow experiment without --grid (default: %(default)s)")
    tr.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    tr.set_defaults(handler=_train)

    ev = verbs.add_parser("eval", help="evaluate a model: avg@k and pass@k per benchmark and AVG",
                          description="MODEL is a model directory, a run directory with --at-frac, or one of "
                          "'student-init' and 'teacher' (the prepared world's models).")
    ev.add_argument("model")
    ev.add_argument("--out", required=True, help="where to write the results JSON")
    ev.add_argument("--config", default=None, help="run config whose eval section to use (default: defaults)")
    ev.add_argument("--at-frac", type=float, default=None, help="with a run directory: its checkpoint at this "
                    "fraction of its steps (sgopd@90%%: 0.9)")
    ev.add_argument("--name", default=None, help="label of this evaluation (e.g. student-init, sgopd@90%%)")
    _common_run_args(ev)
    ev.set_defaults(handler=_eval)

    gs = verbs.add_parser("grid-start", help="create the grid's parent MLflow run (idempotent)")
    gs.add_argument("--scale", required=True)
    gs.add_argument("--out", required=True, help="grid file to write (experiment and parent run id)")
    gs.add_argument("--experiment", default=None, help="MLflow experiment (default: sgopd-SCALE)")
    gs.set_defaults(handler=_grid_start)

    co = verbs.add_parser("collect", help="load a grid's runs and histories from MLflow into a snapshot")
    co.add_argument("--grid", required=True, help="grid file from `workbench grid-start`")
    co.add_argument("--out-dir", required=True)
    co.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or results/mlflow.db")
    co.set_defaults(handler=_collect)
    for verb, fn, what in (("tables", _tables, "Tables 1-3 as Markdown, LaTeX and CSV, beside the paper's numbers"),
                           ("figures", _figures, "Figs 4-7 and the PTS schedule, PNG and PDF")):
        p = verbs.add_parser(verb, help=f"render {what}")
        p.add_argument("--collected", required=True, help="snapshot directory from `workbench collect`")
        p.add_argument("--out-dir", required=True)
        p.set_defaults(handler=fn)
    rp = verbs.add_parser("report", help="write REPRODUCTION.md: tables, claims with verdicts, figures, provenance")
    rp.add_argument("--collected", required=True)
    rp.add_argument("--out-dir", required=True)
    rp.add_argument("--reuse-figures", action="store_true", help="link the figures already in OUT_DIR/figures")
    rp.add_argument("--reuse-tables", action="store_true", help="do not rewrite OUT_DIR/tables")
    rp.add_argument("--command", default=None, help="the command line to record (default: this one)")
    rp.set_defaults(handler=_report)
    cs = verbs.add_parser("casestudy", help="render rollouts' tokens coloured by consensus / conflict / neutral (HTML)")
    cs.add_argument("rollouts", help="a run's casestudy.json")
    cs.add_argument("--out", required=True)
    cs.add_argument("--title", default="Conflict-token case study")
    cs.set_defaults(handler=_casestudy)

    se = verbs.add_parser("search", help="Optuna search over run-config fields (parallel, resumable, MLflow-tracked)",
                          description="Validate the search space, create or resume the study, run --workers worker "
                          "processes on it, then evaluate the best trial once on the benchmarks and write the report. "
                          "Rerunning the same command resumes a stopped study: a trial left running by a killed worker "
                          "resumes from its checkpoint.")
    _search_args(se, worker=True)
    se.add_argument("--workers", type=int, default=1, help="worker processes (0: set the study up only; default: 1)")
    se.add_argument("--reports", default="reports/search", help="report directory; the report goes to REPORTS/STUDY "
                    "(default: %(default)s)")
    se.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    se.add_argument("--no-benchmarks", action="store_true", help="report without the benchmark evaluation")
    se.add_argument("--check", action="store_true", help="validate the space, print it and exit")
    se.set_defaults(handler=_search)
    sw = verbs.add_parser("search-worker", help="run trials of an existing study until none is left (one process)",
                          description="One worker of `workbench search` (Snakemake starts several against one storage).")
    _search_args(sw, worker=True)
    sw.add_argument("--max-trials", type=int, default=None, help="leave after this many trials (default: when none is left)")
    sw.set_defaults(handler=_search_worker)
    sr = verbs.add_parser("search-report", help="evaluate a finished study's best trial on the benchmarks; write the report")
    _search_args(sr, worker=False)
    sr.add_argument("--reports", default="reports/search", help="the report goes to REPORTS/STUDY (default: %(default)s)")
    sr.add_argument("--no-benchmarks", action="store_true", help="report without the benchmark evaluation")
    sr.set_defaults(handler=_search_report)

    # The verl backend's verbs (verl-overrides, verl-check, verl-launch, realscale-eval, ...):
    # registering them imports neither verl nor torch.
    from workbench.backends.verl.cli import add_verbs as add_verl_verbs

    add_verl_verbs(verbs)

    lister = verbs.add_parser("list", help="list the names a registry accepts")
    lister.add_argument("kind", choices=("methods", "fallbacks", "stability", "backends"))
    lister.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
