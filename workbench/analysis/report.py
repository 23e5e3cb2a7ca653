"""The generated reproduction report: ``write_report(runs, out_dir)`` -> ``REPRODUCTION.md``.

The report holds, from tracked metrics only: the paper's claims with their verdicts and
intervals (``workbench.analysis.stats``, rule restated in the report), Tables 1-3 with the
paper's numbers beside the reproduced ones (also written as Markdown/LaTeX/CSV under
``<out_dir>/tables``), the figures (PNG and PDF under ``<out_dir>/figures``, linked
relatively), and how it was produced: the command, the git commit of the analysis code and
of the training runs, the machine (platform, CPUs, Python, torch), the date, the MLflow
experiment, the seeds per run and the runs that were left out. A scale with a ``caveat``
(``experiments/scales/smoke.yaml``: its numbers mean nothing) gets it at the top. Right after
the provenance: whether the miniature world meets the premises of the paper's regime
(``workbench.analysis.premises``; world-level ones from the world's manifest). Beside the
report, ``runs.csv``: every final evaluation metric, one row per run x seed x metric.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from workbench.analysis import premises as P
from workbench.analysis import stats as S
from workbench.analysis.figures import FIGURES, write_figures
from workbench.analysis.paper import Paper, load_paper
from workbench.analysis.tables import make_tables
from workbench.provenance import git_state
from workbench.tracking import display_uri

REPORT_NAME = "REPRODUCTION.md"
RUNS_CSV = "runs.csv"
RUNS_CSV_COLUMNS = ["run", "seed", "method", "metric", "value"]
_EVAL_METRIC = re.compile(r"eval/(?:[^/]+/)?(?:avg|pass)_at_k")  # AVG and per-benchmark avg@k, pass@k
CAPTIONS = {
    "fig4_avg_bars": "Fig. 4: AVG avg@k of the untrained student, OPD, ExOPD (lambda 1.25) and SG-OPD; "
    "bars are means over seeds, whiskers 95% bootstrap CIs, dots single seeds.",
    "fig5_training_dynamics": "Fig. 5: training reward, response length and entropy of OPD, ExOPD and SG-OPD "
    "(mean over seeds, 95% band).",
    "fig6_benchmarks_over_training": "Fig. 6: per-benchmark avg@k at each logged evaluation step (a run with only a "
    "final evaluation shows one point; the figure title names it).",
    "fig7_conflict_fraction": "Fig. 7: sign-conflict fraction over training, SG-OPD and OPD.",
    "fig_pts_schedule": "PTS weight alpha against the teacher's acceptance rate (before filtering) for SG-OPD; "
    "dashed lines mark the phase ends.",
}


def write_report(
    runs,
    out_dir: str | Path,
    *,
    paper: Paper | None = None,
    figures_dir: str | Path | None = None,
    make_figures: bool = True,
    write_table_files: bool = True,
    command: str | None = None,
    n_resamples: int = S.N_RESAMPLES,
    caveat: str | None = None,
    world_manifest: str | Path | Mapping | None = None,
) -> Path:
    """Write ``<out_dir>/REPRODUCTION.md`` (and its tables, figures and ``runs.csv``); returns its path.

    Args:
        runs: a ``workbench.analysis.load.Runs``.
        out_dir: where the report goes (``results/<scale>/report`` in the workflow, which copies the mini one to ``reports/``; a tmp dir in tests).
        paper: the paper's numbers (default ``experiments/paper.yaml``).
        figures_dir: where the figures are (default ``<out_dir>/figures``); links are relative.
        make_figures: draw the figures into ``figures_dir`` (False: link what is there).
        write_table_files: also write ``<out_dir>/tables/table{1,2,3}.{md,tex,csv}``.
        command: the command line to record (default: this process's ``sys.argv``).
        n_resamples: bootstrap resamples for the claims.
        caveat: a warning printed at the top (default: the ``caveat`` of the experiment's scale,
            ``experiments/scales/<scale>.yaml``, for an experiment named ``sgopd-<scale>``).
        world_manifest: the mini world's ``manifest.json`` (a path, or the dict) for the
            world-level premises; None (a verl scale): they are reported as not measured.
    """
    paper = paper or load_paper()
    manifest = P.read_manifest(world_manifest)  # first: a wrong path fails before any drawing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    if make_figures:
        write_figures(runs, fig_dir, paper=paper)
    tables = make_tables(runs, paper)
    if write_table_files:
        for t in tables:
            t.write(out / "tables")
    claims = S.evaluate_claims(runs, n_resamples=n_resamples)
    premises = P.evaluate_premises(runs, manifest, paper=paper, n_resamples=n_resamples)
    runs_table(runs).to_csv(out / RUNS_CSV, index=False)
    caveat = caveat if caveat is not None else scale_caveat(runs.experiment)

    lines = [
        "# Reproduction report: Sign-Gated On-Policy Distillation (SG-OPD)",
        "",
        *([f"> **Caveat.** {caveat.strip()}", ""] if caveat else []),
        "Generated from tracked metrics only (MLflow); do not edit by hand, rerun the command below.",
        "",
        "## Provenance",
        "",
        *_provenance(runs, command),
        "",
        "## Premises of the miniature world",
        "",
        *_premises_md(premises, manifest is not None),
        "",
        "## Statistics and verdict rule",
        "",
        *_rules(n_resamples),
        "",
        "## Claims",
        "",
        *_claims_md(claims),
        "",
        "## Tables",
        "",
    ]
    for t in tables:
        lines += [t.to_markdown(), ""]
    if write_table_files:
        lines += [
            "LaTeX and CSV versions: "
            + ", ".join(
                f"[{t.name}.{fmt}]({_rel(out / 'tables' / f'{t.name}.{fmt}', out)})" for t in tables for fmt in ("tex", "csv")
            ),
            "",
        ]
    lines += [f"Every final evaluation metric, one row per run x seed x metric: [{RUNS_CSV}]({RUNS_CSV}).", ""]
    lines += ["## Figures", ""]
    for name in FIGURES:
        png = fig_dir / f"{name}.png"
        if png.exists():
            lines += [
                f"![{name}]({_rel(png, out)})",
                "",
                (f"*{CAPTIONS.get(name, name)}* ([PDF]({_rel(fig_dir / f'{name}.pdf', out)}))"),
                "",
            ]
        else:
            lines += [f"- {name}: not drawn (no file at `{_rel(png, out)}`)", ""]
    lines += ["## Runs left out", "", *_skipped(runs), ""]
    path = out / REPORT_NAME
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


# -- sections --------------------------------------------------------------------------------
def _provenance(runs, command: str | None) -> list[str]:
    frame = runs.runs
    commits = sorted({c for c in frame.get("git_commit", []) if isinstance(c, str) and c})
    backends = sorted({b for b in frame.get("backend", []) if isinstance(b, str) and b})
    code, dirty = git_state()
    code = code or "unknown"
    seeds = _seed_summary(runs)
    return [
        f"- Command: `{command or ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- Analysis code: git commit `{code}`" + (" (uncommitted changes)" if dirty else ""),
        (
            f"- Training runs: git commit(s) {', '.join(f'`{c}`' for c in commits) or 'not tagged'}; "
            f"backend(s) {', '.join(backends) or 'not tagged'}"
        ),
        f"- MLflow: experiment `{runs.experiment or '?'}` at `{display_uri(runs.tracking_uri)}`",
        (
            f"- Machine: {platform.platform()}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
            f"torch {_version('torch')}; mlflow {_version('mlflow')}; numpy {_version('numpy')}"
        ),
        f"- Runs: {len(frame)} child runs of {frame['run'].nunique() if len(frame) else 0} run ids; seeds: {seeds}",
        *_compute(frame),
    ]


def _compute(frame) -> list[str]:
    """The runs' summed MLflow durations (start to end: a resumed run also counts its pause)."""
    if not len(frame) or "start_time" not in frame or "end_time" not in frame:
        return []
    seconds = (frame["end_time"] - frame["start_time"]).dt.total_seconds().dropna()
    if not len(seconds):
        return []
    return [
        (
            f"- Compute: {seconds.sum() / 3600:.2f} h of run time summed over {len(seconds)} runs "
            f"(MLflow start to end; the longest {seconds.max() / 60:.1f} min)"
        )
    ]


def _seed_summary(runs) -> str:
    frame = runs.runs
    if not len(frame):
        return "none"
    per = frame.groupby("run")["seed"].apply(lambda s: tuple(sorted(int(x) for x in s)))
    common = per.value_counts().index[0]
    others = [f"{r}: {len(s)} ({', '.join(map(str, s))})" for r, s in per.items() if s != common]
    text = f"{len(common)} per run ({', '.join(map(str, common))})"
    return text + (f"; except {'; '.join(others)}" if others else "")


def _rules(n_resamples: int) -> list[str]:
    return [
        (
            f"- Every reproduced number is the mean over training seeds with a {S.LEVEL:.0%} percentile bootstrap interval "
            f"({n_resamples} resamples of the seeds, NumPy generator seed {S.RNG_SEED}); one seed gives no interval "
            "(shown as `no CI`), never a made-up one."
        ),
        "- Comparisons are seed-paired: the difference per seed between two runs, then the interval of its mean.",
        (
            "- Verdict from the interval against the claimed region, fixed in advance in `workbench/analysis/stats.py`: "
            "*reproduced* if the interval lies inside the region, *not reproduced* if it lies entirely outside, "
            "*inconclusive* if it straddles the boundary or there is no interval (fewer than 2 seeds). "
            "A claim with parts is reproduced only if every part is, not reproduced if any part is not."
        ),
        (
            f"- Margins fixed in advance: non-inferiority {S.NONINFERIORITY_MARGIN_PP:g} point of AVG avg@k; "
            f"'nearly additive' = |interaction| at most {S.INTERACTION_MARGIN_FRAC:g} x the sum of single gains; "
            f"'flat' = fitted change of the conflict fraction over training within +-{S.FLAT_MARGIN:g}."
        ),
        (
            "- Caveat: with few seeds the percentile bootstrap is narrower than a t interval and covers less than "
            "95%; with 3 seeds it is the [min, max] of the per-seed values, so 'reproduced' then means every seed agrees."
        ),
    ]


def _claims_md(claims: Sequence[S.Claim]) -> list[str]:
    out = ["| claim | verdict |", "|---|---|"]
    out += [f"| {c.id}. {c.title} | **{c.verdict}** |" for c in claims]
    out += [
        "",
        "| part | statement | statistic | estimate [95% CI] | claimed region | verdict | seeds | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        for p in c.parts:
            # The count first: a bare seed id "0" would read as "no seeds".
            ids = ", ".join(map(str, p.seeds))
            seeds = f"n={len(p.seeds)}" + (f" (seed{'s' * (len(p.seeds) > 1)} {ids})" if p.seeds else "")
            cells = [p.id, p.statement, p.statistic, p.estimate.fmt(3), p.region.describe(), f"**{p.verdict}**", seeds, p.note]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def _premises_md(premises: Sequence[P.Premise], have_manifest: bool) -> list[str]:
    out = [
        (
            "The premises a world must meet to be in the paper's regime, with thresholds fixed before the world "
            "was built (docs/mini-world.md, section The paper's regime; `workbench/analysis/premises.py`). "
            "World-level ones come from the world's manifest (`workbench prepare`), the others from tracked "
            "metrics; intervals as in the next section, the status from the threshold as stated."
        ),
        "",
    ]
    if not have_manifest:
        out += ["No world manifest was given (e.g. a verl scale): the world-level premises are not measured.", ""]
    out += ["| premise | threshold | measured | status |", "|---|---|---|---|"]
    for p in premises:
        cells = [f"{p.id}. {p.statement}", p.threshold, p.measured, f"**{p.status}**"]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*out, "", P.regime_sentence(premises)]


def runs_table(runs):
    """Every final ``eval/`` avg@k and pass@k (AVG and per benchmark) as a tidy frame:
    ``RUNS_CSV_COLUMNS``, one row per run x seed x metric, sorted. The method is the run's
    tag, else its config's (an extra evaluation), else its label. Values are rounded to 6
    decimals: a mean of avg@k is a multiple of 2^-5 points or coarser, so this drops only
    float noise (36.75000000000001)."""
    import pandas as pd

    frame = runs.runs
    metrics = sorted(c for c in frame.columns if c.startswith("metrics.") and _EVAL_METRIC.fullmatch(c[len("metrics.") :]))
    rows = []
    for r in frame.to_dict("records"):
        method = next((m for m in (r.get("method"), r.get("params.method")) if isinstance(m, str) and m), r["run"])
        for c in metrics:
            if pd.notna(r[c]):
                rows.append((r["run"], int(r["seed"]), method, c[len("metrics.") :], round(float(r[c]), 6)))
    table = pd.DataFrame(rows, columns=RUNS_CSV_COLUMNS)
    return table.sort_values(["run", "seed", "metric"], ignore_index=True)


def _skipped(runs) -> list[str]:
    sk = runs.skipped
    if sk is None or not len(sk):
        return ["None: every child run found was used."]
    return [f"- `{r.run}` seed {r.seed} (MLflow run `{r.mlflow_run_id}`): {r.reason}" for r in sk.itertuples()]


def scale_caveat(experiment: str | None) -> str | None:
    """The caveat of the scale an experiment belongs to (the workflow names it ``sgopd-<scale>``)."""
    from workbench import grid as G

    name = (experiment or "").removeprefix("sgopd-")
    if not (experiment or "").startswith("sgopd-") or name not in G.scale_names():
        return None
    return G.load_scale(name).caveat


# -- helpers ---------------------------------------------------------------------------------
def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
