"""A synthetic MLflow grid with known numbers, for tests, timing and trying the analysis.

Nothing here is a result: ``make_synthetic_grid`` invents per-seed metrics around the
paper's numbers (seeded, so the same call gives the same numbers), and ``write_runs``
logs any list of ``SyntheticRun`` into an MLflow store with the workflow's layout
(``workbench.analysis.load`` docstring): one parent run tagged ``workbench.kind=grid``,
children tagged ``run``/``group``/``seed``/``method``/``backend``/``config_hash``/
``git_commit`` and ``mlflow.parentRunId``, evaluation-only children tagged
``workbench.kind=eval``. Tests edit the returned objects to plant exact values and then
compare what the tables, statistics and figures render against them. The grid's facts
(each run's method and PTS phases, the evaluations without training) come from
``experiments/`` through ``workbench.grid``, as the workflow's do.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cache

from workbench import grid as G
from workbench.analysis.paper import Paper, load_paper

MINI_BENCHMARKS = ("bench1", "bench2", "bench3", "bench4")
# The evaluations without training (experiments/grid.yaml), by the label they log as.
EXTRAS = {x.label: x for x in G.FACTS.extra_evals.values()}
EVAL_ONLY = tuple(EXTRAS)


@dataclass
class SyntheticRun:
    """One child run: tags, params and metric histories ``{metric: [(step, value), ...]}``."""

    run: str
    seed: int
    group: str
    method: str = "opd"
    kind: str = "train"  # "train" or "eval"
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def final(self, metric: str) -> float:
        """The value at the largest step (what MLflow reports as the run's metric)."""
        return max(self.history[metric])[1]


def make_synthetic_grid(
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 200,
    eval_every: int = 50,
    runs: tuple[str, ...] | None = None,
    eval_noise: float = 0.5,
    train_noise: float = 0.02,
    paper: Paper | None = None,
    rng_seed: int = 0,
) -> list[SyntheticRun]:
    """A plausible grid: every Table 3 run (or ``runs``, any grid runs) x ``seeds``, plus the eval-only runs.

    Final per-benchmark avg@k = the paper's number + N(0, ``eval_noise``) per seed (runs the
    paper has no number for borrow OPD's); ``eval/avg_at_k`` is exactly their mean, as the
    evaluator computes it. Training runs also get evaluations every ``eval_every`` steps
    (rising towards the final), and per-step ``train/*`` histories for steps 1..``steps``
    (``train/conflict_frac`` flat around 0.3; PTS runs follow docs/algorithm.md section 6's alpha).
    """
    paper = paper or load_paper()
    rng = random.Random(rng_seed)
    rows = {r["run"]: r for r in paper.table3["rows"]}
    opd = rows["opd"]["avg_at_k"]
    order = list(runs) if runs is not None else [r for r in paper.table3_order() if r not in EVAL_ONLY]
    out: list[SyntheticRun] = []
    for name in [*order, *EVAL_ONLY]:
        row = rows.get(name, {})
        base = row.get("avg_at_k", opd)
        kind = "eval" if name in EVAL_ONLY else "train"
        model = EXTRAS[name].model if name in EXTRAS else None
        if model == "student-init":
            base = {k: 0.6 * v for k, v in opd.items()}
        elif model == "teacher":
            base = {k: min(95.0, 1.6 * v) for k, v in opd.items()}
        # a prepared model is evaluated once; a run (or its checkpoint) once per seed
        for seed in seeds if kind == "train" or (name in EXTRAS and EXTRAS[name].run) else (0,):
            sr = SyntheticRun(
                run=name,
                seed=seed,
                group=row.get("group") or _group(name),
                kind=kind,
                method=_method(name),
                params=_params(name, steps),
            )
            finals = [base[b.key] + rng.gauss(0, eval_noise) for b in paper.benchmarks]
            if kind == "train":
                for s in range(eval_every, steps, eval_every) if eval_every else ():
                    frac = 0.6 + 0.4 * s / steps
                    _log_eval(sr, s, [frac * v + rng.gauss(0, eval_noise) for v in finals])
                _log_train(sr, name, steps, rng, train_noise, mean(finals))
            _log_eval(sr, steps, finals)
            out.append(sr)
    return out


def write_runs(
    tracking_uri: str, experiment: str, runs: list[SyntheticRun], *, parent_name: str = "grid", git_commit: str = "0" * 40
) -> str:
    """Log ``runs`` under one new grid parent run in ``experiment``; returns the parent's run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from workbench.tracking import ensure_experiment

    client = MlflowClient(tracking_uri)
    exp_id = ensure_experiment(client, tracking_uri, experiment)
    parent = client.create_run(exp_id, run_name=parent_name, tags={"workbench.kind": "grid"}).info.run_id
    for sr in runs:
        tags = {
            "mlflow.parentRunId": parent,
            "run": sr.run,
            "group": sr.group,
            "seed": str(sr.seed),
            "method": sr.method,
            "backend": "mini",
            "config_hash": f"{abs(hash(sr.run)) % 16**8:08x}",
            "git_commit": git_commit,
        }
        if sr.kind == "eval":
            tags["workbench.kind"] = "eval"
        child = client.create_run(exp_id, run_name=f"{sr.run}-seed{sr.seed}", tags=tags).info.run_id
        metrics = [Metric(k, float(v), 1_700_000_000_000 + s, s) for k, pts in sr.history.items() for s, v in pts]
        params = [Param(k, v) for k, v in sr.params.items()]
        for i in range(0, max(len(metrics), len(params)), 1000):
            client.log_batch(child, metrics=metrics[i : i + 1000], params=params[i : i + 100] if i == 0 else [])
        client.set_terminated(child, status=sr.status)
    client.set_terminated(parent, status="FINISHED")
    return parent


# -- helpers -----------------------------------------------------------------------------
def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _log_eval(sr: SyntheticRun, step: int, per_bench: list[float]) -> None:
    for name, v in zip(MINI_BENCHMARKS, per_bench):
        sr.history.setdefault(f"eval/{name}/avg_at_k", []).append((step, v))
        sr.history.setdefault(f"eval/{name}/pass_at_k", []).append((step, min(100.0, 1.6 * v)))
    sr.history.setdefault("eval/avg_at_k", []).append((step, mean(per_bench)))
    sr.history.setdefault("eval/pass_at_k", []).append((step, mean(min(100.0, 1.6 * v) for v in per_bench)))


def _log_train(sr: SyntheticRun, name: str, steps: int, rng: random.Random, noise: float, final_avg: float) -> None:
    window = _pts_window(name)
    top = 0.3 + final_avg / 100
    for s in range(1, steps + 1):
        f = s / steps
        m = {
            "train/reward_mean": 0.3 + (top - 0.3) * (1 - math.exp(-3 * f)) + rng.gauss(0, noise),
            "train/entropy": 1.0 - 0.4 * f + rng.gauss(0, noise),
            "train/response_length": 40 + 10 * f + rng.gauss(0, 10 * noise),
            "train/conflict_frac": 0.3 + rng.gauss(0, noise / 2),
            "train/neutral_frac": 0.1 + rng.gauss(0, noise / 2),
            "train/loss": 0.5 * math.exp(-2 * f) + rng.gauss(0, noise),
        }
        m["train/consensus_frac"] = 1 - m["train/conflict_frac"]
        if window:
            p1, p2 = window
            alpha = 1.0 if f < p1 else (0.1 + 0.9 * (1 + math.cos(math.pi * (f - p1) / (p2 - p1))) / 2 if f < p2 else 0.0)
            m["train/pts_alpha"] = alpha
            m["train/pts_kept"] = 2.0 if f < p2 else 0.0
            m["train/pts_loss"] = 0.8 * (1 - f) if f < p2 else 0.0
            if f < p2:
                m["train/pts_teacher_acc"] = min(1.0, 0.6 + 0.2 * f + rng.gauss(0, noise))
        for k, v in m.items():
            sr.history.setdefault(k, []).append((s, v))


@cache
def _config(name: str):
    """The run config of grid run ``name`` (None for a name outside the grid)."""
    from workbench.config import load_config

    return load_config(G.run_file(name)) if name in G.run_ids() else None


def _group(name: str) -> str:
    """A grid run's group (Table 3 names it for the paper's runs); ``eval`` for the others."""
    cfg = _config(name)
    return (cfg.group if cfg else None) or "eval"


def _method(name: str) -> str:
    """The run's method (a checkpoint's: its run's); ``opd`` for a prepared model or a name
    outside the grid."""
    cfg = _config((EXTRAS[name].run or "") if name in EXTRAS else name)
    return cfg.method if cfg else "opd"


def _pts_window(name: str) -> tuple[float, float] | None:
    """PTS phase ends (p1, p2) of a grid run that samples from the teacher in phases."""
    cfg = _config(name)
    return (cfg.pts.phase1_end_frac, cfg.pts.phase2_end_frac) if cfg and cfg.pts.enabled else None


def _params(name: str, steps: int) -> dict[str, str]:
    p = {"name": name, "train.steps": str(steps), "eval.k": "8"}
    if window := _pts_window(name):
        p1, p2 = window
        p.update({"pts.enabled": "true", "pts.phase1_end_frac": str(p1), "pts.phase2_end_frac": str(p2)})
    return p
