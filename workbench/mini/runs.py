"""What the ``train``, ``eval`` and ``grid-start`` verbs do on the mini backend: config ->
world -> tracked run -> results.

The CLI, Snakemake rules, Optuna trials and tests all come through here. What is not
mini-specific (a config at a scale, the grid file, the evaluation-only MLflow run) is in
``workbench.grid``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from workbench.config import RunConfig, load_config, parse_config
from workbench.errors import UserError
from workbench.grid import Overrides, listed_overrides, log_eval_run, read_grid, resolve_config
from workbench.io import atomic_write_json
from workbench.status import run_label, status


def train_run(
    config: str | Path | RunConfig,
    *,
    run_dir: str | Path,
    world: str | Path,
    overrides: Overrides = (),
    scale: str | None = None,
    experiment: str = "sgopd-mini",
    parent_run_id: str | None = None,
    evaluate_final: bool = True,
    tags: dict | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    restart: bool = False,
) -> dict | None:
    """Train (or resume) one run and evaluate its final model; returns the evaluation.

    ``tags`` are added to the MLflow run's standard tags; ``on_eval(step, result)`` sees each
    intermediate evaluation and may raise ``tracking.StopRun`` to end the run KILLED.
    Nothing is created before the inputs (config, world, ``train.init_from``) check out. A
    run directory holding a run of another config is refused, never replaced; ``restart``
    discards what the directory holds (its MLflow run stays) and trains afresh.
    """
    from workbench.tracking import Tracker, load_history, lock_run_dir, standard_tags

    cfg = resolve_config(config, scale=scale, overrides=overrides)
    if cfg.backend != "mini":
        raise UserError(
            f"backend {cfg.backend!r}: `workbench train` runs the mini backend; "
            "verl jobs are launched with `workbench verl-launch` (docs/verl.md)"
        )
    from workbench.mini.trainer import train

    run_dir = Path(run_dir)
    w = open_world(world)
    _check_train_inputs(cfg, run_dir, w)
    done = run_dir / "eval.json"
    # The lock first: another process may be training in this directory right now.
    fresh = not run_dir.exists()
    if run_dir.is_dir():
        _check_holds_a_run(run_dir)  # before the lock file goes in
    lock = lock_run_dir(run_dir)
    try:
        _claim_run_dir(run_dir, cfg, restart=restart)
        if evaluate_final and done.exists() and (run_dir / "final").exists():
            try:
                finished = json.loads(done.read_text())
            except ValueError as e:
                status(f"warning: {done} is unreadable ({e}); evaluating the final model again")
            else:
                status(f"{run_label(cfg, run_dir)}: already finished ({done}), nothing to do")
                return finished  # finished earlier: a rerun changes nothing
        with Tracker(
            run_dir,
            experiment=experiment,
            run_name=f"{cfg.name or run_dir.name}-seed{cfg.seed}",
            tags={**standard_tags(cfg), **(tags or {})},
            config=cfg.to_dict(),
            parent_run_id=parent_run_id,
            lock=lock,
        ) as tracker:
            final = train(cfg, run_dir, world, tracker, on_eval=on_eval)
            if not evaluate_final:
                return None
            status(f"{run_label(cfg, run_dir)}: evaluating the final model")
            result = _evaluate(final, w, cfg)
            # An earlier attempt may have logged the evaluation before it was stopped.
            last = cfg.train.total_steps
            if not any("eval/avg_at_k" in r and r["step"] == last for r in load_history(run_dir)):
                _log_eval(tracker, result, last)
            if (run_dir / "casestudy.json").exists():
                tracker.log_artifact(run_dir / "casestudy.json")
        # eval.json marks the run done, for reruns and Snakemake: written once MLflow has it FINISHED.
        atomic_write_json(done, result)
        status(f"{run_label(cfg, run_dir)}: done, avg@{result['k']} {100 * result['avg_at_k']:.2f} ({done})")
        return result
    finally:
        lock.close()
        if fresh:
            _remove_if_unused(run_dir)


def _remove_if_unused(run_dir: Path) -> None:
    """Remove a run directory this call created where nothing but its lock got in (the
    MLflow store failed to open, a stop came first): a failed start leaves nothing behind."""
    from workbench.tracking import LOCK_FILE

    if [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
        (run_dir / LOCK_FILE).unlink()
        run_dir.rmdir()


def check_world(path: str | Path) -> None:
    """A ``UserError`` unless ``path`` holds a prepared world (cheap: imports no torch)."""
    if not (Path(path) / "manifest.json").is_file():
        raise UserError(
            f"no prepared world at {path} (no manifest.json); build it with "
            f"`workbench prepare --preset PRESET --out {path}`, or pass --world"
        )


def open_world(path: str | Path):
    """The prepared world at ``path`` (``workbench.mini.world.World``), or a ``UserError``."""
    from workbench.mini.world import World

    check_world(path)
    return World.open(path)


def _check_train_inputs(cfg: RunConfig, run_dir: Path, world) -> None:
    """What would otherwise fail after the run directory and MLflow run exist."""
    from workbench.mini.trainer import resolve_init

    for field, names, valid in (
        ("train.sources", cfg.train.sources, world.sources),
        ("eval.benchmarks", cfg.eval.benchmarks, [*world.benchmark_names, "validation"]),
    ):
        unknown = [n for n in names or () if n not in valid]
        if unknown:
            raise UserError(f"{field}: {unknown} not in the world at {world.root}; valid: {valid}")
    try:
        resolve_init(cfg, run_dir, world)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


# What a run directory holds (workbench.mini.trainer): anything else is not ours to mix or delete.
_RUN_MARKERS = {"tracking.json", "config.yaml", "metrics.jsonl", "checkpoints"}


def _check_holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run; False where it is empty, a ``UserError`` where it holds
    something else. Hidden entries (the lock, temp files of a crash) do not count."""
    visible = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if visible and not _RUN_MARKERS & set(visible):
        raise UserError(
            f"{run_dir} is not empty and holds no run ({', '.join(visible[:3])}): training there "
            "would mix a run into it; pick an empty or new --run-dir"
        )
    return bool(visible)


def _claim_run_dir(run_dir: Path, cfg: RunConfig, *, restart: bool) -> None:
    """Check (under the run's lock) that ``run_dir`` is empty or holds this run; ``restart``
    empties it."""
    from workbench.tracking import LOCK_FILE

    if not _check_holds_a_run(run_dir):
        return
    if restart:
        for p in run_dir.iterdir():
            if p.name != LOCK_FILE:  # the lock stays: the directory is ours until we are done
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        status(f"{run_label(cfg, run_dir)}: --restart: discarded the earlier run in {run_dir}; training afresh")
        return
    previous = run_dir / "config.yaml"
    if not previous.exists():
        return
    try:
        old = load_config(previous).config_hash()
    except UserError as e:
        raise UserError(
            f"{previous} is unreadable ({e}); restore it, or pass --restart to discard the run in {run_dir} and train afresh"
        ) from None
    if old != cfg.config_hash():
        # A different config is a different run: resuming would mix two experiments, and
        # replacing it would lose a result (a forgotten --scale is enough to get here).
        raise UserError(
            f"{run_dir} holds a run of another config (hash {old}; this one is {cfg.config_hash()}); "
            "nothing was changed: rerun with its config, pick another --run-dir, or pass --restart "
            "to discard that run and train afresh"
        )


def resolve_model(model: str, world_root: Path, at_frac: float | None = None) -> Path:
    """A model directory from ``student-init`` / ``teacher``, a model or run directory.

    With ``at_frac``, ``model`` is a run directory and the checkpoint at that fraction of
    its steps is used (``sgopd@90%`` is ``--at-frac 0.9``).
    """
    named = {"student-init": world_root / "student", "teacher": world_root / "teacher"}
    if model in named:
        return named[model]
    path = Path(model)
    if at_frac is not None:
        if not (path / "config.yaml").exists():
            raise UserError(f"--at-frac needs a run directory, and {path} holds no config.yaml")
        cfg = load_config(path / "config.yaml")
        step = round(at_frac * cfg.train.total_steps)
        path = path / "checkpoints" / f"step-{step:06d}"
        if not path.exists():
            raise UserError(
                f"no checkpoint at {at_frac:.0%} of the run's steps: {path} (list the fraction in train.keep_checkpoints_at)"
            )
    if not path.exists():
        raise UserError(f"no model at {path}; give a model directory, a run directory with --at-frac, or one of {sorted(named)}")
    return path


def eval_model(
    model: str,
    *,
    world: str | Path,
    out: str | Path,
    config: str | None = None,
    overrides: Overrides = (),
    scale: str | None = None,
    at_frac: float | None = None,
    name: str | None = None,
    seed: int | None = None,
    grid: str | Path | None = None,
) -> dict:
    """Evaluate a model, write the results JSON, and (with ``grid``) log an MLflow child run.

    ``name`` labels the evaluation (``student-init``, ``teacher``, ``sgopd@90%``); its run
    carries the tags ``run=<name>``, ``seed`` and ``workbench.kind=eval``.
    """
    # Every input is checked before the evaluation runs or anything is written.
    w = open_world(world)
    extra = {} if seed is None else {"seed": seed}
    cfg = resolve_config(config if config else parse_config({}), scale=scale, overrides={**listed_overrides(overrides), **extra})
    model_path = resolve_model(model, w.root, at_frac)
    g = read_grid(grid)
    out = Path(out)
    track_dir = out.with_suffix(".mlflow")
    _check_output(out, track_dir if g else None)
    what = f"eval {name or model} seed{cfg.seed}"
    status(f"{what}: evaluating")
    result = _evaluate(model_path, w, cfg)
    result["label"] = name or model
    atomic_write_json(out, result)
    if g:
        from workbench.algo.evaluation import eval_metrics

        log_eval_run(
            track_dir,
            g,
            label=name or Path(model).name,
            seed=cfg.seed,
            backend=cfg.backend,
            metrics=eval_metrics(result),
            result=result,
            config={"eval": cfg.eval.model_dump(mode="json"), "model": str(model)},
        )
    _print_eval(result)
    status(f"{what}: done, avg@{result['k']} {100 * result['avg_at_k']:.2f} ({out})")
    return result


def _check_output(out: Path, track_dir: Path | None) -> None:
    """``out`` can be written, and ``track_dir`` (replaced by a rerun) holds only tracking files."""
    from workbench.tracking import METRICS_FILE, STATE_FILE

    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path for the results JSON")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}; pick a writable --out") from None
    if track_dir is not None and track_dir.exists():
        other = (
            sorted({p.name for p in track_dir.iterdir() if not p.name.startswith(".")} - {METRICS_FILE, STATE_FILE})
            if track_dir.is_dir()
            else [track_dir.name]
        )
        if other:
            raise UserError(
                f"{track_dir} (this evaluation's tracking directory, replaced on a rerun) holds "
                f"other files ({', '.join(other[:3])}); move them or pick another --out"
            )


def _evaluate(model_path: Path, world, cfg: RunConfig) -> dict:
    import torch

    from workbench.mini.evaluate import evaluate
    from workbench.mini.models import load_model

    model = load_model(model_path).to("cuda" if torch.cuda.is_available() else "cpu")
    e = cfg.eval
    return evaluate(
        model,
        world.benchmarks(e.benchmarks),
        n_samples=e.n_samples,
        k=e.k,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=e.max_new_tokens or world.max_new_tokens(),
        seed=cfg.seed,
    )


def _log_eval(tracker, result: dict, step: int) -> None:
    from workbench.algo.evaluation import eval_metrics

    tracker.log_metrics(eval_metrics(result), step=step)
    tracker.commit(step)
    tracker.log_dict(result, "eval.json")


def _print_eval(result: dict) -> None:
    k = result["k"]
    for b, r in [*result["benchmarks"].items(), ("AVG", result)]:
        print(f"{b:12s} avg@{k} {100 * r['avg_at_k']:6.2f}  pass@{k} {100 * r['pass_at_k']:6.2f}")
