"""Is the miniature world in the paper's regime? ``evaluate_premises(runs, manifest)``.

The premises and their thresholds are fixed in docs/mini-world.md ("The paper's regime:
premises a world must meet"), written down before the world was built; this module
restates the thresholds as constants and checks them. None of them mentions the gate, PTS
or SG-OPD, so the claims under test (``workbench.analysis.stats``) stay free to fail.

Where each fact comes from:

- world-level (P1a, the greedy part of P1c, P2b, P4b): the world's manifest, written by
  ``workbench prepare`` (the teacher's accuracy report, and ``premises``, the probe of
  ``workbench.mini.premises``); no manifest (a verl scale) leaves them not measured;
- run-level (P1b, P1c, P2a, P3a, P3b, P4a): tracked metrics only (``eval/...`` final values,
  the ``train/conflict_frac`` history) of the runs ``premises`` in ``experiments/grid.yaml``
  names (``workbench.grid.PREMISE_RUNS``).

Status. ``holds`` / ``fails`` by the threshold as the premise states it: on every seed
(P1b, P1c, P3a, P4a) or on the mean over seeds (P2a, P3b); a premise is a precondition of
the world, checked as written, not a claim with a verdict from an interval. The intervals
(the report's percentile bootstrap) and per-seed values are printed beside it. ``not
measured`` when its data are missing, with the reason; a premise with parts fails when a
measured part fails, else is not measured when a part lacks its data.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.analysis import stats as S
from workbench.analysis.paper import Paper, load_paper
from workbench.errors import UserError
from workbench.grid import PREMISE_RUNS

HOLDS, FAILS, NOT_MEASURED = "holds", "fails", "not measured"
# Thresholds of docs/mini-world.md (fixed 2026-12-02, before any run).
TEACHER_GREEDY_MIN = 0.80  # P1a
STUDENT_RATIO = (0.3, 0.6)  # P2a: student-init AVG avg@k / teacher AVG avg@k
WELL_FORMED_MIN = 0.99  # P2b
OPD_OVER_SEQKD_PP = 2.0  # P3a
CONFLICT_AT_INIT_MIN = 0.20  # P4a
TEACHER_WRONG_STUDENT_RIGHT_MIN = 0.05  # P4b
NO_MANIFEST = "no world manifest given"


@dataclass(frozen=True)
class Premise:
    id: str
    statement: str
    threshold: str
    measured: str  # the measured values, with intervals and per-seed values; or why not
    status: str  # HOLDS, FAILS or NOT_MEASURED


@dataclass(frozen=True)
class _Part:
    status: str
    text: str  # the measurement, or the reason it is missing


def read_manifest(world_manifest: str | Path | Mapping | None) -> dict | None:
    """The world's manifest from a path (``<world>/manifest.json``) or as given; None stays None."""
    if world_manifest is None or isinstance(world_manifest, Mapping):
        return None if world_manifest is None else dict(world_manifest)
    path = Path(world_manifest)
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no world manifest at {path}; give the manifest.json that `workbench prepare` wrote") from None
    except (OSError, ValueError) as e:
        raise UserError(f"world manifest {path} is unreadable ({e})") from None
    if not isinstance(man, dict):
        raise UserError(f"world manifest {path} is not a JSON object")
    return man


def evaluate_premises(
    runs,
    manifest: dict | None,
    *,
    paper: Paper | None = None,
    n_resamples: int = S.N_RESAMPLES,
    seed: int = S.RNG_SEED,
) -> list[Premise]:
    """Check the world's premises P1a-P4b on ``runs`` (a ``Runs``) and the world's ``manifest``."""
    paper = paper or load_paper()
    kw = {"n_resamples": n_resamples, "seed": seed}
    teacher_greedy = _greedy_part(manifest)
    return [
        Premise(
            "P1a",
            "the teacher is strong on its own distribution",
            f"greedy accuracy on the training distribution >= {TEACHER_GREEDY_MIN:.0%}",
            *_p1a(teacher_greedy),
        ),
        Premise(
            "P1b",
            "difficulty rises across the benchmarks",
            "teacher avg@k falls from each benchmark to the next, and the last > 0, on every seed",
            *_p1b(runs, paper, kw),
        ),
        Premise(
            "P1c",
            "the teacher is sometimes wrong, and the verifier catches it",
            "teacher greedy accuracy on the training distribution < 100%, and teacher avg@k < 100 on every benchmark, every seed",
            *_p1c(runs, paper, teacher_greedy),
        ),
        Premise(
            "P2a",
            "the student is weaker in capability, not in format",
            f"student-init AVG avg@k / teacher AVG avg@k in [{STUDENT_RATIO[0]:g}, {STUDENT_RATIO[1]:g}] (mean over seeds)",
            *_p2a(runs, kw),
        ),
        Premise(
            "P2b",
            "the student writes the teacher's format",
            f">= {WELL_FORMED_MIN:.0%} of student-init T=1 samples well formed (one `#`, digits after it)",
            *_manifest_fraction(
                manifest, "student_well_formed", WELL_FORMED_MIN, "of student-init samples well formed", samples=True
            ),
        ),
        Premise(
            "P3a",
            "on-policy beats off-policy",
            f"OPD >= SeqKD + {OPD_OVER_SEQKD_PP:g} points and GKD >= SeqKD on AVG avg@k, on every seed",
            *_p3a(runs, kw),
        ),
        Premise(
            "P3b",
            "the on-policy gain is not a compute gift",
            "OPD >= SFT given OPD's compute on AVG avg@k (mean over seeds)",
            *_p3b(runs, kw),
        ),
        Premise(
            "P4a",
            "conflict tokens exist",
            f"{S.CONFLICT_METRIC} >= {CONFLICT_AT_INIT_MIN:g} at SG-OPD's first logged step, on every seed",
            *_p4a(runs, kw),
        ),
        Premise(
            "P4b",
            "the verifier sometimes knows better than the teacher",
            f"on >= {TEACHER_WRONG_STUDENT_RIGHT_MIN:.0%} of training prompts the teacher's greedy answer is wrong "
            "while >= 1 of the student-init samples is right",
            *_manifest_fraction(
                manifest,
                "teacher_wrong_student_right",
                TEACHER_WRONG_STUDENT_RIGHT_MIN,
                "of prompts",
                extra=lambda p: (
                    f"; teacher greedy wrong on {p['teacher_greedy_wrong']:.1%}" if "teacher_greedy_wrong" in p else ""
                ),
            ),
        ),
    ]


def regime_sentence(premises: Sequence[Premise]) -> str:
    """One sentence: every premise holds, or which fail (and which are not measured)."""
    fails = [p.id for p in premises if p.status == FAILS]
    missing = [p.id for p in premises if p.status == NOT_MEASURED]
    if fails:
        tail = f" Not measured: {', '.join(missing)}." if missing else ""
        return f"**This world is not in the paper's regime for: {', '.join(fails)}.**{tail}"
    if missing:
        return (
            f"No measured premise fails, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not measured: "
            "whether this world is in the paper's regime is open."
        )
    return "All premises hold: this world is in the paper's regime."


# -- premises --------------------------------------------------------------------------------
def _p1a(greedy: _Part | float) -> tuple[str, str]:
    if isinstance(greedy, _Part):
        return greedy.text, greedy.status
    return f"{greedy:.1%} (world manifest)", _status(greedy >= TEACHER_GREEDY_MIN)


def _p1b(runs, paper: Paper, kw) -> tuple[str, str]:
    (teacher,) = PREMISE_RUNS["P1b"]
    benches, table, why = _bench_table(runs, paper, teacher)
    if why:
        return why, NOT_MEASURED
    means = " > ".join(f"{b} {S.mean_ci(table[b], **kw).fmt(1)}" for b in benches)
    per_seed = "; ".join(f"s{s} " + " > ".join(f"{v:.1f}" for v in row) for s, row in table.iterrows())
    ok = all(_falls(list(row)) for _, row in table.iterrows())
    return f"{teacher}: {means}; per seed: {per_seed}", _status(ok)


def _p1c(runs, paper: Paper, greedy: _Part | float) -> tuple[str, str]:
    (teacher,) = PREMISE_RUNS["P1c"]
    parts = [greedy if isinstance(greedy, _Part) else _Part(_status(greedy < 1.0), f"teacher greedy {greedy:.1%}")]
    benches, table, why = _bench_table(runs, paper, teacher)
    if why:
        parts.append(_Part(NOT_MEASURED, why))
    else:
        top = ", ".join(f"{b} {table[b].max():.1f}" for b in benches)
        parts.append(_Part(_status(bool((table < 100.0).all().all())), f"highest per-seed {teacher} avg@k: {top}"))
    return _combine(parts)


def _p2a(runs, kw) -> tuple[str, str]:
    student, teacher = PREMISE_RUNS["P2a"]
    s, t = (runs.values(r, S.AVG_METRIC) for r in (student, teacher))
    seeds = sorted(set(s.index) & set(t.index))
    if not seeds:
        return _missing(
            S.AVG_METRIC, [r for r, x in ((student, s), (teacher, t)) if x.empty] or [f"{student} and {teacher} on a shared seed"]
        ), NOT_MEASURED
    ratio = pd.Series({k: s[k] / t[k] if t[k] > 0 else math.nan for k in seeds}, dtype=float)
    est = S.mean_ci(ratio.to_numpy(), **kw)
    lo, hi = STUDENT_RATIO
    text = (
        f"{student} / {teacher} = {est.fmt(2)} ({S.mean_ci(s[seeds], **kw).fmt(1)} / {S.mean_ci(t[seeds], **kw).fmt(1)}); "
        f"per seed: {_per_seed(ratio, 2)}"
    )
    if not math.isfinite(est.mean):
        return text + f"; {teacher} avg@k is 0", NOT_MEASURED
    return text, _status(lo <= est.mean <= hi)


def _p3a(runs, kw) -> tuple[str, str]:
    opd, gkd, seqkd = PREMISE_RUNS["P3a"]
    return _combine(
        [
            _paired_part(runs, opd, seqkd, OPD_OVER_SEQKD_PP, every_seed=True, kw=kw),
            _paired_part(runs, gkd, seqkd, 0.0, every_seed=True, kw=kw),
        ]
    )


def _p3b(runs, kw) -> tuple[str, str]:
    opd, sft = PREMISE_RUNS["P3b"]
    return _combine([_paired_part(runs, opd, sft, 0.0, every_seed=False, kw=kw)])


def _p4a(runs, kw) -> tuple[str, str]:
    (run,) = PREMISE_RUNS["P4a"]
    curves = runs.curves(run, S.CONFLICT_METRIC)
    first = {int(c): curves[c].dropna() for c in curves.columns}
    first = {c: (int(x.index[0]), float(x.iloc[0])) for c, x in first.items() if len(x)}
    if not first:
        return f"no {S.CONFLICT_METRIC} history for {run}", NOT_MEASURED
    values = pd.Series({c: v for c, (_, v) in sorted(first.items())}, dtype=float)
    steps = sorted({st for st, _ in first.values()})
    text = (
        f"{run} at step {', '.join(map(str, steps))}: {S.mean_ci(values.to_numpy(), **kw).fmt(3)}; "
        f"per seed: {_per_seed(values, 3)}"
    )
    return text, _status(bool((values >= CONFLICT_AT_INIT_MIN).all()))


def _manifest_fraction(manifest, key: str, minimum: float, what: str, *, samples: bool = False, extra=None) -> tuple[str, str]:
    if manifest is None:
        return NO_MANIFEST, NOT_MEASURED
    probe = manifest.get("premises")
    if not isinstance(probe, Mapping) or key not in probe:
        return f"the world manifest has no premises.{key} (a world prepared before the probe: rebuild it)", NOT_MEASURED
    x = float(probe[key])
    n = probe.get("n_prompts")
    size = f" ({n} prompts x {probe.get('samples')} samples)" if samples else (f" ({n} training prompts)" if n else "")
    return f"{x:.1%} {what}{size}" + (extra(probe) if extra else ""), _status(x >= minimum)


# -- helpers ---------------------------------------------------------------------------------
def _greedy_part(manifest) -> _Part | float:
    """The teacher's greedy accuracy on the training distribution, or why it is missing."""
    if manifest is None:
        return _Part(NOT_MEASURED, NO_MANIFEST)
    try:
        return float(manifest["models"]["teacher"]["accuracy"]["greedy"]["train_dist"])
    except (KeyError, TypeError, ValueError):
        return _Part(NOT_MEASURED, "the world manifest has no teacher greedy accuracy on the training distribution")


def _bench_table(runs, paper: Paper, run: str) -> tuple[list[str], pd.DataFrame, str]:
    """Per-seed avg@k of ``run`` on each benchmark in the paper's order (seeds with every
    benchmark): ``(names as logged, [seeds, benchmarks] frame, reason if unusable)``."""
    available = [c.removeprefix("metrics.") for c in runs.runs.columns if c.startswith("metrics.")]
    cols = {}
    for b in paper.benchmarks:
        metric = paper.resolve_metric(available, b.key)
        v = runs.values(run, metric) if metric else pd.Series(dtype=float)
        if len(v):
            cols[metric.split("/")[1]] = v
    table = pd.DataFrame(cols).dropna()
    if len(cols) < 2 or table.empty:
        return [], table, f"no per-benchmark avg@k (eval/<benchmark>/avg_at_k) for {run}"
    return list(cols), table.sort_index(), ""


def _paired_part(runs, a: str, b: str, margin: float, *, every_seed: bool, kw) -> _Part:
    """``a - b >= margin`` on AVG avg@k, on every shared seed or on the mean over them."""
    va, vb = runs.values(a, S.AVG_METRIC), runs.values(b, S.AVG_METRIC)
    est, seeds = S.paired_difference(va, vb, **kw)
    if not seeds:
        return _Part(
            NOT_MEASURED,
            _missing(S.AVG_METRIC, [r for r, v in ((a, va), (b, vb)) if v.empty] or [f"{a} and {b} on a shared seed"]),
        )
    d = pd.Series({s: va[s] - vb[s] for s in seeds}, dtype=float)
    ok = bool((d >= margin).all()) if every_seed else est.mean >= margin
    return _Part(_status(ok), f"{a} - {b} = {est.fmt(2)} points; per seed: {_per_seed(d, 2)}")


def _combine(parts: Sequence[_Part]) -> tuple[str, str]:
    statuses = [p.status for p in parts]
    status = FAILS if FAILS in statuses else NOT_MEASURED if NOT_MEASURED in statuses else HOLDS
    return "; ".join(dict.fromkeys(p.text for p in parts)), status  # a run missing from two parts: once


def _falls(xs: Sequence[float]) -> bool:
    return all(x > y for x, y in itertools.pairwise(xs)) and xs[-1] > 0


def _per_seed(values: pd.Series, digits: int) -> str:
    return ", ".join(f"s{int(s)} {v:.{digits}f}" for s, v in values.items())


def _missing(metric: str, what: Sequence[str]) -> str:
    return f"no {metric} for {', '.join(what)}"


def _status(ok: bool) -> str:
    return HOLDS if ok else FAILS
