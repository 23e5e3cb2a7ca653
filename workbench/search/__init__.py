"""Optuna searches over run-config fields (PTS phase ends, gate lambdas, ...), tracked in MLflow.

- ``space``: search spaces as data (``experiments/search/*.yaml``), validated before any trial.
- ``study``: storage, study setup, workers, one trial = one training run per seed, stale-trial
  recovery, the final benchmark evaluation.
- ``report``: figures and the Markdown summary.

``run_search`` is what ``workbench search`` does; ``finalize`` is ``workbench search-report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from workbench.search.space import SearchSpace, SearchSpaceError, load_space, suggest

__all__ = ["SearchSpace", "SearchSpaceError", "finalize", "load_space", "run_search", "suggest"]


def run_search(ctx, *, workers: int, threads: int, reports_dir: str | Path | None, benchmarks: bool = True) -> int:
    """Set the study up, run ``workers`` workers on it (0: set up only), then report if it is finished."""
    from workbench.search import study as S

    S.setup_study(ctx)
    print(f"study {ctx.study_name}: storage {ctx.storage_url}, {ctx.space.n_trials} trials, run dirs {ctx.root}", file=sys.stderr)
    if workers == 0:
        return 0
    if workers == 1:
        S.run_worker(ctx)  # in this process: Ctrl-C re-queues the running trial
        rc = 0
    else:
        rc = S.run_workers(ctx, workers, threads=threads)
    study = S.load(ctx)
    if not S.is_finished(study, ctx.space.n_trials):
        print(
            f"study {ctx.study_name} is not finished ({S.counts(study)}); run the same command again to resume it",
            file=sys.stderr,
        )
        return rc or 1
    if reports_dir is not None:
        print(finalize(ctx, reports_dir=reports_dir, benchmarks=benchmarks))
    return rc


def finalize(ctx, *, reports_dir: str | Path, benchmarks: bool = True) -> Path:
    """Evaluate the best trial (and the paper's default setting) once on the benchmarks, write the report."""
    from workbench.search import study as S
    from workbench.search.report import write_report

    study = S.load(ctx)
    bench: dict = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if benchmarks and complete and S.is_finished(study, ctx.space.n_trials):
        best = study.best_trial
        bench[f"best: trial {best.number}"] = (best, S.benchmark_eval(ctx, best))
        if ctx.space.enqueue:  # the paper's default setting, for reference beside the best
            label = ctx.space.enqueue[0].label
            ref = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(S.LABEL) == label), None)
            if ref is not None and ref.number != best.number:
                bench[label] = (ref, S.benchmark_eval(ctx, ref) if ref.state.name == "COMPLETE" else None)
    out = Path(reports_dir)
    path = write_report(ctx, study, out, bench)
    _log_to_parent(ctx, study, out)
    return path


def _log_to_parent(ctx, study, out: Path) -> None:
    """The study's MLflow parent run gets the best value and the report."""
    from workbench.search import study as S
    from workbench.tracking import Tracker

    parent_dir = ctx.root / "parent"
    if not (parent_dir / "tracking.json").exists():
        return  # set up on another machine: its parent run is logged there
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    tags = {f"search.n_{k.lower()}": v for k, v in S.counts(study).items()}
    if complete:
        best = study.best_trial
        tags.update({"search.best_trial": best.number, "search.best_value": round(best.value, 4)})
    with Tracker(parent_dir, experiment=ctx.experiment, run_name=f"search-{ctx.study_name}") as tracker:
        tracker.set_tags(tags)
        for f in sorted(out.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                tracker.log_artifact(f, "report")
