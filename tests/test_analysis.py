"""The analysis layer against a synthetic MLflow store with planted numbers.

One SQLite store per module: every Table 3 run x 3 seeds (40 steps of train/* metrics,
evaluations every 10 steps), the eval-only runs, a FAILED run and an older duplicate that
must both be left out. Planted AVG values make the claims' verdicts known in advance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import stats as S
from workbench.analysis.load import Runs, load_runs
from workbench.analysis.paper import AVG, load_paper
from workbench.analysis.synthetic import SyntheticRun, make_synthetic_grid, write_runs

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "sgopd-test"
STEPS = 40
# Planted final eval/avg_at_k per seed 0, 1, 2 (see the claim tests for what they imply).
PLANTED = {
    "opd": [27.0, 27.5, 28.0],
    "exopd-1.25": [28.0, 28.2, 28.4],
    "exopd-1.8": [29.0, 29.5, 30.0],
    "gate-1.8-pass": [28.5, 29.5, 28.9],
    "pts-30-35": [28.4, 28.6, 28.8],
    "sgopd": [30.0, 31.0, 32.5],
}
# The paper's Table 3 in its printed order (paper.txt, Appendix F), baselines first.
PAPER_TABLE3_ORDER = [
    "sft",
    "seqkd",
    "gkd",
    "opd",
    "exopd-1.25",
    "exopd-1.25-single-source",
    "exopd-1.8",
    "exopd-1.25-interp-all",
    "gate-1.8-pass",
    "gate-1.5",
    "gate-1.8-shrink",
    "gate-1.5-preserve",
    "pts-30-35",
    "pts-50-70",
    "pts-40-45",
    "pts-60-65",
    "pts-60-80",
    "pts-50-70-ratio2",
    "pts-30-35-nofilter",
    "sgopd",
    "sgopd-1.5",
    "sgopd@90%",
    "timesep-1.5",
    "timesep-stage1",
    "timesep-1.8",
    "probe-two-level",
    "probe-grpo-fallback",
    "grpo",
    "sft-equal-compute",
]


def _set_final(sr: SyntheticRun, metric: str, value: float) -> None:
    pts = sr.history[metric]
    last = max(range(len(pts)), key=lambda i: pts[i][0])
    pts[last] = (pts[last][0], value)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    grid = make_synthetic_grid(seeds=(0, 1, 2), steps=STEPS, eval_every=10, rng_seed=1)
    for sr in grid:
        if sr.run in PLANTED:
            _set_final(sr, "eval/avg_at_k", PLANTED[sr.run][sr.seed])
    # an older duplicate of opd seed 0 (superseded by the grid's) and a failed sgopd seed
    old = SyntheticRun("opd", 0, "a", history={"eval/avg_at_k": [(STEPS, 0.0)]})
    failed = SyntheticRun("sgopd", 3, "d", status="FAILED", history={"eval/avg_at_k": [(STEPS, 99.0)]})
    write_runs(uri, EXPERIMENT, [old])
    write_runs(uri, EXPERIMENT, grid + [failed])
    return {"uri": uri, "grid": grid}


@pytest.fixture(scope="module")
def runs(store):
    return load_runs(store["uri"], EXPERIMENT)


@pytest.fixture(scope="module")
def paper():
    return load_paper()


def _truth(grid, run, metric):
    """Per-step mean over seeds of a synthetic history, straight from the planted objects."""
    frame = pd.DataFrame(
        [(sr.seed, s, v) for sr in grid if sr.run == run for s, v in sr.history.get(metric, [])],
        columns=["seed", "step", "value"],
    )
    return frame.groupby("step")["value"].mean()


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


# -- the paper's numbers ---------------------------------------------------------------------
def test_paper_numbers_are_consistent(paper):
    """Every AVG is the mean of its four benchmarks (to rounding) and the tables agree."""
    rows = [*paper.table1["rows"], *paper.table2["cells"], *(r for r in paper.table3["rows"] if "avg_at_k" in r)]
    for row in rows:
        for kind in ("avg_at_k", "pass_at_k"):
            if kind in row:
                vals = row[kind]
                assert abs(np.mean([vals[b.key] for b in paper.benchmarks]) - vals[AVG]) <= 0.01, (row.get("run"), kind)
    t3 = {r["run"]: r for r in paper.table3["rows"]}
    for cell in paper.table2["cells"]:
        assert cell["avg_at_k"] == t3[cell["run"]]["avg_at_k"]
    spec_avg = {"sgopd": 29.53, "opd": 27.55, "exopd-1.8": 24.71, "gate-1.8-pass": 28.78, "pts-30-35": 28.59, "sgopd@90%": 28.31}
    for run, avg in spec_avg.items():
        assert t3[run]["avg_at_k"][AVG] == avg
    grid = {p.stem for p in (REPO / "experiments" / "runs").glob("*.yaml")}
    assert grid <= set(t3), f"grid runs missing from paper.yaml table3: {grid - set(t3)}"
    assert paper.table3_order() == PAPER_TABLE3_ORDER


# -- loading -------------------------------------------------------------------------------
def test_load_runs_layout(runs, store, tmp_path):
    expected = set(PAPER_TABLE3_ORDER) | {"student-init", "teacher"}
    assert set(runs.run_ids) == expected
    assert runs.seeds("sgopd") == [0, 1, 2] and runs.seeds("teacher") == [0]
    assert list(runs.values("sgopd", "eval/avg_at_k")) == PLANTED["sgopd"]
    assert list(runs.values("opd", "eval/avg_at_k")) == PLANTED["opd"]  # the older duplicate lost
    reasons = {(r.run, int(r.seed)): r.reason for r in runs.skipped.itertuples()}
    assert reasons[("sgopd", 3)] == "status FAILED"
    assert "superseded" in reasons[("opd", 0)]
    curves = runs.curves("sgopd", "train/conflict_frac")
    assert curves.shape == (STEPS, 3) and list(curves.index) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(curves.mean(axis=1), _truth(store["grid"], "sgopd", "train/conflict_frac"))
    assert runs.runs.loc[runs.runs["run"] == "sgopd", "params.pts.phase1_end_frac"].iloc[0] == "0.3"
    assert set(runs.runs["kind"]) == {"train", "eval"}
    back = Runs.read(runs.save(tmp_path / "snap"))
    pd.testing.assert_frame_equal(back.runs, runs.runs)
    pd.testing.assert_frame_equal(
        back.history.astype({"run": str, "metric": str}), runs.history.astype({"run": str, "metric": str})
    )


def test_load_runs_unknown_experiment(store):
    with pytest.raises(LookupError, match="no MLflow experiment"):
        load_runs(store["uri"], "no-such-experiment")


# -- statistics ----------------------------------------------------------------------------
def test_bootstrap_constant_data_zero_width():
    est = S.mean_ci([2.5] * 5)
    assert (est.mean, est.lo, est.hi, est.degenerate) == (2.5, 2.5, 2.5, False)


def test_bootstrap_single_seed_is_marked_degenerate():
    est = S.mean_ci([31.0])
    assert est.degenerate and math.isnan(est.lo) and math.isnan(est.hi) and est.mean == 31.0
    assert est.fmt() == "31.00 [no CI, n=1]"
    assert S.verdict(est, S.Region(0.0)) == S.INCONCLUSIVE
    assert S.mean_ci([]).fmt() == "n/a"


def test_bootstrap_is_deterministic_and_three_seeds_give_min_max():
    x = [1.0, 4.0, 2.5]
    a, b = S.mean_ci(x), S.mean_ci(x)
    assert a == b
    assert (a.lo, a.hi) == (1.0, 4.0)  # documented: with 3 seeds the interval is [min, max]


def test_verdicts_from_intervals():
    greater = S.Region(0.0)
    rng = np.random.default_rng(0)
    clear = S.mean_ci(5.0 + rng.normal(0, 0.5, size=8))
    assert clear.lo > 0 and S.verdict(clear, greater) == S.REPRODUCED
    reversed_ = S.mean_ci(-5.0 + rng.normal(0, 0.5, size=8))
    assert S.verdict(reversed_, greater) == S.NOT_REPRODUCED
    noise = S.mean_ci([-1.0, 1.2, -0.4, 0.6, -0.8, 0.5])
    assert noise.lo < 0 < noise.hi and S.verdict(noise, greater) == S.INCONCLUSIVE
    # equivalence and non-inferiority regions
    within = S.Region(-0.05, 0.05, closed=True)
    assert S.verdict(S.Estimate(0.0, -0.01, 0.02, 3, False), within) == S.REPRODUCED
    assert S.verdict(S.Estimate(0.2, 0.1, 0.3, 3, False), within) == S.NOT_REPRODUCED
    assert S.verdict(S.Estimate(0.05, 0.0, 0.1, 3, False), within) == S.INCONCLUSIVE
    noninf = S.Region(-1.0)
    assert S.verdict(S.Estimate(-0.5, -0.9, -0.1, 3, False), noninf) == S.REPRODUCED
    assert S.verdict(S.Estimate(-2.0, -3.0, -1.0, 3, False), noninf) == S.NOT_REPRODUCED
    # a strict claim with an interval touching 0 from below is not on the claimed side
    assert S.verdict(S.Estimate(-0.5, -1.1, 0.0, 3, False), greater) == S.NOT_REPRODUCED
    assert S.combine_verdicts([S.REPRODUCED, S.INCONCLUSIVE]) == S.INCONCLUSIVE
    assert S.combine_verdicts([S.REPRODUCED, S.NOT_REPRODUCED, S.INCONCLUSIVE]) == S.NOT_REPRODUCED
    assert S.combine_verdicts([S.REPRODUCED] * 2) == S.REPRODUCED


def test_bootstrap_coverage_on_normal_samples():
    rng = np.random.default_rng(123)
    hits = 0
    reps = 300
    for i in range(reps):
        est = S.mean_ci(rng.normal(10.0, 2.0, size=30), n_resamples=2000, seed=i)
        hits += est.lo <= 10.0 <= est.hi
    assert 0.89 <= hits / reps <= 0.98, hits / reps


def test_paired_difference_matches_seeds():
    a = pd.Series([10.0, 11.0, 12.0, 50.0], index=[0, 1, 2, 7])
    b = pd.Series([9.0, 10.0, 11.5], index=[2, 1, 0])
    est, seeds = S.paired_difference(a, b)
    assert seeds == (0, 1, 2)
    assert est.mean == pytest.approx(np.mean([10 - 11.5, 11 - 10, 12 - 9]))


def test_band_and_slopes():
    m = np.array([[1.0, 2.0, np.nan], [1.0, 2.0, 5.0], [1.0, 2.0, np.nan]])
    mean, lo, hi = S.band(m)
    np.testing.assert_allclose(mean, [1.0, 2.0, 5.0])
    np.testing.assert_allclose(lo[:2], [1.0, 2.0])
    np.testing.assert_allclose(hi[:2], [1.0, 2.0])
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # one seed: no interval
    steps = np.arange(1, 101)
    curves = pd.DataFrame({0: 0.3 + 0.2 * steps / 100, 1: 0.4 - 0.1 * steps / 100}, index=steps)
    np.testing.assert_allclose(S.slope_per_seed(curves).to_numpy(), [0.2, -0.1])


def test_claims_on_planted_values(runs):
    claims = {c.id: c for c in S.evaluate_claims(runs)}
    parts = {p.id: p for c in claims.values() for p in c.parts}
    d = np.subtract(PLANTED["sgopd"], PLANTED["opd"])
    assert parts["1a"].estimate.mean == pytest.approx(d.mean())
    assert (parts["1a"].estimate.lo, parts["1a"].estimate.hi) == pytest.approx((d.min(), d.max()))
    assert parts["1a"].seeds == (0, 1, 2)  # the failed seed 3 of sgopd is not paired
    assert parts["1a"].verdict == parts["1b"].verdict == S.REPRODUCED
    assert claims["1"].verdict == S.REPRODUCED
    assert parts["2a"].verdict == S.NOT_REPRODUCED  # planted: uniform 1.8 above 1.25 in every seed
    assert parts["2b"].verdict == S.REPRODUCED
    assert parts["2c"].verdict == S.NOT_REPRODUCED  # differences -0.5, 0, -1.1: never above 0
    assert claims["2"].verdict == S.NOT_REPRODUCED
    assert parts["3a"].verdict == parts["3b"].verdict == S.REPRODUCED
    inter = np.subtract(PLANTED["sgopd"], PLANTED["pts-30-35"]) - np.subtract(PLANTED["gate-1.8-pass"], PLANTED["opd"])
    assert parts["3c"].extra["interaction_pp"].mean == pytest.approx(inter.mean())
    assert parts["3c"].verdict == S.INCONCLUSIVE and claims["3"].verdict == S.INCONCLUSIVE
    assert parts["4a"].verdict == S.REPRODUCED  # synthetic conflict fraction is flat around 0.3


def test_flat_claim_not_reproduced_for_a_drifting_conflict_fraction(runs):
    h = runs.history.astype({"run": str, "metric": str}).copy()
    sel = (h["run"] == "sgopd") & (h["metric"] == "train/conflict_frac")
    h.loc[sel, "value"] = 0.1 + 0.3 * h.loc[sel, "step"] / STEPS + 0.001 * h.loc[sel, "seed"]
    drifting = Runs(runs.runs, h, runs.experiment)
    part = S.evaluate_claims(drifting)[3].parts[0]
    assert part.estimate.mean == pytest.approx(0.3)  # slope against step / last step
    assert part.verdict == S.NOT_REPRODUCED


# -- tables ----------------------------------------------------------------------------------
def test_table1_renders_planted_means_beside_paper(runs, paper, tmp_path):
    from workbench.analysis.tables import write_tables

    paths = write_tables(runs, tmp_path / "tables", paper=paper)
    assert sorted(p.name for p in paths) == sorted(f"table{i}.{f}" for i in (1, 2, 3) for f in ("md", "tex", "csv"))
    rows = _csv_rows((tmp_path / "tables" / "table1.csv").read_text())
    cell = next(r for r in rows if r["run"] == "sgopd" and r["column"] == AVG and r["block"].startswith("avg@k"))
    planted = PLANTED["sgopd"]
    assert float(cell["mean"]) == pytest.approx(np.mean(planted), abs=1e-9)
    assert (float(cell["lo"]), float(cell["hi"])) == (min(planted), max(planted))
    assert float(cell["paper"]) == 29.53 and cell["n"] == "3" and cell["metric"] == "eval/avg_at_k"
    md = (tmp_path / "tables" / "table1.md").read_text()
    expected = f"{np.mean(planted):.2f} [{min(planted):.2f}, {max(planted):.2f}]"
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| SG-OPD | sgopd | paper |"))
    assert lines[i].rstrip(" |").endswith("29.53")  # the paper row ...
    assert lines[i + 1].rstrip(" |").endswith(expected) and "reproduced (n=3)" in lines[i + 1]  # ... and ours beneath
    # per-benchmark values go through the bench1..4 aliases
    b1 = next(r for r in rows if r["run"] == "sgopd" and r["column"] == "AIME24" and r["block"].startswith("avg@k"))
    assert b1["metric"] == "eval/bench1/avg_at_k" and float(b1["paper"]) == 41.35
    assert float(b1["mean"]) == pytest.approx(runs.values("sgopd", "eval/bench1/avg_at_k").mean())


def test_table2_gains_are_seed_paired(runs, paper):
    from workbench.analysis.tables import table2

    rows = _csv_rows(table2(runs, paper).to_csv())
    both = next(r for r in rows if r["label"] == "both - neither" and r["column"] == AVG)
    assert float(both["mean"]) == pytest.approx(np.mean(np.subtract(PLANTED["sgopd"], PLANTED["opd"])))
    assert float(both["paper"]) == pytest.approx(29.53 - 27.55)
    cells = [r["run"] for r in rows if r["column"] == AVG and r["block"].startswith("sign gate")]
    assert cells == ["opd", "pts-30-35", "gate-1.8-pass", "sgopd"]


def test_table3_order_and_latex(runs, paper):
    from workbench.analysis.tables import table3

    t = table3(runs, paper)
    order = list(dict.fromkeys(r["run"] for r in _csv_rows(t.to_csv())))
    assert order == PAPER_TABLE3_ORDER
    by_avg = table3(runs, paper, order="reproduced")
    rows = [r for r in _csv_rows(by_avg.to_csv()) if r["column"] == AVG]
    for block in {r["block"] for r in rows}:
        means = [float(r["mean"]) for r in rows if r["block"] == block]
        assert means == sorted(means, reverse=True), block
    tex = t.to_latex()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert tex.count("{") - tex.count("\\{") == tex.count("}") - tex.count("\\}")
    ncols = len(t.header())
    for line in tex.splitlines():
        if line.endswith("\\\\") and not line.startswith("\\multicolumn"):
            assert len(re.findall(r"(?<!\\)&", line)) == ncols - 1, line
    assert "sgopd@90\\%" in tex and "Spearman" in " ".join(t.notes)


# -- figures ---------------------------------------------------------------------------------
def test_figures_written_and_plot_the_data(runs, store, paper, tmp_path):
    from workbench.analysis.figures import FIGURES, fig4_avg_bars, fig7_conflict_fraction, write_figures

    paths = write_figures(runs, tmp_path / "figs", paper=paper)
    assert sorted(p.name for p in paths) == sorted(f"{n}.{f}" for n in FIGURES for f in ("png", "pdf"))
    for p in paths:
        assert p.stat().st_size > 8_000, p
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")

    fig = fig7_conflict_fraction(runs, paper)
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label().startswith("SG-OPD"))
    truth = _truth(store["grid"], "sgopd", "train/conflict_frac")
    np.testing.assert_array_equal(line.get_xdata(), truth.index.to_numpy())
    np.testing.assert_allclose(line.get_ydata(), truth.to_numpy())
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None

    bars = fig4_avg_bars(runs, paper).axes[0].patches
    assert [b.get_height() for b in bars][-1] == pytest.approx(np.mean(PLANTED["sgopd"]))


def test_fig6_says_when_only_final_evaluations_exist(runs, paper):
    from workbench.analysis.figures import fig6_benchmarks_over_training

    h = runs.history.astype({"run": str, "metric": str})
    keep = ~((h["run"] == "opd") & h["metric"].str.startswith("eval/") & (h["step"] < STEPS))
    final_only = Runs(runs.runs, h[keep].reset_index(drop=True), runs.experiment)
    fig = fig6_benchmarks_over_training(final_only, paper)
    assert "final evaluation only" in fig._suptitle.get_text() and "OPD" in fig._suptitle.get_text()
    opd_line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("OPD"))
    assert list(opd_line.get_xdata()) == [STEPS]  # one real point, nothing invented
    full = fig6_benchmarks_over_training(runs, paper)
    assert "final evaluation only" not in full._suptitle.get_text()


# -- report ----------------------------------------------------------------------------------
def test_report_has_verdicts_numbers_figures_provenance(runs, paper, tmp_path):
    from workbench.analysis.report import write_report

    out = tmp_path / "reports"
    path = write_report(runs, out, paper=paper, command="workbench report --experiment sgopd-test", n_resamples=2000)
    text = path.read_text()
    assert path == out / "REPRODUCTION.md"
    verdicts = dict(re.findall(r"^\| (\d[a-c]) \|.*\| \*\*([a-z ]+)\*\* \|", text, re.MULTILINE))
    assert verdicts == {
        "1a": "reproduced",
        "1b": "reproduced",
        "2a": "not reproduced",
        "2b": "reproduced",
        "2c": "not reproduced",
        "3a": "reproduced",
        "3b": "reproduced",
        "3c": "inconclusive",
        "4a": "reproduced",
    }
    for needle in (
        "29.53",
        "27.55",
        "-0.29",
        "at most 0.5 x the sum",
        "within +-0.05",
        "`workbench report --experiment sgopd-test`",
        "git commit",
        "CPUs",
        "torch",
        "3 per run (0, 1, 2)",
        "status FAILED",
        "Table 3",
        "percentile bootstrap",
    ):
        assert needle in text, needle
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/fig4_avg_bars.png" in links and len(links) == 5
    for link in links:
        assert (out / link).is_file()
    assert (out / "tables" / "table3.tex").is_file()
    assert "| 2. Uniform lambda 1.8 degrades, the gated 1.8 does not | **not reproduced** |" in text


def test_one_seed_and_missing_runs_are_reported_honestly(runs, paper, tmp_path):
    from workbench.analysis.figures import write_figures
    from workbench.analysis.report import write_report
    from workbench.analysis.tables import table1

    keep = runs.runs["run"].isin(["opd", "sgopd", "student-init"]) & (runs.runs["seed"] == 0)
    ids = set(runs.runs.loc[keep, "mlflow_run_id"])
    few = Runs(runs.runs[keep].reset_index(drop=True), runs.history[runs.history["mlflow_run_id"].isin(ids)], "few")
    rows = _csv_rows(table1(few, paper).to_csv())
    sg = next(r for r in rows if r["run"] == "sgopd" and r["column"] == AVG and r["block"].startswith("avg@k"))
    assert sg["cell"] == f"{PLANTED['sgopd'][0]:.2f} [no CI, n=1]" and sg["degenerate"] == "True" and sg["lo"] == ""
    gkd = next(r for r in rows if r["run"] == "gkd" and r["column"] == AVG)
    assert gkd["cell"] == "n/a" and gkd["n"] == "0" and float(gkd["paper"]) == 26.57
    assert {c.verdict for c in S.evaluate_claims(few)} == {S.INCONCLUSIVE}
    assert len(write_figures(few, tmp_path / "figs", paper=paper)) == 10
    text = write_report(few, tmp_path / "rep", paper=paper, make_figures=False, command="x").read_text()
    assert "not drawn" in text and "**reproduced**" not in text and "1 per run (0)" in text


def test_report_sums_the_runs_compute_time():
    import pandas as pd

    from workbench.analysis.report import _compute

    start = pd.to_datetime(["2026-01-01 00:00:00", "2026-01-01 00:00:00", None], utc=True)
    end = pd.to_datetime(["2026-01-01 00:01:00", "2026-01-01 00:02:00", None], utc=True)
    (line,) = _compute(pd.DataFrame({"start_time": start, "end_time": end}))
    assert line == "- Compute: 0.05 h of run time summed over 2 runs (MLflow start to end; the longest 2.0 min)"


# -- notebook --------------------------------------------------------------------------------
def test_notebook_executes_headless(store, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    nb_path = REPO / "analysis" / "notebooks" / "figures.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    monkeypatch.setenv("SGOPD_TRACKING_URI", store["uri"])
    monkeypatch.setenv("SGOPD_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("SGOPD_FIGURES_DIR", str(tmp_path / "nbfigs"))
    nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(nb_path.parent)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "nbfigs" / "fig7_conflict_fraction.png").stat().st_size > 8_000
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 5


def test_notebook_has_no_logic_of_its_own():
    src = json.loads((REPO / "analysis" / "notebooks" / "figures.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in src["cells"] if c["cell_type"] == "code")
    assert "from workbench.analysis import" in code
    assert not re.search(r"^\s*def |^\s*class |matplotlib|pyplot|MlflowClient", code, re.MULTILINE)


# -- case study ------------------------------------------------------------------------------
def test_casestudy_html(tmp_path):
    from workbench.analysis.casestudy import render_casestudy, write_casestudy

    rollouts = [
        {
            "prompt": "3 + 4 * 2 = ?",
            "tokens": ["3", " +", " <8>", "\n", "11"],
            "token_class": [1, -1, 0, 1, -1],
            "advantage": [0.5, -1.25, 0.0, 0.1, -2.0],
            "reward": 0.0,
            "step": 12,
        },
        {"prompt": "1 + 1", "tokens": ["2"], "token_class": [1], "advantage": [0.3], "reward": 1.0},
    ]
    html_text = render_casestudy(rollouts, title="case <study>")
    assert html_text.startswith("<!DOCTYPE html>") and "<script" not in html_text
    assert "&lt;8&gt;" in html_text and "case &lt;study&gt;" in html_text
    assert html_text.count('class="tok conflict"') == 2 + 1  # two tokens and the legend
    assert html_text.count('class="tok consensus"') == 3 + 1
    assert 'title="conflict; advantage -1.25"' in html_text and ">-2.00<" in html_text
    assert "reward 0 · step 12 · consensus 2 · conflict 2 · neutral 1" in html_text
    src = tmp_path / "casestudy.json"
    src.write_text(json.dumps(rollouts))
    out = write_casestudy(src, tmp_path / "out" / "casestudy.html")
    assert out.read_text() == render_casestudy(rollouts)
    with pytest.raises(ValueError, match="differ in length"):
        render_casestudy([{**rollouts[1], "advantage": [0.1, 0.2]}])
    with pytest.raises(ValueError, match=r"\+1, -1 or 0"):
        render_casestudy([{**rollouts[1], "token_class": [2]}])


# -- speed (slow: the full 26-run grid) --------------------------------------------------------
@pytest.mark.slow
def test_full_three_seed_grid_renders_every_table_and_figure(tmp_path):
    # Its speed (goal <= 10 s) is measured in benchmarks/bench_analysis.py, not here.
    from workbench.analysis.figures import write_figures
    from workbench.analysis.tables import write_tables

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_runs(uri, "sgopd-mini", make_synthetic_grid(seeds=(0, 1, 2), steps=200))
    runs = load_runs(uri, "sgopd-mini")
    tables = {p.name for p in write_tables(runs, tmp_path / "tables")}
    assert tables == {f"table{i}.{ext}" for i in (1, 2, 3) for ext in ("md", "tex", "csv")}
    figures = {p.name for p in write_figures(runs, tmp_path / "figures")}
    stems = {
        "fig4_avg_bars",
        "fig5_training_dynamics",
        "fig6_benchmarks_over_training",
        "fig7_conflict_fraction",
        "fig_pts_schedule",
    }
    assert figures == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "tables" / "table3.csv").read_text())))
    assert {r["n"] for r in rows} == {"3"}  # every cell pools the three seeds
    assert {r["run"] for r in rows} >= {"sft", "opd", "exopd-1.25", "sgopd", "pts-30-35-nofilter"}
