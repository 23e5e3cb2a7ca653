"""Statistics over training seeds: bootstrap intervals, paired differences, claim verdicts.

The unit of replication is the training seed: every number the tables and figures show is
a mean over seeds with a 95% **percentile bootstrap** interval of that mean.

Fixed choices (decided before looking at any result, and printed in the report):

- ``N_RESAMPLES = 10_000`` resamples of the seeds with replacement, NumPy's default
  generator seeded with ``RNG_SEED = 20250601``, so a rerun gives the same interval;
  ``LEVEL = 0.95``, interval = the 2.5% and 97.5% quantiles of the resampled means.
- One seed gives no interval: ``Estimate.degenerate`` is true, ``lo``/``hi`` are NaN and it
  prints as ``x [no CI, n=1]``. Constant data give a zero-width interval at the value.
- Caveat: with few seeds the percentile bootstrap is narrower than a t interval and covers
  less than 95%. With 3 seeds its interval is exactly [min, max] of the per-seed values
  (the all-equal resample alone has probability 1/27 > 2.5%), so a "reproduced" verdict
  then means every seed agrees on the direction, no more.

Paired differences. A comparison of two runs uses the seeds both have: per seed
``d_s = x_A(s) - x_B(s)`` (same seed = same data order, init and evaluation samples), then
the bootstrap interval of the mean of ``d``. Statistics of several runs (the 2x2
interaction) resample the shared seeds jointly.

Verdict rule (the same for every claim). Each claim states a region ``R`` of its statistic
(the "claimed side"): superiority ``(0, inf)``, inferiority ``(-inf, 0)``, non-inferiority
``(-margin, inf)``, equivalence ``[-margin, margin]``. With ``[lo, hi]`` the 95% interval:

- ``reproduced``: the interval lies entirely inside ``R``;
- ``not reproduced``: the interval lies entirely outside ``R``;
- ``inconclusive``: it straddles a boundary of ``R``, or there is no interval (fewer than 2
  shared seeds, a missing run, a non-finite statistic).

A claim with several parts is reproduced when every part is, not reproduced when any part
is not, and inconclusive otherwise. The margins are constants of this module:

- ``NONINFERIORITY_MARGIN_PP = 1.0``: "gated 1.8 is not worse than ExOPD 1.25" allows at most
  1 point of AVG avg@k (the paper's uniform-1.8 drop is 3.3 points);
- ``INTERACTION_MARGIN_FRAC = 0.5``: "nearly additive" means the 2x2 interaction is at most
  half the sum of the two single gains, in either direction;
- ``FLAT_MARGIN = 0.05``: "the conflict fraction stays roughly flat" means the per-seed
  least-squares slope of ``train/conflict_frac`` against training progress (step / last
  step, so the slope is the fitted change over the whole run) has a mean within +-0.05,
  i.e. within 5 points of token fraction from start to end.

The claims are those of the paper's sections 5.2-5.4, on ``eval/avg_at_k`` (AVG); the runs each
part compares are data (``claims`` in ``experiments/grid.yaml``, ``workbench.grid.CLAIM_RUNS``):
1. SG-OPD beats OPD (1a) and ExOPD 1.25 (1b).
2. Uniform lambda 1.8 is worse than 1.25 (2a); the gate at 1.8 is not worse than uniform
   1.25 (2b, non-inferiority); at the same 1.8 the gate beats uniform (2c).
3. In the 2x2 (N = opd, P = pts-30-35, G = gate-1.8-pass, B = sgopd) adding the gate on top
   of PTS helps (3a: B - P > 0), adding PTS on top of the gate helps (3b: B - G > 0), and the
   gains are nearly additive (3c: interaction ``I = (B - P) - (G - N)`` relative to the sum of
   single gains ``S = (P - N) + (G - N)``, statistic ``mean(I) / |mean(S)|``, equivalence
   region [-0.5, 0.5]; the interaction in points is reported beside it).
4. The sign-conflict fraction of SG-OPD stays roughly flat over training (equivalence).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from workbench.grid import CLAIM_RUNS

if TYPE_CHECKING:
    import pandas as pd

N_RESAMPLES = 10_000
RNG_SEED = 20250601
LEVEL = 0.95
NONINFERIORITY_MARGIN_PP = 1.0
INTERACTION_MARGIN_FRAC = 0.5
FLAT_MARGIN = 0.05
AVG_METRIC = "eval/avg_at_k"
CONFLICT_METRIC = "train/conflict_frac"

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
_MAX_BAND_ELEMENTS = 4_000_000  # resamples x seeds x steps per chunk of a band


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its bootstrap interval (``lo``/``hi`` NaN when degenerate)."""

    mean: float
    lo: float
    hi: float
    n: int
    degenerate: bool

    def fmt(self, digits: int = 2) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        m = f"{self.mean:.{digits}f}"
        if self.degenerate:
            return f"{m} [no CI, n={self.n}]"
        return f"{m} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class Region:
    """The claimed side of a statistic: ``(low, high)`` with open or closed ends."""

    low: float = -math.inf
    high: float = math.inf
    closed: bool = False  # closed ends (equivalence) or open ends (superiority)

    def contains(self, x: float) -> bool:
        if self.closed:
            return self.low <= x <= self.high
        return self.low < x < self.high

    def describe(self) -> str:
        if self.high == math.inf:
            return f"> {self.low:g}"
        if self.low == -math.inf:
            return f"< {self.high:g}"
        return f"within [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class ClaimPart:
    """One tested statement: its statistic's estimate, the claimed region and the verdict."""

    id: str
    statement: str
    statistic: str
    estimate: Estimate
    region: Region
    verdict: str
    seeds: tuple[int, ...] = ()
    note: str = ""
    extra: dict = field(default_factory=dict)  # e.g. {"interaction_pp": Estimate}


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    parts: tuple[ClaimPart, ...]

    @property
    def verdict(self) -> str:
        return combine_verdicts([p.verdict for p in self.parts])


# -- bootstrap -----------------------------------------------------------------------------
def bootstrap(
    data: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    seed: int = RNG_SEED,
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over the rows (seeds) of ``data``.

    ``data`` is ``[n]`` or ``[n, m]`` (one row per seed, columns e.g. the runs of a paired
    comparison). ``statistic`` maps resampled data ``[B, n(, m)]`` to ``[B]``; default: the
    mean over seeds (1-D data). With ``n < 2`` the estimate is marked degenerate.
    """
    x = np.asarray(data, dtype=float)
    stat = statistic or (lambda a: a.mean(axis=1))
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, True)
    point = float(stat(x[None])[0])
    if n < 2:
        return Estimate(point, math.nan, math.nan, n, True)
    if np.all(x == x[0]):  # every resample is the sample itself: a zero-width interval
        return Estimate(point, point, point, n, False)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    boots = np.asarray(stat(x[idx]), dtype=float)
    if not np.all(np.isfinite(boots)):
        return Estimate(point, math.nan, math.nan, n, True)
    lo, hi = (float(q) for q in np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2]))
    return Estimate(point, lo, hi, n, False)


def mean_ci(values: Sequence[float] | np.ndarray, **kw) -> Estimate:
    """Mean over seeds and its bootstrap interval (NaNs dropped)."""
    x = np.asarray(values, dtype=float)
    return bootstrap(x[np.isfinite(x)], **kw)


def band(
    matrix: np.ndarray, *, n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = RNG_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and bootstrap interval of a ``[seeds, steps]`` matrix (NaN = missing).

    Returns ``(mean, lo, hi)``, each ``[steps]``; columns with fewer than 2 seeds get NaN
    bounds (no interval). All columns share the same resampled seed indices.
    """
    x = np.asarray(matrix, dtype=float)
    n, t = x.shape
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: 'mean of empty slice'
        mean = np.nanmean(x, axis=0) if n else np.full(t, np.nan)
        lo = np.full(t, np.nan)
        hi = np.full(t, np.nan)
        enough = np.sum(np.isfinite(x), axis=0) >= 2
        if n >= 2 and enough.any():
            rng = np.random.default_rng(seed)
            idx = rng.integers(0, n, size=(n_resamples, n))
            cols = np.flatnonzero(enough)
            chunk = max(1, _MAX_BAND_ELEMENTS // (n_resamples * n))
            for i in range(0, len(cols), chunk):
                c = cols[i : i + chunk]
                boots = np.nanmean(x[:, c][idx], axis=1)  # [B, len(c)]
                q = np.quantile if not np.isnan(boots).any() else np.nanquantile  # nanquantile is slow
                lo[c], hi[c] = q(boots, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return mean, lo, hi


def paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, tuple[int, ...]]:
    """Seed-matched pairs of two per-seed Series: ``([n, 2] array, shared seeds)``."""
    seeds = tuple(sorted(set(a.index) & set(b.index)))
    return np.array([[a[s], b[s]] for s in seeds], dtype=float).reshape(len(seeds), 2), seeds


def paired_difference(a: pd.Series, b: pd.Series, **kw) -> tuple[Estimate, tuple[int, ...]]:
    """Bootstrap estimate of mean over shared seeds of ``a(s) - b(s)``."""
    pairs, seeds = paired(a, b)
    return bootstrap(pairs[:, 0] - pairs[:, 1], **kw), seeds


def verdict(est: Estimate, region: Region) -> str:
    """``reproduced`` / ``not reproduced`` / ``inconclusive`` of an interval against ``region``."""
    if est.degenerate or not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return INCONCLUSIVE
    if region.contains(est.lo) and region.contains(est.hi):
        return REPRODUCED
    below = est.hi < region.low or (not region.closed and est.hi <= region.low)
    above = est.lo > region.high or (not region.closed and est.lo >= region.high)
    return NOT_REPRODUCED if below or above else INCONCLUSIVE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def slope_per_seed(curves: pd.DataFrame) -> pd.Series:
    """Least-squares slope of each seed's curve against progress ``step / last step``."""
    import pandas as pd

    out = {}
    for seed in curves.columns:
        s = curves[seed].dropna()
        if len(s) >= 2 and s.index.max() > 0:
            f = s.index.to_numpy(float) / float(s.index.max())
            out[int(seed)] = float(np.polyfit(f, s.to_numpy(float), 1)[0])
    return pd.Series(out, dtype=float).sort_index()


# -- the paper's claims ----------------------------------------------------------------------
def evaluate_claims(runs, *, metric: str = AVG_METRIC, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED) -> list[Claim]:
    """Test the paper's headline claims on ``runs`` (a ``workbench.analysis.load.Runs``)."""
    kw = {"n_resamples": n_resamples, "seed": seed}
    v = lambda run: runs.values(run, metric)
    greater = Region(0.0, math.inf)
    less = Region(-math.inf, 0.0)

    def diff(pid, statement, region, note=""):
        a, b = CLAIM_RUNS[pid]
        return _diff_part(pid, statement, a, b, v(a), v(b), region, metric, note, kw)

    c1 = Claim(
        "1",
        "SG-OPD beats OPD and ExOPD (AVG avg@k)",
        (
            diff("1a", "SG-OPD > OPD", greater),
            diff("1b", "SG-OPD > ExOPD (lambda 1.25)", greater),
        ),
    )
    c2 = Claim(
        "2",
        "Uniform lambda 1.8 degrades, the gated 1.8 does not",
        (
            diff("2a", "uniform 1.8 < uniform 1.25", less),
            diff(
                "2b",
                f"gate 1.8 not worse than uniform 1.25 (margin {NONINFERIORITY_MARGIN_PP:g} pt)",
                Region(-NONINFERIORITY_MARGIN_PP, math.inf),
                note="non-inferiority",
            ),
            diff("2c", "gate 1.8 > uniform 1.8", greater),
        ),
    )
    c3 = Claim(
        "3",
        "Sign gate and PTS are complementary and nearly additive (2x2)",
        (
            diff("3a", "gate on top of PTS helps: both > PTS only", greater),
            diff("3b", "PTS on top of the gate helps: both > gate only", greater),
            _interaction_part(runs, metric, kw),
        ),
    )
    c4 = Claim("4", "The sign-conflict fraction stays roughly flat over training (SG-OPD)", (_flat_part(runs, kw),))
    return [c1, c2, c3, c4]


def _diff_part(pid, statement, a, b, va, vb, region, metric, note, kw) -> ClaimPart:
    est, seeds = paired_difference(va, vb, **kw)
    missing = [r for r, s in ((a, va), (b, vb)) if s.empty]
    if missing:
        note = "; ".join(filter(None, [note, f"no {metric} for {', '.join(missing)}"]))
    return ClaimPart(
        pid, statement, f"mean over seeds of {a} - {b}, {metric} (points)", est, region, verdict(est, region), seeds, note
    )


def _interaction_part(runs, metric, kw) -> ClaimPart:
    cells = dict(zip("NPGB", CLAIM_RUNS["3c"], strict=True))
    series = {k: runs.values(r, metric) for k, r in cells.items()}
    seeds = tuple(sorted(set.intersection(*(set(s.index) for s in series.values()))))
    x = np.array([[series[k][s] for k in "NPGB"] for s in seeds], dtype=float).reshape(len(seeds), 4)

    def parts(a):  # a: [..., n, 4] -> interaction I and summed single gains S per row
        n_, p_, g_, b_ = (a[..., i] for i in range(4))
        return (b_ - p_) - (g_ - n_), (p_ - n_) + (g_ - n_)

    def ratio(a):
        i, s = parts(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return i.mean(axis=-1) / np.abs(s.mean(axis=-1))

    est = bootstrap(x, ratio, **kw)
    inter = bootstrap(x, lambda a: parts(a)[0].mean(axis=-1), **kw)
    gains = bootstrap(x, lambda a: parts(a)[1].mean(axis=-1), **kw)
    region = Region(-INTERACTION_MARGIN_FRAC, INTERACTION_MARGIN_FRAC, closed=True)
    note = f"interaction (B-P)-(G-N) = {inter.fmt()} points; sum of single gains (P-N)+(G-N) = {gains.fmt()} points"
    missing = [r for k, r in cells.items() if series[k].empty]
    if missing:
        note += f"; no {metric} for {', '.join(missing)}"
    return ClaimPart(
        "3c",
        f"nearly additive: |interaction| <= {INTERACTION_MARGIN_FRAC:g} x sum of single gains",
        "mean interaction / |mean summed single gains| over seeds",
        est,
        region,
        verdict(est, region),
        seeds,
        note,
        {"interaction_pp": inter, "sum_of_gains_pp": gains},
    )


def _flat_part(runs, kw) -> ClaimPart:
    (run,) = CLAIM_RUNS["4a"]
    slopes = slope_per_seed(runs.curves(run, CONFLICT_METRIC))
    est = bootstrap(slopes.to_numpy(), **kw) if len(slopes) else bootstrap([], **kw)
    region = Region(-FLAT_MARGIN, FLAT_MARGIN, closed=True)
    note = "" if len(slopes) else f"no {CONFLICT_METRIC} history for {run}"
    return ClaimPart(
        "4a",
        f"|fitted change of {CONFLICT_METRIC} over training| <= {FLAT_MARGIN:g}",
        f"mean over seeds of the least-squares slope of {CONFLICT_METRIC} vs step/last step ({run})",
        est,
        region,
        verdict(est, region),
        tuple(int(s) for s in slopes.index),
        note,
    )
