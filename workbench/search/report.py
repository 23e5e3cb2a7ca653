"""A study's report: figures (Optuna's matplotlib plots) and a Markdown summary.

The searched PTS end ``phase2_end_frac`` is drawn from ``[phase1_end_frac + gap, high]``,
a range that moves with each trial; Optuna's importance and contour code only accept
parameters whose distribution is the same in every trial. The figures are therefore drawn
from a read-only in-memory copy of the study in which each parameter carries its whole
range (the values are untouched).
"""

from __future__ import annotations

import os
import statistics
import warnings
from pathlib import Path
from typing import Any

from workbench.io import atomic_write_text
from workbench.search import study as S
from workbench.search.space import SearchSpace

FIGURES = {
    "history": "optimisation history",
    "importances": "parameter importances (fANOVA)",
    "contour": "contour",
    "slice": "slice plot",
}


def static_view(study, space: SearchSpace):
    """An in-memory copy of the study's finished trials with one fixed distribution per parameter."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.type == "categorical":
            dists[name] = CategoricalDistribution(list(p.choices or ()))
            continue
        parent = space.params[p.above] if p.above else None
        low = max(p.low, parent.low + p.min_gap) if parent else p.low  # type: ignore[operator]
        cls = FloatDistribution if p.type == "float" else IntDistribution
        dists[name] = cls(low, p.high, log=p.log) if p.type == "float" else cls(int(low), int(p.high), log=p.log)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a view
    try:
        view = optuna.create_study(direction=study.direction)
    finally:
        optuna.logging.set_verbosity(level)
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or not set(dists) <= set(t.params):
            continue
        view.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                value=t.value if t.state.name == "COMPLETE" else None,
                params=dict(t.params),
                distributions=dists,
                user_attrs=dict(t.user_attrs),
                intermediate_values=dict(t.intermediate_values),
            )
        )
    return view


def write_figures(view, space: SearchSpace, out_dir: Path) -> dict[str, str]:
    """PNG figures; returns {figure: file name, or the reason it was not drawn}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as V

    n_complete = sum(t.state.name == "COMPLETE" for t in view.get_trials(deepcopy=False))
    contour = space.contour_params()
    makers = {
        "history": (1, lambda: V.plot_optimization_history(view, target_name=f"validation {space.metric} (%)")),
        "importances": (2, lambda: V.plot_param_importances(view, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))),
        "contour": (2, lambda: V.plot_contour(view, params=list(contour or ()))),
        "slice": (1, lambda: V.plot_slice(view, params=space.slice_params())),
    }
    out: dict[str, str] = {}
    for name, (need, make) in makers.items():
        if n_complete < need:
            out[name] = f"not drawn: needs at least {need} complete trial(s), the study has {n_complete}"
            continue
        if name == "contour" and not contour:
            out[name] = "not drawn: needs two parameters"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = make()
        except Exception as e:  # noqa: BLE001 (too few distinct values, a constant objective, ...)
            out[name] = f"not drawn: {type(e).__name__}: {e}"
            continue
        fig = _first(axes).figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 5))
        path = out_dir / f"{name}.png"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)  # a reader never sees half a PNG
        plt.close(fig)
        out[name] = path.name
    return out


def _first(axes):
    import numpy as np

    return np.asarray(axes, dtype=object).flat[0] if not hasattr(axes, "figure") else axes


def write_report(
    ctx: S.SearchContext, study, out_dir: str | Path, benchmarks: dict[str, tuple[Any, dict | None]] | None = None
) -> Path:
    """Figures and ``summary.md`` in ``out_dir``; returns the summary's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(static_view(study, ctx.space), ctx.space, out_dir)
    text = summary_markdown(ctx, study, figures, benchmarks or {})
    path = out_dir / "summary.md"
    atomic_write_text(path, text)
    return path


def summary_markdown(ctx: S.SearchContext, study, figures: dict[str, str], benchmarks: dict[str, tuple[Any, dict | None]]) -> str:
    space = ctx.space
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    by_state = S.counts(study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    finished = S.is_finished(study, space.n_trials)
    best = study.best_trial if complete else None
    pnames = list(space.params)
    lines = [f"# Hyper-parameter search `{ctx.study_name}`", ""]
    if space.description:
        lines += [space.description.strip(), ""]
    lines += [
        f"- space: `{ctx.space_path}` (base run `{space.base}`, scale `{ctx.scale}`, seeds {list(space.seeds)})",
        (
            f"- objective: validation-split {space.metric} in % ({space.direction}); intermediate values every "
            f"{space.eval_every} steps; sampler `{space.sampler.name}` (seed {space.sampler.seed}), pruner `{space.pruner.name}`"
        ),
        f"- storage: `{ctx.storage_url}`; trial run directories: `{ctx.root}/trial-<n>/`",
        f"- trials: {len(trials)} of {space.n_trials}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(by_state.items()))
        + ("" if finished else " — **the study is not finished**: rerun `workbench search` to resume it"),
        "",
        (
            "The objective is measured on the world's validation split (disjoint from the four benchmarks and from "
            "the training prompts). The benchmarks were not looked at during the search: only the best trial (and "
            "the paper's default setting, for reference) is evaluated on them, once, after the search."
        ),
        "",
    ]
    if len(space.seeds) == 1:
        # A single-seed objective carries the seed's noise: the ranking is a lead, not a finding.
        lines += [
            (
                "**One seed per trial.** A trial's value includes its seed's sampling noise, so differences "
                "smaller than the seed-to-seed spread of the same setting are not findings; rerun the leading "
                "settings with several `seeds` before drawing conclusions."
            ),
            "",
        ]
    if best is not None:
        lines += [
            "## Best trial",
            "",
            f"Trial {best.number}"
            + (f" ({best.user_attrs[S.LABEL]})" if best.user_attrs.get(S.LABEL) else "")
            + f": validation {space.metric} **{best.value:.2f}**",
            "",
            "| parameter | value |",
            "|---|---|",
        ]
        lines += [f"| `{k}` | {_num(best.params.get(k))} |" for k in pnames]
        lines.append("")
    lines += _benchmark_section(benchmarks)
    lines += _enqueued_section(space, trials, complete, pnames)
    lines += _pruning_section(trials)
    lines += ["## Figures", ""]
    for name, what in FIGURES.items():
        f = figures.get(name, "not drawn")
        lines.append(f"![{what}]({f})" if f.endswith(".png") else f"- {what}: {f}")
        lines.append("")
    lines += [
        "## All trials",
        "",
        "| # | setting | state | value | " + " | ".join(_short(p) for p in pnames) + " | steps run | wall s | attempts |",
        "|" + "---|" * (7 + len(pnames)),
    ]
    for t in trials:
        lines.append(
            f"| {t.number} | {t.user_attrs.get(S.LABEL) or 'sampled'} | {t.state.name} | {_num(t.value)} | "
            + " | ".join(_num(t.params.get(p)) for p in pnames)
            + f" | {t.user_attrs.get(S.STEPS_RUN, '')}/{t.user_attrs.get(S.STEPS_TOTAL, '')}"
            f" | {_num(t.user_attrs.get(S.SECONDS))} | {t.user_attrs.get(S.ATTEMPTS, '')} |"
        )
    errors = [t for t in trials if t.user_attrs.get(S.ERROR)]
    if errors:
        lines += ["", "Failed trials: " + "; ".join(f"{t.number}: {t.user_attrs[S.ERROR][:200]}" for t in errors)]
    from workbench.tracking import default_tracking_uri, display_uri

    lines += [
        "",
        "## Browse",
        "",
        "```bash",
        f".venv/bin/optuna-dashboard {ctx.storage_url}   # pip install optuna-dashboard (or -e '.[search]')",
        (
            f".venv/bin/mlflow ui --backend-store-uri {display_uri(default_tracking_uri())}   # experiment "
            f"{study.user_attrs.get(S.EXPERIMENT, ctx.experiment)}, parent run search-{ctx.study_name}"
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def _benchmark_section(benchmarks: dict[str, tuple[Any, dict | None]]) -> list[str]:
    if not benchmarks:
        return ["## Benchmarks", "", "Not evaluated yet (the study is unfinished, or `--no-benchmarks`).", ""]
    rows = [(label, t, r) for label, (t, r) in benchmarks.items()]
    names = next((list(r["benchmarks"]) for _, _, r in rows if r), [])
    k = next((r["k"] for _, _, r in rows if r), "k")
    out = [
        "## Benchmarks (evaluated once, after the search)",
        "",
        "| setting | trial | " + " | ".join(names) + f" | AVG avg@{k} | AVG pass@{k} |",
        "|" + "---|" * (4 + len(names)),
    ]
    for label, t, r in rows:
        if r is None:
            out.append(f"| {label} | {t.number} | " + " | ".join("" for _ in names) + " | no final model (pruned) | |")
            continue
        out.append(
            f"| {label} | {t.number} | "
            + " | ".join(f"{100 * r['benchmarks'][b]['avg_at_k']:.2f}" for b in names)
            + f" | **{100 * r['avg_at_k']:.2f}** | {100 * r['pass_at_k']:.2f} |"
        )
    out += ["", f"Per benchmark: avg@{k} in %, mean over the trial's seeds.", ""]
    return out


def _enqueued_section(space: SearchSpace, trials, complete, pnames) -> list[str]:
    if not space.enqueue:
        return []
    ranked = sorted(complete, key=lambda t: t.value, reverse=space.direction == "maximize")
    rank = {t.number: i + 1 for i, t in enumerate(ranked)}
    out = [
        "## The paper's hand-picked settings, evaluated the same way",
        "",
        "Each was a trial of this study (same budget, same validation split, same pruner).",
        "",
        "| setting | grid run | trial | state | value | rank | " + " | ".join(_short(p) for p in pnames) + " |",
        "|" + "---|" * (6 + len(pnames)),
    ]
    for t in trials:
        label = t.user_attrs.get(S.LABEL)
        if not label:
            continue
        out.append(
            f"| {label} | {t.user_attrs.get(S.RUN) or ''} | {t.number} | {t.state.name} | {_num(t.value)} | "
            f"{rank.get(t.number, '')} | " + " | ".join(_num(t.params.get(p)) for p in pnames) + " |"
        )
    out += [
        "",
        (f"Rank among the {len(ranked)} complete trials (1 = best). A pruned setting's value is its last intermediate one."),
        "",
    ]
    return out


def pruning_stats(trials) -> dict[str, float]:
    """Pruned count, steps not run, seconds per step of complete trials, and the time saved."""
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    not_run = sum(max(0, int(t.user_attrs.get(S.STEPS_TOTAL, 0)) - int(t.user_attrs.get(S.STEPS_RUN, 0))) for t in pruned)
    done = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get(S.SECONDS)]
    # A resumed trial's last attempt covers only part of its steps: leave it out of the rate.
    clean = [t for t in done if int(t.user_attrs.get(S.ATTEMPTS, 1)) == 1] or done
    steps = sum(int(t.user_attrs.get(S.STEPS_TOTAL, 0)) for t in clean)
    rate = sum(float(t.user_attrs[S.SECONDS]) for t in clean) / steps if steps else float("nan")
    secs = [float(t.user_attrs[S.SECONDS]) for t in trials if t.state.is_finished() and t.user_attrs.get(S.SECONDS)]
    return {
        "pruned": len(pruned),
        "steps_not_run": not_run,
        "seconds_per_step": rate,
        "saved_seconds": not_run * rate,
        "trial_seconds_mean": statistics.fmean(secs) if secs else float("nan"),
        "trial_seconds_sum": sum(secs),
    }


def _pruning_section(trials) -> list[str]:
    p = pruning_stats(trials)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return [
        "## Time and pruning",
        "",
        (
            f"- wall time per trial (last attempt): mean {p['trial_seconds_mean']:.1f} s; sum over trials "
            f"{p['trial_seconds_sum']:.0f} s; from the first trial start to the last trial end {wall:.0f} s"
        ),
        f"- pruned trials: {p['pruned']}; training steps they did not run: {p['steps_not_run']}",
        f"- mean wall seconds per training step of complete trials (evaluations included): {p['seconds_per_step']:.2f}",
        (
            f"- estimated time pruning saved: {p['steps_not_run']} steps x {p['seconds_per_step']:.2f} s = "
            f"{p['saved_seconds']:.0f} s (an estimate: the steps were not run)"
        ),
        "",
    ]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _num(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
