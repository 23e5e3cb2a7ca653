"""The ablation grid as data: run configs, scales, seeds, and the dependencies between runs.

Snakemake rules, the CLI and tests read the grid through these functions, so the
workflow itself stays declarative.

Layout::

    experiments/runs/<run>.yaml      one run config per grid run (deviations from defaults)
    experiments/scales/<scale>.yaml  per scale: world preset, default seeds, backend, and
                                     overrides applied to every run config
    experiments/workflow.yaml        the workflow's default config (scale, seeds, runs, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from workbench.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# Evaluated, not trained (docs/algorithm.md section 8): the world's two models and a checkpoint.
# File-safe name -> the label the evaluation carries (MLflow tag ``run``).
EXTRA_EVALS = {"student-init": "student-init", "teacher": "teacher", "sgopd-at90": "sgopd@90%"}
EXTRA_EVALS_FILES = tuple(EXTRA_EVALS)


@dataclass(frozen=True)
class Scale:
    name: str
    backend: str
    world: str | None  # the `workbench prepare --scale` preset (mini backend only)
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any]
    threads: int = 1
    caveat: str | None = None  # printed at the top of the scale's report (smoke: the numbers mean nothing)


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
    unknown = set(d) - {"backend", "world", "seeds", "overrides", "threads", "caveat"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; valid: backend, world, seeds, overrides, threads, caveat")
    return Scale(
        name=name,
        backend=d.get("backend", "mini"),
        world=d.get("world"),
        seeds=tuple(d.get("seeds", [0])),
        overrides=d.get("overrides") or {},
        threads=int(d.get("threads", 1)),
        caveat=d.get("caveat"),
    )


def scale_overrides(scale: Scale) -> dict[str, Any]:
    """The scale's overrides as dotted keys (what ``load_config(..., overrides)`` takes)."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(scale.overrides, "")
    return out


def run_config(run: str, scale: str, seed: int, experiments: Path = EXPERIMENTS):
    """The validated config of one grid run at one scale and seed."""
    from workbench.config import load_config

    s = load_scale(scale, experiments)
    return load_config(run_file(run, experiments), {**scale_overrides(s), "seed": seed, "backend": s.backend})


def init_from(run: str, experiments: Path = EXPERIMENTS) -> str | None:
    """The grid run whose checkpoint this run starts from (time-separated stage 2), if any."""
    from workbench.config import read_yaml

    d = read_yaml(run_file(run, experiments), what="run config") or {}
    return (d.get("train") or {}).get("init_from")


def init_inputs(run: str, runs_root: str, seed: int | str) -> list[str]:
    """Files a run needs from other runs: stage 1's outputs for a time-separated stage 2."""
    parent = init_from(run)
    return [f"{runs_root}/{parent}/seed{seed}/eval.json"] if parent else []


def extra_evals(runs: list[str]) -> list[str]:
    """The extra evaluations a grid subset needs (sgopd@90% only when sgopd is trained)."""
    return [e for e in EXTRA_EVALS if e != "sgopd-at90" or "sgopd" in runs]


def extra_eval_inputs(extra: str, runs_root: str, seed: int | str) -> list[str]:
    return [f"{runs_root}/sgopd/seed{seed}/eval.json"] if extra == "sgopd-at90" else []


def extra_eval_args(extra: str, runs_root: str, seed: int | str) -> str:
    """The MODEL argument and options of ``workbench eval`` for an extra evaluation."""
    label = EXTRA_EVALS[extra]
    if extra == "sgopd-at90":
        return f"{runs_root}/sgopd/seed{seed} --at-frac 0.9 --name '{label}'"
    return f"{extra} --name {label}"
