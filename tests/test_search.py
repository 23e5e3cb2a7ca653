"""Optuna searches: space validation, the p1 < p2 constraint, parallel workers on one storage,
kill and resume, failed and pruned trials, MLflow children and the report.

Smoke scale (tiny models, 4 steps): these check bookkeeping, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.cli import main
from workbench.search import SearchSpaceError, load_space, suggest
from workbench.search import study as S
from workbench.search.space import ParamSpec, parse_space

REPO = Path(__file__).resolve().parents[1]
SEARCH = REPO / "experiments" / "search"
P1, P2, LH = "pts.phase1_end_frac", "pts.phase2_end_frac", "gate.lambda_high"


def smoke_data(**changes) -> dict:
    data = yaml.safe_load((SEARCH / "smoke.yaml").read_text())
    data.update(changes)
    return data


def write_space(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump(smoke_data(**changes), sort_keys=False))
    return path


def trials_of(storage: str, study: str):
    return sorted(optuna.load_study(study_name=study, storage=S.open_storage(storage)).get_trials(), key=lambda t: t.number)


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def check_mlflow(uri: str, experiment: str, trials) -> dict[int, object]:
    """One child run per trial under the study's parent, its state tag equal to Optuna's."""
    runs = mlflow_runs(uri, experiment)
    parents = [r for r in runs if r.data.tags.get("workbench.kind") == "search"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("workbench.kind") == "trial"]
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert len(children) == len(by_trial) == len(trials)  # exactly one child per trial
    for t in trials:
        run = by_trial[t.number]
        assert run.data.tags.get(S.STATE_TAG) == t.state.name
        assert float(run.data.params[P1]) == pytest.approx(t.params[P1])
        want = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert run.info.status == want, (t.number, t.state.name, run.info.status)
    # Each trial's training runs (one per seed) are children of its run; pruning kills the
    # seed run it stopped (KILLED, tagged PRUNED), it does not fail it.
    trial_of = {run.info.run_id: number for number, run in by_trial.items()}
    state = {t.number: t.state.name for t in trials}
    for r in (r for r in runs if r.data.tags.get("workbench.kind") == "trial-run"):
        number = trial_of[r.data.tags["mlflow.parentRunId"]]
        assert int(r.data.tags["optuna.trial"]) == number
        if state[number] == "COMPLETE":
            assert r.info.status == "FINISHED"
        if state[number] == "PRUNED" and r.info.status != "FINISHED":
            assert r.info.status == "KILLED" and r.data.tags.get(S.STATE_TAG) == "PRUNED", r.info.status
    return by_trial


# -- the space is validated before anything runs ---------------------------------------------------

PARAMS = smoke_data()["params"]


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"bogus": 1}, ["bogus: unknown key", "valid keys here"]),
        (
            {"params": {**PARAMS, "gate.lambda_hgh": {"low": 1, "high": 2}}},
            ["gate.lambda_hgh", "not a RunConfig field", "lambda_high"],
        ),
        ({"params": {**PARAMS, P1: {"low": 0.6, "high": 0.1}}}, [f"params.{P1}", "low (0.6) must be < high (0.1)"]),
        ({"params": {**PARAMS, LH: {"low": 1, "high": 2, "stepp": 1}}}, [f"params.{LH}.stepp: unknown key"]),
        (
            {"params": {**PARAMS, "gate.disagree_interp_beta": {"low": 0, "high": 1.5}}},
            ["gate.disagree_interp_beta", "less than or equal to 1"],
        ),
        ({"params": {**PARAMS, P2: {"low": 0.2, "high": 0.5, "above": P1, "min_gap": 0.05}}}, [P2, "high (0.5) must be >="]),
        ({"params": {P2: PARAMS[P2], P1: PARAMS[P1]}}, [f"{P2}.above", "must be a parameter listed before"]),
        ({"params": {**PARAMS, "seed": {"low": 0, "high": 3, "type": "int"}}}, ["seed", "set by the search itself"]),
        ({"sampler": {"name": "nope"}}, ["sampler.name", "unknown sampler 'nope'", "valid: tpe, random"]),
        ({"pruner": {"name": "nope"}}, ["pruner.name", "unknown pruner 'nope'", "median", "successive_halving"]),
        ({"sampler": {"name": "tpe", "options": {"n_startup": 3}}}, ["sampler.options", "n_startup"]),
        ({"n_trials": 0}, ["n_trials", "greater than 0"]),
        ({"n_trials": -2}, ["n_trials", "greater than 0"]),
        ({"metric": "accuracy"}, ["metric", "unknown metric 'accuracy'", "avg_at_k"]),
        ({"base": "nope"}, ["base", "unknown run 'nope'"]),
        ({"eval_every": 4}, ["eval_every (4) must be < the run's steps (4)"]),
        ({"fixed": {"eval.benchmarks": ["bench1"]}}, ["eval.benchmarks", "set by the search itself"]),
        ({"enqueue": [{"label": "x", "params": {P1: 0.5, P2: 0.45}}]}, [f"enqueue.0.params.{P2}", "outside the space"]),
        ({"enqueue": [{"label": "x", "params": {"gate.lambda_base": 1.2}}] * 5}, ["enqueue", "do not fit in n_trials"]),
    ],
)
def test_malformed_spaces_are_rejected_naming_the_field(changes, expected):
    with pytest.raises(SearchSpaceError) as e:
        parse_space(smoke_data(**changes))
    for part in expected:
        assert part in str(e.value), str(e.value)


def test_shipped_spaces_are_valid():
    for path in SEARCH.glob("*.yaml"):
        space, scale = load_space(path)
        assert space.n_trials >= 1 and scale == space.scale
    space, _ = load_space(SEARCH / "pts-lambda.yaml")
    assert {P1, P2, LH, "gate.lambda_base", "gate.disagree_interp_beta"} <= set(space.params)
    assert space.n_trials == 20 and space.direction == "maximize" and space.params[P2].above == P1


def test_a_malformed_space_fails_before_any_trial_runs(tmp_path, capsys):
    bad = write_space(tmp_path / "bad.yaml", pruner={"name": "medain"})
    out = tmp_path / "out"
    rc = main(["search", str(bad), "--out", str(out), "--world", str(tmp_path / "no-world"), "--workers", "2"])
    assert rc == 2
    assert "pruner.name" in capsys.readouterr().err
    assert not out.exists()  # no storage, no study, no run directory


# -- p1 < p2, always -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    low=st.floats(0.0, 0.5),
    width=st.floats(0.05, 0.4),
    gap=st.floats(0.001, 0.2),
    extra=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**16),
)
def test_the_sampler_keeps_p1_below_p2(low, width, gap, extra, seed):
    p1 = ParamSpec(low=low, high=low + width)
    p2 = ParamSpec(low=low, high=low + width + gap + extra, above=P1, min_gap=gap)
    data = smoke_data(params={P1: p1.model_dump(exclude_none=True), P2: p2.model_dump(exclude_none=True)}, enqueue=[])
    data["params"][P2]["above"] = P1
    space = parse_space(data)[0] if low + width + gap + extra <= 1.0 else None
    if space is None:
        return  # beyond [0, 1]: the run config rejects it (checked above)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    for _ in range(12):
        trial = study.ask()
        v = suggest(trial, space)
        assert v[P1] < v[P2] and v[P2] >= v[P1] + gap - 1e-9 and v[P2] <= p2.high + 1e-9
        study.tell(trial, v[P2] - v[P1])  # pushes TPE towards the edge it must not cross


def test_pts_lambda_space_draws_only_valid_run_configs():
    from workbench.grid import resolve_config
    from workbench.search.space import base_config_path, trial_overrides

    space, scale = load_space(SEARCH / "pts-lambda.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=space.make_sampler(), direction="maximize")
    for e in space.enqueue:
        study.enqueue_trial(dict(e.params))
    for i in range(40):
        trial = study.ask()
        v = suggest(trial, space)
        assert v[P1] < v[P2]
        cfg = resolve_config(base_config_path(space.base), scale=scale, overrides=trial_overrides(space, v, seed=0, name="t"))
        assert cfg.pts.phase1_end_frac < cfg.pts.phase2_end_frac and cfg.eval.benchmarks == ("validation",)
        study.tell(trial, -abs(v[P1] - 0.3) - abs(v[LH] - 1.8))


# -- end to end ------------------------------------------------------------------------------------


def test_two_workers_share_one_study(smoke_world, tmp_path, store):
    space = write_space(tmp_path / "space.yaml", n_trials=5)
    out, reports, storage = tmp_path / "out", tmp_path / "reports", str(tmp_path / "study.journal")
    rc = main(
        [
            "search",
            str(space),
            "--workers",
            "2",
            "--threads",
            "1",
            "--storage",
            storage,
            "--world",
            str(smoke_world),
            "--out",
            str(out),
            "--reports",
            str(reports),
        ]
    )
    assert rc == 0
    trials = trials_of(storage, "smoke")
    assert len(trials) == 5  # exact: never more, never fewer
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(t.params[P1] < t.params[P2] for t in trials)
    assert len({t.user_attrs[S.OWNER]["pid"] for t in trials}) == 2, "both workers ran trials"
    assert trials[0].user_attrs[S.LABEL].startswith("paper:") and trials[0].params[P1] == 0.3
    check_mlflow(store, "sgopd-search-smoke", trials)
    # Trial directories are normal run directories, resumable and evaluated on the validation split.
    for t in trials:
        ev = json.loads((out / "smoke" / f"trial-{t.number}" / "seed0" / "eval.json").read_text())
        assert list(ev["benchmarks"]) == ["validation"]
    # The best trial alone is evaluated on the four benchmarks; the report shows it.
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    bench = json.loads((out / "smoke" / "benchmarks" / f"trial-{best.number}" / "seed0.json").read_text())
    assert sorted(bench["benchmarks"]) == ["bench1", "bench2", "bench3", "bench4"]
    summary = (reports / "smoke" / "summary.md").read_text()
    assert f"best: trial {best.number}" in summary and "optuna-dashboard" in summary and storage in summary
    assert "paper: SG-OPD default" in summary
    assert (reports / "smoke" / "history.png").stat().st_size > 1000


def test_a_killed_worker_s_trial_resumes_from_its_checkpoint(smoke_world, tmp_path, store):
    # 12 steps a trial, a checkpoint every 2: a wide window to kill the worker mid-trial.
    space = write_space(
        tmp_path / "space.yaml", n_trials=3, eval_every=4, fixed={"train.keep_checkpoints_at": [], "train.steps": 12}
    )
    out, storage = tmp_path / "out", str(tmp_path / "study.journal")
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        "search",
        str(space),
        "--workers",
        "1",
        "--threads",
        "1",
        "--storage",
        storage,
        "--world",
        str(smoke_world),
        "--out",
        str(out),
        "--no-report",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "smoke" / "trial-1" / "seed0" / "checkpoints" / "step-000004" / "state.json"
    deadline = time.time() + 300
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the second trial never reached step 4"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = time.time() * 1000

    before = trials_of(storage, "smoke")
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING", "WAITING"]
    run_dir = out / "smoke" / "trial-1" / "seed0"
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]

    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is gone; re-queued" in r.stderr
    after = trials_of(storage, "smoke")
    assert len(after) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in after)
    assert after[1].params == before[1].params  # the same trial, the same parameters
    assert after[1].user_attrs[S.ATTEMPTS] == 2
    # Resumed, not restarted: the same MLflow run, steps before the kill kept, every step once.
    assert json.loads((run_dir / "tracking.json").read_text())["run_id"] == run_id
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "train/loss" in x]
    assert steps == list(range(1, 13 if after[1].state.name == "COMPLETE" else steps[-1] + 1))
    assert any(x["time"] < killed_at for x in lines if x["step"] <= 4)
    assert any(x["time"] > killed_at for x in lines)
    check_mlflow(store, "sgopd-search-smoke", after)


def test_failed_and_pruned_trials_are_recorded_and_the_search_goes_on(smoke_world, tmp_path, store, monkeypatch):
    """Validation scores are faked from lambda_high so pruning is deterministic; lambda_high 1.2 raises."""
    import workbench.mini.evaluate as E
    import workbench.mini.runs as R
    import workbench.mini.trainer as T
    from workbench.search import run_search

    settings_ = [1.8, 1.2, 2.0, 1.0, 1.1]
    enq = [
        {"label": f"lh {lh}", "params": {P1: 0.3, P2: 0.35, LH: lh, "gate.lambda_base": 1.25, "gate.disagree_interp_beta": 0.5}}
        for lh in settings_
    ]
    space = write_space(tmp_path / "space.yaml", n_trials=5, enqueue=enq)
    current = {}
    real_train_run = R.train_run

    def train_run(cfg, **kwargs):
        if cfg.gate.lambda_high == 1.2:
            raise RuntimeError("boom: a broken trial")
        current["lh"] = cfg.gate.lambda_high
        return real_train_run(cfg, **kwargs)

    def fake_evaluate(model, benchmarks, **kwargs):
        acc = current.get("lh", 1.5) / 3
        per = {b: {"avg_at_k": acc, "pass_at_k": acc} for b in benchmarks}
        return {"k": 2, "n_samples": 2, "avg_at_k": acc, "pass_at_k": acc, "benchmarks": per}

    monkeypatch.setattr(R, "train_run", train_run)
    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # an RDB URL this time
    ctx = S.make_context(space, out=tmp_path / "out", world=smoke_world, storage=storage)
    assert run_search(ctx, workers=1, threads=1, reports_dir=tmp_path / "reports") == 0

    trials = trials_of(storage, "smoke")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "PRUNED", "PRUNED"]
    assert "boom" in trials[1].user_attrs[S.ERROR]
    assert trials[0].value == pytest.approx(60.0) and trials[2].value == pytest.approx(200 / 3)
    assert [trials[i].user_attrs[S.STEPS_RUN] for i in (3, 4)] == [2, 2]  # pruned at the intermediate value
    by_trial = check_mlflow(store, "sgopd-search-smoke", trials)
    assert "boom" in by_trial[1].data.tags["failure"]
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert "pruned trials: 2; training steps they did not run: 4" in summary
    assert "best: trial 2" in summary and "1 FAIL" in summary
