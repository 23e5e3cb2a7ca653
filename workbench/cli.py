"""The ``workbench`` command line: the one seam used by people, Snakemake, Optuna and tests.

Each verb imports what it needs inside its handler, so ``workbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other user error of ``workbench``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


# -- argument types: a bad value is refused while parsing, before anything runs -----------


def _number(kind: type, *, low: float, low_open: bool = False, high: float | None = None, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, low=1, what="a positive integer")
_nonneg_int = _number(int, low=0, what="an integer >= 0")
_seed = _number(int, low=0, high=2**32 - 1, what="a seed in [0, 2**32)")
_positive_float = _number(float, low=0.0, low_open=True, what="a positive number")
_fraction = _number(float, low=0.0, low_open=True, high=1.0, what="a fraction in (0, 1]")


def _scale(text: str) -> str:
    """A scale of experiments/scales (``grid-start``, ``train``, ``eval``, the search verbs)."""
    from workbench.grid import check_scale
    from workbench.registry import UnknownNameError

    try:
        return check_scale(text)
    except UnknownNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- paths: checked before anything is computed or created ------------------------------


def _output(path: str | Path, what: str, *, directory: bool) -> Path:
    """A path this verb may create: not something else already, under a writable directory."""
    import os

    from workbench.errors import UserError

    p = Path(path)
    if p.exists() and p.is_dir() != directory:
        raise UserError(
            f"{what} {p}: is a {'file' if directory else 'directory'}, expected a "
            f"{'directory' if directory else 'file'}; pass another path or move it away"
        )
    base = p if p.exists() else p.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"{what} {p}: {base} is a file, so nothing can be created under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p}: {base} is not writable")
    return p


def _one_line(error: Exception) -> str:
    """An error message as the one line the CLI promises (a value may carry a newline)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _config_check(args: argparse.Namespace) -> int:
    from workbench.config import ConfigError, load_config

    failed = 0
    for path in args.files:
        try:
            cfg = load_config(path, args.set)
        except ConfigError as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            failed += 1
            continue
        if args.quiet:
            print(f"ok: {path} (hash {cfg.config_hash()})")
        else:
            print(f"# {path}: ok (hash {cfg.config_hash()})")
            print(cfg.to_yaml())
    return 2 if failed else 0


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
    _output(args.out, "--out", directory=True)
    from workbench.mini.prepare import prepare

    _threads(args.threads)
    man = prepare(args.out, seed=args.seed, preset=args.preset, force=args.force, verbose=True)
    for role, info in man["models"].items():
        acc = info["accuracy"]
        print(
            f"{role}: {info['params']} params, greedy train {acc['greedy']['train_dist']:.3f}, "
            f"bench avg greedy {acc['greedy']['bench_avg']:.3f} / sampled {acc['sampled_t1']['bench_avg']:.3f}"
        )
    print(f"world: {args.out} (hash {man['config_hash']})")
    return 0


def _train(args: argparse.Namespace) -> int:
    # A scheduler's SIGTERM ends the run like Ctrl-C (see main): MLflow marks it KILLED, and
    # the next `workbench train` on the same directory resumes from the last checkpoint.
    from workbench.grid import read_grid, resolve_config
    from workbench.mini.runs import check_world, train_run

    sets = args.set + ([f"seed={args.seed}"] if args.seed is not None else [])
    resolve_config(args.config, scale=args.scale, overrides=sets)  # the config first: the likeliest mistake
    _output(args.run_dir, "--run-dir", directory=True)
    check_world(args.world)
    grid = read_grid(args.grid)
    _threads(args.threads)
    train_run(
        args.config,
        run_dir=args.run_dir,
        world=args.world,
        overrides=sets,
        scale=args.scale,
        experiment=grid.get("experiment", args.experiment),
        parent_run_id=grid.get("parent_run_id"),
        evaluate_final=not args.no_eval,
        restart=args.restart,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from workbench.errors import UserError

    if args.model not in ("student-init", "teacher") and not Path(args.model).exists():
        raise UserError(f"no model at {args.model}: give a model or run directory, student-init or teacher")
    if args.at_frac is not None and not Path(args.model).is_dir():
        raise UserError(f"--at-frac needs a run directory as MODEL, got {args.model}")
    from workbench.config import parse_config
    from workbench.grid import read_grid, resolve_config
    from workbench.mini.runs import check_world, eval_model

    extra = [] if args.seed is None else [f"seed={args.seed}"]
    resolve_config(args.config or parse_config({}), scale=args.scale, overrides=args.set + extra)
    _output(args.out, "--out", directory=False)
    check_world(args.world)
    read_grid(args.grid)
    _threads(args.threads)
    eval_model(
        args.model,
        world=args.world,
        out=args.out,
        config=args.config,
        overrides=args.set,
        scale=args.scale,
        at_frac=args.at_frac,
        name=args.name,
        seed=args.seed,
        grid=args.grid,
    )
    return 0


def _grid_start(args: argparse.Namespace) -> int:
    _output(args.out, "--out", directory=False)
    from workbench.grid import start_grid

    grid = start_grid(args.out, experiment=args.experiment or f"sgopd-{args.scale}", scale=args.scale)
    print(f"grid {grid['scale']}: experiment {grid['experiment']}, parent run {grid['parent_run_id']}")
    return 0


def _collect(args: argparse.Namespace) -> int:
    from workbench.grid import read_grid

    grid = read_grid(args.grid)
    _output(args.out_dir, "--out-dir", directory=True)
    from workbench.analysis import collect
    from workbench.tracking import default_tracking_uri

    out = collect(
        args.tracking_uri or default_tracking_uri(), grid["experiment"], args.out_dir, parent_run_id=grid["parent_run_id"]
    )
    print(f"collected {grid['experiment']} into {out}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    from workbench.analysis import write_tables
    from workbench.analysis.load import Runs

    runs = Runs.read(args.collected)
    _output(args.out_dir, "--out-dir", directory=True)
    for path in write_tables(runs, args.out_dir):
        print(path)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from workbench.analysis import write_figures
    from workbench.analysis.load import Runs

    runs = Runs.read(args.collected)
    _output(args.out_dir, "--out-dir", directory=True)
    for path in write_figures(runs, args.out_dir):
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from workbench.analysis import write_report
    from workbench.analysis.load import Runs

    runs = Runs.read(args.collected)
    _output(args.out_dir, "--out-dir", directory=True)
    print(
        write_report(
            runs,
            args.out_dir,
            make_figures=not args.reuse_figures,
            write_table_files=not args.reuse_tables,
            command=args.command,
            world_manifest=args.world_manifest,
        )
    )
    return 0


def _casestudy(args: argparse.Namespace) -> int:
    from workbench.analysis.casestudy import load_rollouts, write_casestudy

    rollouts = load_rollouts(args.rollouts)
    _output(args.out, "--out", directory=False)
    print(write_casestudy(rollouts, args.out, title=args.title))
    return 0


def _search_context(args: argparse.Namespace, *, training: bool = False, threads: int | None = None):
    """The study's context (a bad space is a ``SearchSpaceError``: exit 2 naming the field).
    A ``training`` process also sets torch's ``threads``; SIGTERM is KeyboardInterrupt (see
    main), so that a scheduler's stop re-queues the running trial instead of losing it."""
    from workbench.search.study import make_context

    ctx = make_context(
        args.space,
        scale=args.scale,
        study=args.study,
        storage=args.storage,
        out=args.out,
        world=args.world,
        experiment=args.experiment,
        n_trials=args.trials,
        **{k: getattr(args, k) for k in ("heartbeat_s", "stale_after_s", "poll_s") if hasattr(args, k)},
    )
    _output(args.out, "--out", directory=True)
    if training:
        _threads(threads)
    return ctx


def _search(args: argparse.Namespace) -> int:
    import os

    from workbench.search import run_search

    if args.check:
        from workbench.search.space import corner

        ctx = _search_context(args)
        print(
            f"ok: {args.space}: study {ctx.study_name}, {ctx.space.n_trials} trials, scale {ctx.scale}, storage {ctx.storage_url}"
        )
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
    p.add_argument(
        "--study",
        default=None,
        help="study name (default: the space's name, suffixed with --scale when it differs from the space's)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="an RDB URL (sqlite:///..., postgresql://...) or a journal file (default: OUT/STUDY/optuna.journal)",
    )
    p.add_argument("--scale", type=_scale, default=None, help="scale of experiments/scales (default: the space's)")
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=None,
        help="number of trials of the study (default: the space's n_trials; part of the study's identity, like the space)",
    )
    p.add_argument("--world", default=None, help="prepared world (default: results/SCALE/world)")
    p.add_argument("--out", default="results/search", help="trial run directories go to OUT/STUDY (default: %(default)s)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: sgopd-search-SCALE)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per worker")
    if worker:
        p.add_argument(
            "--heartbeat",
            dest="heartbeat_s",
            type=_positive_float,
            default=30.0,
            help="seconds between a running trial's heartbeats (default: %(default)s)",
        )
        p.add_argument(
            "--stale-after",
            dest="stale_after_s",
            type=_positive_float,
            default=600.0,
            help="a trial of another machine without heartbeat for this long is re-queued; on this "
            "machine a dead worker's trial is re-queued at once (default: %(default)s)",
        )
        p.add_argument("--poll", dest="poll_s", type=_positive_float, default=2.0, help="idle worker poll seconds")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="results/mini/world", help="prepared world (default: %(default)s)")
    p.add_argument("--scale", type=_scale, default=None, help="apply experiments/scales/SCALE.yaml's overrides")
    p.add_argument("--seed", type=_seed, default=None, help="training / sampling seed (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--grid", default=None, help="grid file from `workbench grid-start`: log as its child run")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    from workbench import __version__
    from workbench.methods import METHODS

    parser = _Parser(
        prog="workbench",
        description="Reproduce, extend and stress-test Sign-Gated On-Policy Distillation (SG-OPD).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error (also WORKBENCH_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    config = verbs.add_parser("config", help="validate and show run configs")
    config_verbs = config.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = config_verbs.add_parser(
        "check",
        help="validate run config files and print the resolved configs",
        description="Validate YAML run configs (each lists only what differs from the defaults) "
        "and print the resolved config. Exits 2 if any file is invalid, like every user error.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set gate.lambda_high=1.5 (repeatable)",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print one line per file")
    check.set_defaults(handler=_config_check)
    defaults = config_verbs.add_parser("defaults", help="print the fully resolved default config of a method")
    defaults.add_argument("--method", choices=METHODS.names(), default="sgopd")
    defaults.set_defaults(handler=_config_defaults)

    prep = verbs.add_parser(
        "prepare",
        help="build the miniature world: data, tokenizer, teacher and student",
        description="Generate the synthetic task, train the teacher and the student from "
        "scratch (deterministic from --seed) and cache them with a manifest. "
        "Reuses the cache when the config hash matches.",
    )
    prep.add_argument("--out", default="results/mini/world", help="world directory (default: %(default)s)")
    prep.add_argument("--preset", default="mini", help="world preset of workbench/mini/world.py (default: %(default)s)")
    prep.add_argument("--seed", type=_seed, default=0)
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    prep.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    prep.set_defaults(handler=_prepare)

    tr = verbs.add_parser(
        "train",
        help="train one run (resumes from its last checkpoint)",
        description="Train a run config with its backend, log to MLflow and metrics.jsonl, "
        "then evaluate the final model. A run directory with checkpoints resumes.",
    )
    tr.add_argument("config", help="run config YAML")
    tr.add_argument("--run-dir", required=True, help="output directory of this run")
    _common_run_args(tr)
    tr.add_argument("--experiment", default="sgopd-mini", help="MLflow experiment without --grid (default: %(default)s)")
    tr.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    tr.add_argument(
        "--restart",
        action="store_true",
        help="discard what --run-dir holds (a finished or stopped run, of any config; its MLflow run stays) and train afresh",
    )
    tr.set_defaults(handler=_train)

    ev = verbs.add_parser(
        "eval",
        help="evaluate a model: avg@k and pass@k per benchmark and AVG",
        description="MODEL is a model directory, a run directory with --at-frac, or one of "
        "'student-init' and 'teacher' (the prepared world's models).",
    )
    ev.add_argument("model")
    ev.add_argument("--out", required=True, help="where to write the results JSON")
    ev.add_argument("--config", default=None, help="run config whose eval section to use (default: defaults)")
    ev.add_argument(
        "--at-frac",
        type=_fraction,
        default=None,
        help="with a run directory: its checkpoint at this fraction of its steps (sgopd@90%%: 0.9)",
    )
    ev.add_argument("--name", default=None, help="label of this evaluation (e.g. student-init, sgopd@90%%)")
    _common_run_args(ev)
    ev.set_defaults(handler=_eval)

    gs = verbs.add_parser("grid-start", help="create the grid's parent MLflow run (idempotent)")
    gs.add_argument("--scale", type=_scale, required=True, help="a scale of experiments/scales")
    gs.add_argument("--out", required=True, help="grid file to write (experiment and parent run id)")
    gs.add_argument("--experiment", default=None, help="MLflow experiment (default: sgopd-SCALE)")
    gs.set_defaults(handler=_grid_start)

    co = verbs.add_parser("collect", help="load a grid's runs and histories from MLflow into a snapshot")
    co.add_argument("--grid", required=True, help="grid file from `workbench grid-start`")
    co.add_argument("--out-dir", required=True)
    co.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or results/mlflow.db")
    co.set_defaults(handler=_collect)
    for verb, fn, what in (
        ("tables", _tables, "Tables 1-3 as Markdown, LaTeX and CSV, beside the paper's numbers"),
        ("figures", _figures, "Figs 4-7 and the PTS schedule, PNG and PDF"),
    ):
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
    rp.add_argument(
        "--world-manifest",
        default=None,
        metavar="PATH",
        help="the mini world's manifest.json, for the world-level premises (default: none, reported as not measured)",
    )
    rp.set_defaults(handler=_report)
    cs = verbs.add_parser("casestudy", help="render rollouts' tokens coloured by consensus / conflict / neutral (HTML)")
    cs.add_argument("rollouts", help="a run's casestudy.json")
    cs.add_argument("--out", required=True)
    cs.add_argument("--title", default="Conflict-token case study")
    cs.set_defaults(handler=_casestudy)

    se = verbs.add_parser(
        "search",
        help="Optuna search over run-config fields (parallel, resumable, MLflow-tracked)",
        description="Validate the search space, create or resume the study, run --workers worker "
        "processes on it, then evaluate the best trial once on the benchmarks and write the report. "
        "Rerunning the same command resumes a stopped study: a trial left running by a killed worker "
        "resumes from its checkpoint.",
    )
    _search_args(se, worker=True)
    se.add_argument("--workers", type=_nonneg_int, default=1, help="worker processes (0: set the study up only; default: 1)")
    se.add_argument(
        "--reports", default="reports/search", help="report directory; the report goes to REPORTS/STUDY (default: %(default)s)"
    )
    se.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    se.add_argument("--no-benchmarks", action="store_true", help="report without the benchmark evaluation")
    se.add_argument("--check", action="store_true", help="validate the space, print it and exit")
    se.set_defaults(handler=_search)
    sw = verbs.add_parser(
        "search-worker",
        help="run trials of an existing study until none is left (one process)",
        description="One worker of `workbench search` (Snakemake starts several against one storage).",
    )
    _search_args(sw, worker=True)
    sw.add_argument(
        "--max-trials", type=_positive_int, default=None, help="leave after this many trials (default: when none is left)"
    )
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
    """Run one verb. A user's mistake (``UserError``) is one line on stderr and exit 2;
    ``--debug`` shows its traceback. Anything else is a bug and keeps its traceback.
    Ctrl-C exits 130 and SIGTERM 143, each with one line; a closed stdout pipe (``| head``)
    exits 1 quietly."""
    import contextlib
    import errno
    import os
    import signal

    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("WORKBENCH_DEBUG"))
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    handler: Handler = args.handler
    from workbench import stops
    from workbench.errors import UserError

    restore = stops.install(os.getpid())
    try:
        rc = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return rc
    except UserError as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`). CPython's documented recipe: point stdout at
        # devnull so the interpreter's final flush cannot fail again, and exit 1.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):
            pass  # stdout is not a file (captured in-process)
        return 1
    except OSError as e:
        # The environment, not a bug: a path the user may not write, a full or read-only disk.
        if debug or not (isinstance(e, PermissionError) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if debug:
            raise
        term = isinstance(e, stops.Terminated)
        print("interrupted by SIGTERM" if term else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if term else signal.SIGINT)
    finally:
        restore()
        if as_program:
            # The verb is over and its exit status decided: a stop that lands during interpreter
            # shutdown (torch's atexit hooks) would only print a traceback.
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
