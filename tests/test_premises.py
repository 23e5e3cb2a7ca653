"""The miniature world's premises (docs/mini-world.md, "The paper's regime"): the probe
``prepare`` writes into the manifest, each premise's status rule on planted numbers, the
report's section and its ``runs.csv``, and the ``premises`` facts of experiments/grid.yaml."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from workbench import grid as G
from workbench.analysis import premises as P
from workbench.analysis.load import HISTORY_COLUMNS, Runs
from workbench.analysis.synthetic import MINI_BENCHMARKS, SyntheticRun, make_synthetic_grid
from workbench.errors import UserError
from workbench.mini.premises import step_stats, well_formed, world_premises
from workbench.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MANIFEST = {
    "models": {"teacher": {"accuracy": {"greedy": {"train_dist": 0.85}}}},
    "premises": {
        "n_prompts": 256,
        "samples": 8,
        "student_well_formed": 0.995,
        "teacher_greedy_wrong": 0.15,
        "teacher_wrong_student_right": 0.07,
    },
}
# Planted final AVG avg@k per seed 0, 1, 2: every premise holds.
AVG = {
    "opd": [30.0, 31.0, 32.0],
    "seqkd": [27.0, 28.0, 29.0],
    "gkd": [28.0, 29.0, 30.0],
    "sft-equal-compute": [29.0, 30.0, 31.0],
    "student-init": [30.0, 30.0, 30.0],  # / 67.5: 0.44x
}
TEACHER = [90.0, 80.0, 60.0, 40.0]  # bench1..bench4; AVG 67.5


# -- the probe (workbench.mini.premises) ------------------------------------------------------
@pytest.mark.parametrize(
    "text, ok",
    [
        ("56-29+3*5;43;#43", True),
        ("#7", True),
        ("43;#43#", False),  # a second marker
        ("43;43", False),  # no marker
        ("43;#", False),  # nothing after it
        ("43;#4a", False),
        ("#-3", False),
    ],
)
def test_well_formed(text, ok):
    assert well_formed(text) is ok


def test_step_stats_by_hand():
    # 7*8-29+3*5 = 42. "56-29+3*5" keeps 42 (right); "56-29+16" is 43 (a slip: wrong, and the
    # state the solver goes on from); "28+15" and "43" keep 43 (right); "#43" is no step.
    assert step_stats("7*8-29+3*5=", "56-29+3*5;56-29+16;28+15;43;#43") == (0, 1, 0, 3)
    # a retracted slip "56-2" (54) is a wrong step, retracted; the redo continues from 42
    assert step_stats("7*8-29+3*5=", "56-2!56-29+3*5;27+15;42;#42") == (1, 1, 0, 3)
    # retracting a right step is a false alarm; an unparsable step is wrong
    assert step_stats("7*8-29+3*5=", "56-29+15!56-29+15;x;42;#42") == (0, 1, 1, 3)


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory):
    from workbench.mini.prepare import prepare

    out = tmp_path_factory.mktemp("world") / "smoke"
    return out, prepare(out, seed=0, preset="smoke")


def test_prepare_writes_the_premises_probe_outside_the_hash(smoke_world):
    from workbench.mini.prepare import prepare
    from workbench.mini.world import PRESETS, config_hash

    out, man = smoke_world
    probe = man["premises"]
    assert probe["n_prompts"] == min(256, PRESETS["smoke"].eval_train_size) and probe["samples"] == 8
    for key in ("student_well_formed", "teacher_greedy_wrong", "teacher_wrong_student_right"):
        assert 0.0 <= probe[key] <= 1.0, key
    assert probe["teacher_wrong_student_right"] <= probe["teacher_greedy_wrong"]
    assert json.loads((out / "manifest.json").read_text())["premises"] == probe
    assert man["config_hash"] == config_hash(PRESETS["smoke"], 0)  # a measurement, not config
    assert prepare(out, seed=0, preset="smoke") == man  # an up-to-date world is left alone


def test_world_premises_is_deterministic(smoke_world):
    from workbench.mini.world import load_world

    out, _ = smoke_world
    w = load_world(out)
    pool = [p for ps in w["train"].values() for p in ps]
    kw = {"prompts": 5, "samples": 3, "max_new_tokens": 12}
    a = world_premises(w["teacher"], w["student"], pool, seed=1, **kw)
    assert a == world_premises(w["teacher"], w["student"], pool, seed=1, **kw)
    assert a["n_prompts"] == 5 and a["samples"] == 3
    assert all(0.0 <= a[k] <= 1.0 for k in ("student_well_formed", "teacher_greedy_wrong", "teacher_wrong_student_right"))
    with pytest.raises(ValueError, match="nothing to probe"):
        world_premises(w["teacher"], w["student"], [], seed=0, **kw)


# -- the premises' status rules (workbench.analysis.premises) -----------------------------------
def as_runs(grid: list[SyntheticRun]) -> Runs:
    """``Runs`` straight from synthetic runs (what ``load_runs`` reads back from MLflow)."""
    rows, hist = [], []
    for i, sr in enumerate(grid):
        mid = f"r{i}"
        row = {"mlflow_run_id": mid, "run": sr.run, "group": sr.group, "seed": sr.seed, "method": sr.method}
        row |= {"backend": "mini", "kind": sr.kind, "status": sr.status, "git_commit": "0" * 40}
        row |= {f"metrics.{k}": sr.final(k) for k in sr.history}
        row |= {f"params.{k}": v for k, v in sr.params.items()}
        rows.append(row)
        hist += [(sr.run, sr.seed, mid, k, s, v) for k, pts in sr.history.items() for s, v in pts]
    return Runs(pd.DataFrame(rows), pd.DataFrame(hist, columns=HISTORY_COLUMNS), "sgopd-test")


def _set_final(sr: SyntheticRun, metric: str, value: float) -> None:
    pts = sr.history[metric]
    last = max(range(len(pts)), key=lambda i: pts[i][0])
    pts[last] = (pts[last][0], value)


def _set_teacher(sr: SyntheticRun, benches: list[float]) -> None:
    for b, v in zip(MINI_BENCHMARKS, benches):
        _set_final(sr, f"eval/{b}/avg_at_k", v)
    _set_final(sr, "eval/avg_at_k", sum(benches) / len(benches))


@pytest.fixture(scope="module")
def planted() -> list[SyntheticRun]:
    grid = make_synthetic_grid(seeds=SEEDS, steps=20, eval_every=0, runs=("opd", "seqkd", "gkd", "sft-equal-compute", "sgopd"))
    # a prepared model is evaluated once per training seed in the workflow
    for sr in [sr for sr in grid if sr.run in ("teacher", "student-init")]:
        grid += [SyntheticRun(sr.run, s, sr.group, sr.method, sr.kind, history=copy.deepcopy(sr.history)) for s in SEEDS[1:]]
    for sr in grid:
        if sr.run in AVG:
            _set_final(sr, "eval/avg_at_k", AVG[sr.run][sr.seed])
        elif sr.run == "teacher":
            _set_teacher(sr, TEACHER)
    return grid


def statuses(grid, manifest=MANIFEST) -> dict[str, str]:
    return {p.id: p.status for p in P.evaluate_premises(as_runs(grid), manifest, n_resamples=200)}


def edited(grid, edit) -> list[SyntheticRun]:
    grid = copy.deepcopy(grid)
    for sr in grid:
        edit(sr)
    return grid


def test_every_premise_holds_on_the_planted_world(planted):
    premises = P.evaluate_premises(as_runs(planted), MANIFEST, n_resamples=200)
    by_id = {p.id: p for p in premises}
    assert list(by_id) == ["P1a", "P1b", "P1c", "P2a", "P2b", "P3a", "P3b", "P4a", "P4b"]
    assert {p.status for p in premises} == {P.HOLDS}
    assert P.regime_sentence(premises) == "All premises hold: this world is in the paper's regime."
    # CIs and per-seed values
    assert by_id["P2a"].measured.startswith("student-init / teacher = 0.44 [0.44, 0.44]")
    assert "s0 0.44, s1 0.44, s2 0.44" in by_id["P2a"].measured
    assert "opd - seqkd = 3.00 [3.00, 3.00] points; per seed: s0 3.00, s1 3.00, s2 3.00" in by_id["P3a"].measured
    assert "gkd - seqkd = 1.00" in by_id["P3a"].measured
    assert "opd - sft-equal-compute = 1.00" in by_id["P3b"].measured
    assert (
        "bench1 90.0 [90.0, 90.0] > bench2 80.0" in by_id["P1b"].measured
        and "s2 90.0 > 80.0 > 60.0 > 40.0" in by_id["P1b"].measured
    )
    assert by_id["P1a"].measured == "85.0% (world manifest)"
    assert by_id["P4b"].measured == "7.0% of prompts (256 training prompts); teacher greedy wrong on 15.0%"
    assert by_id["P2b"].measured == "99.5% of student-init samples well formed (256 prompts x 8 samples)"
    assert "sgopd at step 1: 0.3" in by_id["P4a"].measured


def _teacher(seed, benches):
    def edit(sr):
        if sr.run == "teacher" and sr.seed == seed:
            _set_teacher(sr, benches)

    return edit


def _avg(run, values):
    def edit(sr):
        if sr.run == run:
            _set_final(sr, "eval/avg_at_k", values[sr.seed])

    return edit


def _conflict_at_first_step(seed, value):
    def edit(sr):
        if sr.run == "sgopd" and sr.seed == seed:
            sr.history["train/conflict_frac"][0] = (1, value)

    return edit


def _manifest(**kw):
    man = copy.deepcopy(MANIFEST)
    if "greedy" in kw:
        man["models"]["teacher"]["accuracy"]["greedy"]["train_dist"] = kw.pop("greedy")
    man["premises"].update(kw)
    return man


@pytest.mark.parametrize(
    "edit, manifest, failing",
    [
        (None, _manifest(greedy=0.79), {"P1a"}),
        (None, _manifest(greedy=1.0), {"P1c"}),  # never wrong: P1a holds
        (_teacher(1, [80.0, 90.0, 60.0, 40.0]), MANIFEST, {"P1b"}),  # one seed out of order
        (_teacher(2, [90.0, 80.0, 60.0, 0.0]), MANIFEST, {"P1b"}),  # the hardest benchmark at 0
        (_teacher(0, [100.0, 80.0, 60.0, 40.0]), MANIFEST, {"P1c"}),  # never wrong on bench1, seed 0
        (_avg("student-init", [10.0, 10.0, 10.0]), MANIFEST, {"P2a"}),  # 0.15x
        (None, _manifest(student_well_formed=0.98), {"P2b"}),
        (_avg("opd", [30.0, 31.0, 30.5]), MANIFEST, {"P3a"}),  # + 1.5 on seed 2 (mean 2.5: every seed counts)
        (_avg("gkd", [28.0, 29.0, 28.9]), MANIFEST, {"P3a"}),  # below SeqKD on seed 2
        (_avg("sft-equal-compute", [31.0, 32.0, 33.0]), MANIFEST, {"P3b"}),
        (_conflict_at_first_step(1, 0.1), MANIFEST, {"P4a"}),  # only the first step counts
        (None, _manifest(teacher_wrong_student_right=0.04), {"P4b"}),
    ],
)
def test_each_premise_fails_by_its_own_rule(planted, edit, manifest, failing):
    got = statuses(edited(planted, edit) if edit else planted, manifest)
    assert {k for k, v in got.items() if v == P.FAILS} == failing
    assert set(got.values()) <= {P.HOLDS, P.FAILS}


def test_mean_rules_hold_when_one_seed_is_out_of_range(planted):
    # P2a and P3b are on the mean over seeds: 0.2x and -1 point on seed 0 do not fail them
    def edit(sr):
        _avg("student-init", [13.5, 30.0, 30.0])(sr)
        _avg("sft-equal-compute", [31.0, 30.0, 31.0])(sr)

    got = statuses(edited(planted, edit))
    assert got["P2a"] == got["P3b"] == P.HOLDS


def test_missing_data_is_not_measured_with_the_reason(planted):
    by_id = {p.id: p for p in P.evaluate_premises(as_runs(planted), None, n_resamples=200)}
    for pid in ("P1a", "P2b", "P4b"):
        assert (by_id[pid].status, by_id[pid].measured) == (P.NOT_MEASURED, P.NO_MANIFEST), pid
    assert by_id["P1c"].status == P.NOT_MEASURED and P.NO_MANIFEST in by_id["P1c"].measured
    assert by_id["P3a"].status == P.HOLDS
    sentence = P.regime_sentence(list(by_id.values()))
    assert sentence.startswith("No measured premise fails, but P1a, P1c, P2b, P4b are not measured")

    old_world = {"models": MANIFEST["models"]}  # prepared before the probe existed
    by_id = {p.id: p for p in P.evaluate_premises(as_runs(planted), old_world, n_resamples=200)}
    assert by_id["P2b"].status == by_id["P4b"].status == P.NOT_MEASURED and "rebuild" in by_id["P2b"].measured
    assert by_id["P1a"].status == by_id["P1c"].status == P.HOLDS

    without = lambda *runs: [sr for sr in planted if sr.run not in runs]
    by_id = {p.id: p for p in P.evaluate_premises(as_runs(without("teacher", "sft-equal-compute", "seqkd")), MANIFEST)}
    for pid in ("P1b", "P1c", "P2a", "P3a", "P3b"):
        assert by_id[pid].status == P.NOT_MEASURED, pid
    assert by_id["P3a"].measured == "no eval/avg_at_k for seqkd"
    assert by_id["P3b"].measured == "no eval/avg_at_k for sft-equal-compute"
    assert by_id["P2a"].measured == "no eval/avg_at_k for teacher"
    assert by_id["P1b"].measured == "no per-benchmark avg@k (eval/<benchmark>/avg_at_k) for teacher"

    no_history = as_runs(planted)
    no_history.history = no_history.history[no_history.history["metric"] != "train/conflict_frac"]
    (p4a,) = [p for p in P.evaluate_premises(no_history, MANIFEST) if p.id == "P4a"]
    assert (p4a.status, p4a.measured) == (P.NOT_MEASURED, "no train/conflict_frac history for sgopd")


def test_a_measured_failure_outweighs_a_missing_part(planted):
    grid = [sr for sr in edited(planted, _avg("opd", [27.0, 28.0, 29.0])) if sr.run != "gkd"]
    (p3a,) = [p for p in P.evaluate_premises(as_runs(grid), MANIFEST) if p.id == "P3a"]
    assert p3a.status == P.FAILS and "no eval/avg_at_k for gkd" in p3a.measured
    premises = P.evaluate_premises(as_runs(grid), None)
    assert P.regime_sentence(premises).startswith("**This world is not in the paper's regime for: P3a, P3b.** Not measured: P1a")


def test_read_manifest(tmp_path):
    assert P.read_manifest(None) is None and P.read_manifest(MANIFEST) == MANIFEST
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    assert P.read_manifest(tmp_path / "manifest.json") == MANIFEST
    with pytest.raises(UserError, match="no world manifest at"):
        P.read_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(UserError, match="not a JSON object"):
        P.read_manifest(tmp_path / "bad.json")


# -- the report: its premises section and runs.csv ----------------------------------------------
def test_report_premises_section_and_runs_csv(planted, tmp_path):
    from workbench.analysis.report import RUNS_CSV_COLUMNS, write_report

    grid = edited(planted, _avg("opd", [27.0, 28.0, 29.0]))
    runs = as_runs(grid)
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    out = tmp_path / "rep"
    text = write_report(
        runs, out, make_figures=False, command="x", n_resamples=200, world_manifest=tmp_path / "manifest.json"
    ).read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:3] == ["## Provenance", "## Premises of the miniature world", "## Statistics and verdict rule"]
    section = text[text.index("## Premises") : text.index("## Statistics")]
    assert "| premise | threshold | measured | status |" in section
    assert "| P3a. on-policy beats off-policy |" in section and section.count("**holds**") == 7
    assert "**This world is not in the paper's regime for: P3a, P3b.**" in section
    assert "[runs.csv](runs.csv)" in text

    table = pd.read_csv(out / "runs.csv")
    assert list(table.columns) == RUNS_CSV_COLUMNS
    metrics = {"eval/avg_at_k", "eval/pass_at_k"} | {f"eval/{b}/{k}" for b in MINI_BENCHMARKS for k in ("avg_at_k", "pass_at_k")}
    assert set(table["metric"]) == metrics
    assert len(table) == len(grid) * len(metrics)  # one row per run x seed x metric
    assert table.equals(table.sort_values(["run", "seed", "metric"], ignore_index=True))
    row = table[(table["run"] == "opd") & (table["seed"] == 2) & (table["metric"] == "eval/avg_at_k")]
    assert row["value"].tolist() == [29.0] and row["method"].tolist() == ["opd"]
    assert set(table.loc[table["run"] == "sft-equal-compute", "method"]) == {"sft"}
    assert set(table.loc[table["run"] == "sgopd@90%", "method"]) == {"sgopd"}

    # no manifest (a verl scale): said so, the world-level premises not measured
    text = write_report(runs, tmp_path / "verl", make_figures=False, command="x", n_resamples=200).read_text()
    assert "No world manifest was given" in text and "| P2b." in text and "**not measured**" in text


def test_extra_evaluation_without_a_method_tag_uses_its_config_or_label():
    from workbench.analysis.report import runs_table

    frame = pd.DataFrame(
        {
            "run": ["teacher", "student-init"],
            "seed": [0, 0],
            "method": ["", ""],
            "params.method": ["opd", None],
            "metrics.eval/avg_at_k": [60.0, 30.0],
            "metrics.train/loss": [0.1, 0.2],  # not an evaluation metric
        }
    )
    table = runs_table(Runs(frame, pd.DataFrame(columns=HISTORY_COLUMNS)))
    assert table.values.tolist() == [
        ["student-init", 0, "student-init", "eval/avg_at_k", 30.0],
        ["teacher", 0, "opd", "eval/avg_at_k", 60.0],
    ]


def test_report_cli_reads_the_world_manifest(planted, tmp_path, capsys):
    from workbench.cli import main

    as_runs(planted).save(tmp_path / "collect")
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    args = ["report", "--collected", str(tmp_path / "collect"), "--out-dir", str(tmp_path / "rep"), "--command", "x"]
    args += ["--reuse-figures", "--reuse-tables"]
    assert main([*args, "--world-manifest", str(tmp_path / "nope.json")]) == 2
    assert "no world manifest at" in capsys.readouterr().err
    assert main([*args, "--world-manifest", str(tmp_path / "manifest.json")]) == 0
    text = (tmp_path / "rep" / "REPRODUCTION.md").read_text()
    assert "All premises hold: this world is in the paper's regime." in text
    assert (tmp_path / "rep" / "runs.csv").is_file()


# -- experiments/grid.yaml ----------------------------------------------------------------------
def test_grid_premises_name_runs_or_extra_evaluations(tmp_path):
    assert G.PREMISE_RUNS["P3b"] == ("opd", "sft-equal-compute") and G.PREMISE_RUNS["P2a"] == ("student-init", "teacher")
    experiments = shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    facts = experiments / "grid.yaml"
    text = facts.read_text()
    facts.write_text(text.replace("P3b: [opd, sft-equal-compute]", "P3b: [opd, nope]"))
    with pytest.raises(UnknownNameError) as e:
        G.load_facts(experiments)
    valid = G.run_ids(experiments) + [x.label for x in G.FACTS.extra_evals.values()]
    assert str(e.value) == f"{facts}: premises.P3b: unknown run 'nope'; valid: {', '.join(valid)}"
    facts.write_text(text.replace("P4a: [sgopd]", "P4a: []"))
    with pytest.raises(UserError, match=r"grid\.yaml: premises\.P4a: must be a non-empty list of run ids"):
        G.load_facts(experiments)
    facts.write_text(text[: text.index("premises:")] + text[text.index("# The runs each figure draws") :])
    with pytest.raises(UserError, match=r"top level: keys \['claims', 'extra_evals', 'figures'\]; valid: .*premises"):
        G.load_facts(experiments)


def test_runs_csv_values_carry_no_float_noise():
    """A mean of avg@k such as (71.125 + 52.25 + 14.125 + 9.5) / 4 prints as 36.75, not as
    36.75000000000001; the exact values a grid gives (multiples of 2^-5 points) survive."""
    from types import SimpleNamespace

    import pandas as pd

    from workbench.analysis.report import runs_table

    noisy = sum([71.125, 52.25, 14.125, 9.5]) / 4 + 1e-14
    frame = pd.DataFrame(
        {"run": ["opd", "opd"], "seed": [0, 1], "method": ["opd", "opd"], "metrics.eval/avg_at_k": [noisy, 33.03125]}
    )
    table = runs_table(SimpleNamespace(runs=frame))
    assert table["value"].tolist() == [36.75, 33.03125]
    assert table.to_csv(index=False).splitlines()[1:] == ["opd,0,opd,eval/avg_at_k,36.75", "opd,1,opd,eval/avg_at_k,33.03125"]
