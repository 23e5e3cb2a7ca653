"""The paper's figures, redrawn from tracked metrics only (matplotlib, no pyplot state).

Each ``fig_*`` function takes a ``Runs`` (``workbench.analysis.load``) and returns a
``matplotlib.figure.Figure``; curves are the mean over seeds with a shaded 95% bootstrap
band (``workbench.analysis.stats.band``; no band where fewer than 2 seeds have the step).
Missing data are said on the figure, never filled in. The runs each figure draws by default
are data (``figures`` in ``experiments/grid.yaml``, ``workbench.grid.FIGURE_RUNS``); today:

- ``fig4_avg_bars``: AVG avg@k bars with CI error bars and per-seed dots (student-init,
  OPD, ExOPD 1.25, SG-OPD).
- ``fig5_training_dynamics``: training reward, response length, entropy vs step
  (OPD, ExOPD 1.25, SG-OPD).
- ``fig6_benchmarks_over_training``: per-benchmark avg@k at each evaluation step (those
  runs); a run with only its final evaluation is drawn as one point and named in the title.
- ``fig7_conflict_fraction``: ``train/conflict_frac`` vs step (SG-OPD, OPD).
- ``fig_pts_schedule``: ``train/pts_alpha`` and ``train/pts_teacher_acc`` vs step (SG-OPD),
  with the PTS phase ends from the run's params when logged.

``write_figures(runs, out_dir)`` saves every figure as PNG and PDF (``<name>.png``,
``<name>.pdf``) and returns the paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from workbench.analysis.paper import Paper, load_paper
from workbench.analysis.stats import band, mean_ci
from workbench.grid import FIGURE_RUNS

(PTS_RUN,) = FIGURE_RUNS["fig_pts_schedule"]  # the one run whose schedule is drawn
COLORS = {
    "student-init": "#8c8c8c",
    "teacher": "#4d4d4d",
    "opd": "#1f77b4",
    "exopd-1.25": "#ff7f0e",
    "sgopd": "#2ca02c",
    "exopd-1.8": "#d62728",
    "gate-1.8-pass": "#9467bd",
    "pts-30-35": "#8c564b",
}
_CYCLE = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78"]
TRAIN_PANELS = (
    ("train/reward_mean", "training reward (mean)"),
    ("train/response_length", "response length (tokens)"),
    ("train/entropy", "policy entropy (nats/token)"),
)


def color(run: str, i: int = 0) -> str:
    return COLORS.get(run, _CYCLE[i % len(_CYCLE)])


def fig4_avg_bars(
    runs, paper: Paper | None = None, *, run_ids: Sequence[str] = FIGURE_RUNS["fig4_avg_bars"], metric: str = "eval/avg_at_k"
) -> Figure:
    """Bars: mean AVG avg@k over seeds, 95% bootstrap CI as error bars, each seed as a dot."""
    paper = paper or load_paper()
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ticks = []
    for i, run in enumerate(run_ids):
        vals = runs.values(run, metric)
        est = mean_ci(vals.to_numpy())
        ticks.append(f"{paper.label(run)}\n(n={est.n}{', no CI' if est.n == 1 else ''})")
        if est.n == 0:
            ax.text(i, 0, "no data", ha="center", va="bottom", fontsize=8, color="0.4")
            continue
        yerr = None if est.degenerate else [[est.mean - est.lo], [est.hi - est.mean]]
        ax.bar(i, est.mean, 0.65, color=color(run, i), alpha=0.85, yerr=yerr, capsize=5, ecolor="black", label=paper.label(run))
        ax.scatter(
            i + np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [i], vals.to_numpy(), s=14, color="black", zorder=3
        )
        top = est.mean if est.degenerate else est.hi
        ax.annotate(f"{est.mean:.2f}", (i, top), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(run_ids)), ticks, fontsize=8)
    ax.set_ylabel(f"AVG avg@k (%)  [{metric}]")
    ax.set_title(
        "Average accuracy over the four benchmarks\nbars: mean over seeds, whiskers: 95% bootstrap CI, dots: seeds", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(bottom=0)
    return fig


def fig5_training_dynamics(
    runs,
    paper: Paper | None = None,
    *,
    run_ids: Sequence[str] = FIGURE_RUNS["fig5_training_dynamics"],
    panels: Sequence[tuple[str, str]] = TRAIN_PANELS,
) -> Figure:
    """Training reward, response length and entropy vs step: mean over seeds with a 95% band."""
    paper = paper or load_paper()
    fig = Figure(figsize=(4.0 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, ylabel), tag in zip(axes, panels, "abcdefgh"):
        missing = [r for r in run_ids if not _plot_curves(ax, runs, r, metric, paper, run_ids.index(r))]
        _finish(ax, f"({tag}) {metric}", "training step", ylabel, missing)
    fig.suptitle("Training dynamics (mean over seeds, band: 95% bootstrap CI)", fontsize=10)
    return fig


def fig6_benchmarks_over_training(
    runs,
    paper: Paper | None = None,
    *,
    run_ids: Sequence[str] = FIGURE_RUNS["fig6_benchmarks_over_training"],
    kind: str = "avg_at_k",
) -> Figure:
    """Per-benchmark avg@k at every logged evaluation step, one panel per benchmark."""
    paper = paper or load_paper()
    names = [c[len("metrics.") :] for c in runs.runs.columns if c.startswith("metrics.")]
    fig = Figure(figsize=(3.4 * len(paper.benchmarks), 3.6), layout="constrained")
    axes = fig.subplots(1, len(paper.benchmarks), squeeze=False, sharey=False)[0]
    final_only: set[str] = set()
    for ax, bench in zip(axes, paper.benchmarks):
        metric = paper.resolve_metric(names, bench.key, kind)
        missing = []
        for i, run in enumerate(run_ids):
            curves = runs.curves(run, metric) if metric else None
            if curves is None or curves.empty:
                missing.append(run)
                continue
            if len(curves.index) == 1:
                final_only.add(run)
            _plot_curves(ax, runs, run, metric, paper, i, marker="o")
        alias = f" [{metric.split('/')[1]}]" if metric and metric.split("/")[1] != bench.key else ""
        _finish(ax, f"{bench.key}{alias}", "training step", f"{kind.replace('_at_', '@')} (%)", missing)
    note = (
        f"\nfinal evaluation only (no intermediate evaluations logged): {', '.join(paper.label(r) for r in sorted(final_only))}"
        if final_only
        else ""
    )
    fig.suptitle(f"Per-benchmark accuracy over training (evaluation steps; mean over seeds, 95% band){note}", fontsize=10)
    return fig


def fig7_conflict_fraction(
    runs,
    paper: Paper | None = None,
    *,
    run_ids: Sequence[str] = FIGURE_RUNS["fig7_conflict_fraction"],
    metric: str = "train/conflict_frac",
) -> Figure:
    """Sign-conflict fraction (over tokens where both signals are non-zero) vs step."""
    paper = paper or load_paper()
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    missing = [r for i, r in enumerate(run_ids) if not _plot_curves(ax, runs, r, metric, paper, i)]
    _finish(
        ax,
        "Sign-conflict fraction over training (mean over seeds, 95% band)",
        "training step",
        "conflict fraction of tokens",
        missing,
    )
    ax.set_ylim(bottom=0)
    return fig


def fig_pts_schedule(runs, paper: Paper | None = None, *, run: str = PTS_RUN) -> Figure:
    """PTS weight alpha and the teacher's acceptance rate (before filtering) vs step."""
    paper = paper or load_paper()
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    missing = []
    for i, (metric, lab, c) in enumerate(
        (("train/pts_alpha", "PTS weight alpha", "#1f77b4"), ("train/pts_teacher_acc", "teacher acceptance rate", "#d62728"))
    ):
        if not _plot_curves(ax, runs, run, metric, paper, i, label=lab, line_color=c):
            missing.append(metric)
    for j, (step, name) in enumerate(_phase_ends(runs, run)):
        ax.axvline(step, color="0.5", ls="--", lw=0.8, label="PTS phase ends p1, p2" if j == 0 else None)
        ax.annotate(
            f"{name} ",
            (step, 0.5),
            xycoords=("data", "axes fraction"),
            ha="right" if j == 0 else "left",
            fontsize=7,
            color="0.35",
            xytext=(-2 if j == 0 else 2, 0),
            textcoords="offset points",
        )
    _finish(ax, f"Phased teacher sampling schedule: {paper.label(run)}", "training step", "value (fraction)", missing)
    ax.set_ylim(-0.02, 1.08)
    return fig


FIGURES: dict[str, Callable[..., Figure]] = {
    "fig4_avg_bars": fig4_avg_bars,
    "fig5_training_dynamics": fig5_training_dynamics,
    "fig6_benchmarks_over_training": fig6_benchmarks_over_training,
    "fig7_conflict_fraction": fig7_conflict_fraction,
    "fig_pts_schedule": fig_pts_schedule,
}


def make_figures(runs, paper: Paper | None = None) -> dict[str, Figure]:
    paper = paper or load_paper()
    return {name: fn(runs, paper) for name, fn in FIGURES.items()}


def write_figures(
    runs, out_dir: str | Path, *, paper: Paper | None = None, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Draw every figure of ``FIGURES`` and save it to ``out_dir`` in each of ``formats``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in make_figures(runs, paper).items():
        for fmt in formats:
            p = d / f"{name}.{fmt}"
            fig.savefig(p, dpi=dpi, metadata=_metadata(fmt))
            paths.append(p)
    return paths


# -- helpers -----------------------------------------------------------------------------
def _plot_curves(
    ax,
    runs,
    run: str,
    metric: str,
    paper: Paper,
    i: int,
    *,
    marker: str | None = None,
    label: str | None = None,
    line_color: str | None = None,
) -> bool:
    """Mean over seeds (a line, ``label``-led) and its 95% band; False when there is no data."""
    curves = runs.curves(run, metric)
    if curves.empty:
        return False
    steps = curves.index.to_numpy()
    mean, lo, hi = band(curves.to_numpy().T)
    c = line_color or color(run, i)
    n = curves.shape[1]
    ax.plot(steps, mean, color=c, lw=1.4, marker=marker, ms=3.5, label=f"{label or paper.label(run)} (n={n})")
    if np.isfinite(lo).any():
        ax.fill_between(steps, lo, hi, color=c, alpha=0.2, lw=0)
    return True


def _finish(ax, title: str, xlabel: str, ylabel: str, missing: Sequence[str]) -> None:
    if missing:
        title += f"\nno data: {', '.join(missing)}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _phase_ends(runs, run: str) -> list[tuple[float, str]]:
    rows = runs.runs[runs.runs["run"] == run]
    out = []
    first = lambda col: rows[col].dropna().iloc[0] if col in rows and rows[col].notna().any() else None
    try:  # the schedule's progress is step / total steps, total = round(train.steps * train.steps_frac)
        total = round(float(first("params.train.steps")) * float(first("params.train.steps_frac") or 1.0))
        for col, name in (("params.pts.phase1_end_frac", "p1"), ("params.pts.phase2_end_frac", "p2")):
            out.append((float(first(col)) * total, name))
    except (TypeError, ValueError):  # not logged: no phase lines
        return []
    return out


def _metadata(fmt: str) -> dict:
    # fixed metadata: the same data give byte-identical PDFs (no creation date)
    return {"CreationDate": None} if fmt == "pdf" else {}
