"""The ablation grid as data: run configs, scales, seeds, and the dependencies between runs.

Snakemake rules, the CLI and tests read the grid through these functions, so the
workflow itself stays declarative.

Layout::

    experiments/runs/<run>.yaml      one run config per grid run (deviations from defaults)
    experiments/scales/<scale>.yaml  per scale: world preset, default seeds, backend, and
                                     overrides applied to every run config
    experiments/grid.yaml            the evaluations without training (``EXTRA_EVALS``), the
                                     runs the paper's claims compare (``CLAIM_RUNS``), the
                                     runs the world's premises read (``PREMISE_RUNS``) and the
                                     runs each figure draws (``FIGURE_RUNS``)
    config/config.yaml               the workflow's default config (scale, seeds, runs, ...)
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from workbench.errors import UserError
from workbench.io import atomic_write_json
from workbench.methods import METHODS, Family
from workbench.registry import UnknownNameError

if TYPE_CHECKING:
    from workbench.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# The prepared models an extra evaluation may name: the mini world's (mini.runs.resolve_model)
# and the verl scale's (student, teacher).
MODELS = ("student-init", "teacher")


@dataclass(frozen=True)
class Scale:
    name: str
    backend: str
    world: str | None  # the world preset, `workbench prepare --preset` (mini backend only)
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any]
    threads: int = 1
    caveat: str | None = None  # printed at the top of the scale's report (smoke: the numbers mean nothing)
    # method family (workbench.methods: sft, pg, gkd) -> overrides for that family's runs only,
    # applied after ``overrides`` (the learning rate calibrated once per family)
    family_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # run id (experiments/runs) -> overrides for that run only, applied after its family's
    # (a run whose batch differs from the one its family's rate was calibrated at)
    run_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def run_ids(experiments: Path = EXPERIMENTS) -> list[str]:
    return sorted(p.stem for p in (experiments / "runs").glob("*.yaml"))


def run_file(run: str, experiments: Path = EXPERIMENTS) -> Path:
    path = experiments / "runs" / f"{run}.yaml"
    if not path.exists():
        raise UnknownNameError(f"unknown run {run!r}; valid: {', '.join(run_ids(experiments))}")
    return path


def scale_names(experiments: Path = EXPERIMENTS) -> list[str]:
    return sorted(p.stem for p in (experiments / "scales").glob("*.yaml"))


def check_scale(name: str, experiments: Path = EXPERIMENTS) -> str:
    """``name`` if it is a scale of ``experiments/scales``; else an error listing the valid ones."""
    if name not in scale_names(experiments):
        raise UnknownNameError(f"unknown scale {name!r}; valid: {', '.join(scale_names(experiments))}")
    return name


@cache
def load_scale(name: str, experiments: Path = EXPERIMENTS) -> Scale:
    from workbench.config import ConfigError, read_yaml

    path = experiments / "scales" / f"{check_scale(name, experiments)}.yaml"
    d = read_yaml(path, what="scale") or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a scale must be a mapping, got {type(d).__name__}")
    keys = ("backend", "world", "seeds", "overrides", "family_overrides", "run_overrides", "threads", "caveat")
    unknown = set(d) - set(keys)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(keys)}")
    families = sorted(get_args(Family))
    by_family = d.get("family_overrides") or {}
    if not isinstance(by_family, dict) or set(by_family) - set(families):
        raise ConfigError(f"{path}: family_overrides must map method families ({', '.join(families)}) to overrides")
    by_run = d.get("run_overrides") or {}
    if not isinstance(by_run, dict) or set(by_run) - set(run_ids(experiments)):
        raise ConfigError(f"{path}: run_overrides must map runs ({', '.join(run_ids(experiments))}) to overrides")
    return Scale(
        name=name,
        backend=d.get("backend", "mini"),
        world=d.get("world"),
        seeds=tuple(d.get("seeds", [0])),
        overrides=d.get("overrides") or {},
        threads=int(d.get("threads", 1)),
        caveat=d.get("caveat"),
        family_overrides=by_family,
        run_overrides=by_run,
    )


def scale_overrides(scale: Scale, family: str | None = None, run: str | None = None) -> dict[str, Any]:
    """The scale's overrides as dotted keys (what ``load_config(..., overrides)`` takes), with
    those of the method ``family``, then those of the ``run``, after them."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(scale.overrides, "")
    walk(scale.family_overrides.get(family) or {}, "")
    walk(scale.run_overrides.get(run) or {}, "")
    return out


def _run_train_section(run: str, experiments: Path) -> dict[str, Any]:
    """The ``train:`` mapping a run's YAML lists (deviations from the defaults only)."""
    from workbench.config import read_yaml

    d = read_yaml(run_file(run, experiments), what="run config") or {}
    return d.get("train") or {}


def init_from(run: str, experiments: Path = EXPERIMENTS) -> str | None:
    """The grid run whose checkpoint this run starts from (time-separated stage 2), if any."""
    return _run_train_section(run, experiments).get("init_from")


def init_inputs(run: str, runs_root: str, seed: int | str) -> list[str]:
    """Files a run needs from other runs: stage 1's outputs for a time-separated stage 2."""
    parent = init_from(run)
    return [f"{runs_root}/{parent}/seed{seed}/eval.json"] if parent else []


# -- experiments/grid.yaml ------------------------------------------------------------------
@dataclass(frozen=True)
class ExtraEval:
    """An evaluation without training: a prepared ``model``, or ``run``'s checkpoint at ``at_frac``."""

    name: str  # file-safe: results/<scale>/evals/<name>/, Snakemake's {extra}
    label: str  # the run it logs as (MLflow tag ``run``)
    model: str | None = None
    run: str | None = None
    at_frac: float | None = None


@dataclass(frozen=True)
class GridFacts:
    extra_evals: dict[str, ExtraEval]
    claims: dict[str, tuple[str, ...]]  # claim part -> the runs it compares
    premises: dict[str, tuple[str, ...]]  # premise -> the runs (or extra-eval labels) it reads
    figures: dict[str, tuple[str, ...]]  # figure -> the runs it draws


@cache
def load_facts(experiments: Path = EXPERIMENTS) -> GridFacts:
    """``experiments/grid.yaml``, checked at import, so that a wrong id stops the workflow, the
    CLI and the analysis alike; an error names the file, the key and what is valid."""
    path = experiments / "grid.yaml"
    runs = run_ids(experiments)

    def bad(key: str, msg: str) -> UserError:
        return UserError(f"{path}: {key}: {msg}")

    def mapping(key: str, v: Any) -> dict[str, Any]:
        if not isinstance(v, dict) or not v:
            raise bad(key, f"must be a non-empty mapping, not {v!r}")
        return {str(k): x for k, x in v.items()}

    def ids(key: str, v: Any, valid: list[str]) -> tuple[str, ...]:
        if not isinstance(v, list) or not v or not all(isinstance(r, str) for r in v):
            raise bad(key, f"must be a non-empty list of run ids, not {v!r}")
        for r in v:
            if r not in valid:
                raise UnknownNameError(f"{path}: {key}: unknown run {r!r}; valid: {', '.join(valid)}")
        return tuple(v)

    def extra(name: str, x: Any) -> ExtraEval:
        key = f"extra_evals.{name}"
        x = mapping(key, x)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise bad(key, "the name is a path and a wildcard: letters, digits, '_', '.', '-' only")
        if set(x) == {"label", "model"}:
            if x["model"] not in MODELS:
                raise bad(f"{key}.model", f"unknown model {x['model']!r}; valid: {', '.join(MODELS)}")
            return ExtraEval(name, str(x["label"]), model=x["model"])
        if set(x) != {"label", "run", "at_frac"}:
            raise bad(key, f"keys {sorted(x)}; valid: label and model, or label, run and at_frac")
        (run,) = ids(f"{key}.run", [x["run"]], runs)
        # the checkpoint exists only if the run keeps it (mini and verl alike)
        if x["at_frac"] not in (_run_train_section(run, experiments).get("keep_checkpoints_at") or ()):
            raise bad(f"{key}.at_frac", f"{run}'s config keeps no checkpoint at {x['at_frac']} (train.keep_checkpoints_at)")
        return ExtraEval(name, str(x["label"]), run=run, at_frac=float(x["at_frac"]))

    from workbench.config import read_yaml

    d = mapping("top level", read_yaml(path, what="grid facts"))
    if set(d) != {"extra_evals", "claims", "premises", "figures"}:
        raise bad("top level", f"keys {sorted(d)}; valid: extra_evals, claims, premises, figures")
    extras = {name: extra(name, x) for name, x in mapping("extra_evals", d["extra_evals"]).items()}
    labels = [x.label for x in extras.values()]
    return GridFacts(
        extra_evals=extras,
        claims={k: ids(f"claims.{k}", v, runs) for k, v in mapping("claims", d["claims"]).items()},
        premises={k: ids(f"premises.{k}", v, runs + labels) for k, v in mapping("premises", d["premises"]).items()},
        figures={k: ids(f"figures.{k}", v, runs + labels) for k, v in mapping("figures", d["figures"]).items()},
    )


FACTS = load_facts()
# Evaluated, not trained (docs/algorithm.md section 8): file-safe name -> the label the
# evaluation carries (MLflow tag ``run``).
EXTRA_EVALS = {name: x.label for name, x in FACTS.extra_evals.items()}
EXTRA_EVALS_FILES = tuple(EXTRA_EVALS)
CLAIM_RUNS = FACTS.claims  # claim part (workbench.analysis.stats) -> the runs it compares
PREMISE_RUNS = FACTS.premises  # premise (workbench.analysis.premises) -> the runs it reads
FIGURE_RUNS = FACTS.figures  # figure (workbench.analysis.figures) -> the runs it draws
# The one figure that reads benchmark accuracy during training (``eval/...`` history).
OVER_TRAINING_FIGURE = "fig6_benchmarks_over_training"


def evaluates_during_training(run: str) -> bool:
    """Whether a grid run keeps its scale's evaluations during training: only the runs the
    accuracy-over-training figure draws need them; every other run evaluates its final
    model only (the evaluations never touch training's random streams)."""
    return run in FIGURE_RUNS[OVER_TRAINING_FIGURE]


#: An on-policy step samples rollouts and scores them with the teacher before its update; an
#: SFT-family step only updates: about 5 SFT steps each on world v2 (1.004 s / 0.206 s,
#: benchmarks/results/grid_speed.md).
ON_POLICY_STEP_COST = 5


@cache  # Snakemake asks for every job's priority, and each asks for several runs' costs
def train_cost(run: str, scale: str) -> int:
    """A grid run's expected training time at ``scale``, in SFT steps (a rough estimate)."""
    cfg = resolve_config(run_file(run), scale=scale)
    per_step = 1 if METHODS.get(cfg.method).family == "sft" else ON_POLICY_STEP_COST
    return cfg.train.total_steps * per_step


def train_priority(run: str, scale: str) -> int:
    """Snakemake priority of a run's training job: the longest chain of training it starts
    (its own cost, plus the longest run that starts from its checkpoint), so that the
    longest jobs start first and the cores are not left with one long job at the end."""
    after = [train_cost(r, scale) for r in run_ids() if init_from(r) == run]
    return train_cost(run, scale) + max(after, default=0)


def extra_evals(runs: list[str]) -> list[str]:
    """The extra evaluations a grid subset needs (a checkpoint's only when its run is trained)."""
    return [e for e, x in FACTS.extra_evals.items() if x.run is None or x.run in runs]


def extra_eval_inputs(extra: str, runs_root: str, seed: int | str) -> list[str]:
    """Files an extra evaluation needs: its run's outputs, for a checkpoint of that run."""
    run = FACTS.extra_evals[extra].run
    return [f"{runs_root}/{run}/seed{seed}/eval.json"] if run else []


def extra_eval_args(extra: str, runs_root: str, seed: int | str) -> str:
    """The MODEL argument and options of ``workbench eval`` for an extra evaluation."""
    x = FACTS.extra_evals[extra]
    if x.run:
        return f"{runs_root}/{x.run}/seed{seed} --at-frac {x.at_frac} --name '{x.label}'"
    return f"{x.model} --name {x.label}"


# -- a grid's runs: a config at a scale, the grid file, evaluation-only runs ------------------
# Backend-neutral: the mini backend's train/eval verbs and the verl backend both use them.
Overrides = Iterable[str] | Mapping[str, Any]


def resolve_config(config: str | Path | RunConfig, *, scale: str | None = None, overrides: Overrides = ()) -> RunConfig:
    """A run config with the scale's overrides (then those of the run's method family, then
    those of the run itself), then ``overrides`` (``--set``), applied."""
    from workbench.config import RunConfig, load_config

    listed = listed_overrides(overrides)
    layered: dict[str, Any] = {}
    if scale is not None:
        s = load_scale(scale)
        base = config.with_overrides(listed) if isinstance(config, RunConfig) else load_config(config, listed)
        layered.update({**scale_overrides(s, METHODS.get(base.method).family, base.name), "backend": s.backend})
    layered.update(listed)
    return config.with_overrides(layered) if isinstance(config, RunConfig) else load_config(config, layered)


def read_grid(path: str | Path | None) -> dict[str, Any]:
    """The grid file written by ``start_grid`` (experiment and parent MLflow run), or {}."""
    if not path:
        return {}
    try:
        grid = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(
            f"no grid file at {path}; create it with `workbench grid-start --scale SCALE --out {path}`, or leave out --grid"
        ) from None
    except IsADirectoryError:
        raise UserError(f"grid file {path} is a directory; pass the file `workbench grid-start --out` wrote") from None
    except ValueError as e:
        raise UserError(f"grid file {path} is unreadable ({e}); delete it and rerun `workbench grid-start`") from None
    if not isinstance(grid, dict) or not {"experiment", "parent_run_id"} <= grid.keys():
        raise UserError(f"grid file {path} lacks experiment/parent_run_id; delete it and rerun `workbench grid-start`")
    return grid


def start_grid(out: str | Path, *, experiment: str, scale: str) -> dict[str, Any]:
    """Create the grid's parent MLflow run once; later calls return the recorded one."""
    out = Path(out)
    if out.exists():
        return read_grid(out)
    from workbench.tracking import Tracker

    # The parent run's own directory keeps its tracking state beside the grid file.
    with Tracker(
        out.with_suffix(".parent"),
        experiment=experiment,
        run_name=f"grid-{scale}",
        tags={"workbench.kind": "grid", "scale": scale},
    ) as tracker:
        grid = {"experiment": experiment, "parent_run_id": tracker.run_id, "scale": scale}
    atomic_write_json(out, grid)
    return grid


def log_eval_run(
    track_dir: str | Path,
    grid: Mapping[str, Any],
    *,
    label: str,
    seed: int,
    backend: str,
    metrics: Mapping[str, float],
    result: Mapping[str, Any],
    config: Mapping[str, Any],
    tracking_uri: str | None = None,
) -> str:
    """Log an evaluation-only model (``student-init``, ``teacher``, ``sgopd@90%``) as a child run
    of the grid, with the tags the analysis reads (``run=<label>``, ``seed``,
    ``workbench.kind=eval``, ``group=extra``, ``backend``); returns its MLflow run id.
    ``track_dir`` keeps the run's tracking state; an evaluation is redone whole, so a
    previous attempt's state is dropped and a fresh MLflow run made (the latest one wins)."""
    from workbench.tracking import Tracker

    shutil.rmtree(track_dir, ignore_errors=True)
    tags = {"run": label, "seed": str(seed), "workbench.kind": "eval", "group": "extra", "backend": backend}
    with Tracker(
        track_dir,
        experiment=grid["experiment"],
        run_name=f"{label}-seed{seed}",
        tags=tags,
        config=config,
        parent_run_id=grid["parent_run_id"],
        tracking_uri=tracking_uri,
    ) as tracker:
        tracker.log_metrics(metrics, step=0)
        tracker.commit(0)
        tracker.log_dict(dict(result), "eval.json")
    return tracker.run_id


def listed_overrides(overrides: Overrides) -> dict[str, Any]:
    """``--set key=value`` strings or a mapping, as one dotted-key mapping."""
    from workbench.config import split_override

    return dict(overrides) if isinstance(overrides, Mapping) else dict(split_override(o) for o in overrides)
