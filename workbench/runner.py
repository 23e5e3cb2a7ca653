"""What the ``train``, ``eval`` and ``grid-start`` verbs do: config -> backend -> tracked run -> results.

The CLI, Snakemake rules, Optuna trials and tests all come through here.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from workbench.config import RunConfig, load_config, parse_config
from workbench.io import atomic_write_json

Overrides = Iterable[str] | Mapping[str, Any]


def resolve_config(config: str | Path | RunConfig, *, scale: str | None = None, overrides: Overrides = ()) -> RunConfig:
    """A run config with the scale's overrides, then ``overrides`` (``--set``), applied."""
    layered: dict[str, Any] = {}
    if scale is not None:
        from workbench.grid import load_scale, scale_overrides

        s = load_scale(scale)
        layered.update({**scale_overrides(s), "backend": s.backend})
    layered.update(_listed(overrides))
    return config.with_overrides(layered) if isinstance(config, RunConfig) else load_config(config, layered)


def read_grid(path: str | Path | None) -> dict[str, Any]:
    """The grid file written by ``start_grid`` (experiment and parent MLflow run), or {}."""
    return json.loads(Path(path).read_text()) if path else {}


def start_grid(out: str | Path, *, experiment: str, scale: str) -> dict[str, Any]:
    """Create the grid's parent MLflow run once; later calls return the recorded one."""
    out = Path(out)
    if out.exists():
        return read_grid(out)
    from workbench.tracking import Tracker

    # The parent run's own directory keeps its tracking state beside the grid file.
    with Tracker(out.with_suffix(".parent"), experiment=experiment, run_name=f"grid-{scale}",
                 tags={"workbench.kind": "grid", "scale": scale}) as tracker:
        grid = {"experiment": experiment, "parent_run_id": tracker.run_id, "scale": scale}
    atomic_write_json(out, grid)
    return grid


def train_run(config: str | Path | RunConfig, *, run_dir: str | Path, world: str | Path,
              overrides: Overrides = (), scale: str | None = None, experiment: str = "sgopd-mini",
              parent_run_id: str | None = None, evaluate_final: bool = True, tags: dict | None = None,
              on_eval: Callable[[int, dict], None] | None = None) -> dict | None:
    """Train (or resume) one run and evaluate its final model; returns the evaluation.

    ``tags`` are added to the MLflow run's standard tags; ``on_eval(step, result)`` sees each
    intermediate evaluation and may raise ``tracking.StopRun`` to end the run KILLED.
    """
    from workbench.tracking import Tracker, load_history, standard_tags

    cfg = resolve_config(config, scale=scale, overrides=overrides)
    if cfg.backend != "mini":
        raise SystemExit(f"backend {cfg.backend!r}: `workbench train` runs the mini backend; "
                         "verl jobs are launched with `workbench verl-launch` (docs/verl.md)")
    from workbench.mini.trainer import World, train

    run_dir = Path(run_dir)
    done = run_dir / "eval.json"
    previous = run_dir / "config.yaml"
    if previous.exists() and load_config(previous).config_hash() != cfg.config_hash():
        # A different config is a different run: resuming would mix two experiments.
        print(f"{run_dir}: the run config changed since this directory was trained; starting afresh",
              file=sys.stderr)
        shutil.rmtree(run_dir)
    if evaluate_final and done.exists() and (run_dir / "final").exists():
        return json.loads(done.read_text())  # finished earlier: a rerun changes nothing
    with Tracker(run_dir, experiment=experiment, run_name=f"{cfg.name or run_dir.name}-seed{cfg.seed}",
                 tags={**standard_tags(cfg), **(tags or {})}, config=cfg.to_dict(),
                 parent_run_id=parent_run_id) as tracker:
        final = train(cfg, run_dir, world, tracker, on_eval=on_eval)
        if not evaluate_final:
            return None
        result = _evaluate(final, World.open(world), cfg)
        atomic_write_json(run_dir / "eval.json", result)
        # An earlier attempt may have logged the evaluation before it was stopped.
        last = cfg.train.total_steps
        if not any("eval/avg_at_k" in r and r["step"] == last for r in load_history(run_dir)):
            _log_eval(tracker, result, last)
        if (run_dir / "casestudy.json").exists():
            tracker.log_artifact(run_dir / "casestudy.json")
        return result


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
        cfg = load_config(path / "config.yaml")
        step = round(at_frac * cfg.train.total_steps)
        path = path / "checkpoints" / f"step-{step:06d}"
        if not path.exists():
            raise SystemExit(f"no checkpoint at {at_frac:.0%} of the run's steps: {path} "
                             "(list the fraction in train.keep_checkpoints_at)")
    if not path.exists():
        raise SystemExit(f"no model at {path}")
    return path


def eval_model(model: str, *, world: str | Path, out: str | Path, config: str | None = None,
               overrides: Overrides = (), scale: str | None = None, at_frac: float | None = None,
               name: str | None = None, seed: int | None = None, grid: str | Path | None = None) -> dict:
    """Evaluate a model, write the results JSON, and (with ``grid``) log an MLflow child run.

    ``name`` labels the evaluation (``student-init``, ``teacher``, ``sgopd@90%``); its run
    carries the tags ``run=<name>``, ``seed`` and ``workbench.kind=eval``.
    """
    from workbench.mini.trainer import World

    w = World.open(world)
    extra = {} if seed is None else {"seed": seed}
    cfg = resolve_config(config if config else parse_config({}), scale=scale, overrides={**_listed(overrides), **extra})
    result = _evaluate(resolve_model(model, w.root, at_frac), w, cfg)
    result["label"] = name or model
    atomic_write_json(out, result)
    g = read_grid(grid)
    if g:
        from workbench.tracking import Tracker

        label = name or Path(model).name
        track_dir = Path(out).with_suffix(".mlflow")
        shutil.rmtree(track_dir, ignore_errors=True)  # an evaluation is redone whole: a fresh MLflow run
        tags = {"run": label, "seed": str(cfg.seed), "workbench.kind": "eval", "group": "extra", "backend": cfg.backend}
        with Tracker(track_dir, experiment=g["experiment"], run_name=f"{label}-seed{cfg.seed}",
                     tags=tags, config={"eval": cfg.eval.model_dump(mode="json"), "model": str(model)},
                     parent_run_id=g["parent_run_id"]) as tracker:
            _log_eval(tracker, result, 0)
    _print_eval(result)
    return result


def _listed(overrides: Overrides) -> dict[str, Any]:
    """``--set key=value`` strings or a mapping, as one dotted-key mapping."""
    from workbench.config import split_override

    return dict(overrides) if isinstance(overrides, Mapping) else dict(split_override(o) for o in overrides)


def _evaluate(model_path: Path, world, cfg: RunConfig) -> dict:
    import torch

    from workbench.mini.evaluate import evaluate
    from workbench.mini.models import load_model

    model = load_model(model_path).to("cuda" if torch.cuda.is_available() else "cpu")
    e = cfg.eval
    return evaluate(model, world.benchmarks(e.benchmarks), n_samples=e.n_samples, k=e.k,
                    temperature=e.temperature, top_p=e.top_p,
                    max_new_tokens=e.max_new_tokens or world.max_new_tokens(), seed=cfg.seed)


def _log_eval(tracker, result: dict, step: int) -> None:
    from workbench.mini.evaluate import eval_metrics

    tracker.log_metrics(eval_metrics(result), step=step)
    tracker.commit(step)
    tracker.log_dict(result, "eval.json")


def _print_eval(result: dict) -> None:
    k = result["k"]
    for b, r in [*result["benchmarks"].items(), ("AVG", result)]:
        print(f"{b:12s} avg@{k} {100 * r['avg_at_k']:6.2f}  pass@{k} {100 * r['pass_at_k']:6.2f}")
