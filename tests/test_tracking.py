"""The run-tracking layer against real MLflow stores (SQLite files and a local server)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from workbench import tracking
from workbench.io import atomic_dir, atomic_write_json, atomic_write_text
from workbench.tracking import (
    NonFiniteLossError,
    ResumeError,
    StopRun,
    Tracker,
    check_finite,
    default_tracking_uri,
    display_uri,
    load_history,
    standard_tags,
)

KEYS = [f"train/m{i}" for i in range(3)]


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from tests
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An empty MLflow database, made once: creating its tables takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def store(empty_db, tmp_path_factory) -> str:
    """One SQLite store shared by the in-process tests (each uses its own run directory)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    shutil.copy(empty_db, path)
    return f"sqlite:///{path}"


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def steps_of(uri, run_id, key) -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


def metrics(step: int) -> dict[str, float]:
    return {k: step + i / 10 for i, k in enumerate(KEYS)}


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class FakeConfig:
    name, group, seed, method, backend = "gate-1.5", "b", 3, "sgopd", "mini"

    def config_hash(self) -> str:
        return "abc123"


# -- what lands in MLflow --------------------------------------------------------------
def test_params_tags_metrics_and_artifacts_land(store, tmp_path):
    parent = (
        client(store)
        .create_run(client(store).create_experiment("grid-parent", artifact_location=str(tmp_path / "art")))
        .info.run_id
    )
    config = {"method": "sgopd", "gate": {"lambda_high": 1.5, "disagree_mode": "interp"}, "seeds": [1, 2]}
    with Tracker(
        tmp_path / "run",
        experiment="sgopd-mini",
        run_name="gate-1.5",
        tags=standard_tags(FakeConfig()),
        config=config,
        parent_run_id=parent,
        tracking_uri=store,
    ) as tr:
        assert not tr.resumed
        for step in range(1, 11):
            tr.log_metrics(metrics(step), step)
        tr.commit(5)
        tr.log_metrics({"eval/avg_at_k": 0.25}, 10)
        tr.log_dict({"avg_at_k": 0.25}, "eval/results.json")

    run = client(store).get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "gate-1.5"
    assert client(store).get_experiment(run.info.experiment_id).name == "sgopd-mini"
    assert run.data.params == {"method": "sgopd", "gate.lambda_high": "1.5", "gate.disagree_mode": "interp", "seeds": "[1, 2]"}
    tags = run.data.tags
    assert {k: tags[k] for k in ("run", "group", "seed", "method", "backend", "config_hash")} == {
        "run": "gate-1.5",
        "group": "b",
        "seed": "3",
        "method": "sgopd",
        "backend": "mini",
        "config_hash": "abc123",
    }
    assert tags["mlflow.parentRunId"] == parent
    assert len(tags.get("git_commit", "0" * 40)) == 40  # present in a git checkout, absent otherwise
    for key in KEYS:
        history = client(store).get_metric_history(tr.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [(s, metrics(s)[key]) for s in range(1, 11)]
    assert steps_of(store, tr.run_id, "eval/avg_at_k") == [10]
    artifacts = {a.path for a in client(store).list_artifacts(tr.run_id)}
    assert {"config.json", "metrics.jsonl", "eval"} <= artifacts
    # artifacts sit beside the database, not in ./mlruns under whatever the cwd was
    assert run.info.artifact_uri.startswith(Path(store[len("sqlite:///") :]).parent.as_uri())
    history = load_history(tmp_path / "run")
    assert [r["step"] for r in history] == list(range(1, 11)) + [10]
    assert history[0]["train/m1"] == 1.1 and history[-1]["eval/avg_at_k"] == 0.25


def test_metrics_go_in_batches_and_only_once_committed(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    calls = {"log_batch": 0, "log_metric": 0}
    for name in calls:
        original = getattr(MlflowClient, name)

        def spy(self, *a, _name=name, _original=original, **kw):
            if _name == "log_metric" or kw.get("metrics"):
                calls[_name] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(MlflowClient, name, spy)
    tr = Tracker(tmp_path / "run", experiment="batch", run_name="b", tracking_uri=store)
    for step in range(1, 21):
        tr.log_metrics({f"train/k{i}": float(i) for i in range(10)}, step)
        if step == 3:
            assert steps_of(store, tr.run_id, "train/k0") == []  # nothing before a checkpoint
        if step % 5 == 0:
            tr.commit(step)
            assert steps_of(store, tr.run_id, "train/k0") == list(range(1, step + 1))
    tr.finish()
    assert calls == {"log_batch": 4, "log_metric": 0}  # 200 points, one call per commit


def test_steps_never_go_back_and_names_are_checked(store, tmp_path):
    with Tracker(tmp_path / "run", experiment="checks", run_name="c", tracking_uri=store) as tr:
        tr.log_metrics({"train/loss": 1.0}, 5)
        tr.log_metrics({"eval/avg_at_k": 0.5}, 5)  # another metric at the same step is fine
        with pytest.raises(ValueError, match="already logged at step 5"):
            tr.log_metrics({"train/loss": 2.0}, 5)
        with pytest.raises(ValueError, match="truncate_after"):
            tr.log_metrics({"train/loss": 2.0}, 4)
        with pytest.raises(ValueError, match="invalid metric name"):
            tr.log_metrics({"step": 1.0}, 6)
    assert steps_of(store, tr.run_id, "train/loss") == [5]


# -- ending a run ----------------------------------------------------------------------
def test_nan_loss_stops_the_run_and_marks_it_failed(store, tmp_path):
    with (
        pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3: training diverged"),
        Tracker(tmp_path / "run", experiment="ends", run_name="nan", tracking_uri=store) as tr,
    ):
        for step in range(1, 6):
            tr.log_metrics({"train/loss": 1.0 if step < 3 else math.nan}, step)
    run = client(store).get_run(tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"].startswith("NonFiniteLossError: loss is nan at step 3")
    assert math.isnan(load_history(tmp_path / "run")[-1]["train/loss"])  # the bad value is on record
    with pytest.raises(NonFiniteLossError, match="loss is inf at step 7"):
        check_finite(float("inf"), 7)
    check_finite(0.0, 1)


@pytest.mark.parametrize(
    "error, status",
    [
        (ValueError("boom"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (StopRun("pruned", tags={"optuna.state": "PRUNED"}), "KILLED"),
    ],
)
def test_an_exception_marks_the_run(store, tmp_path, error, status):
    with pytest.raises(type(error)), Tracker(tmp_path / "run", experiment="ends", run_name="exc", tracking_uri=store) as tr:
        tr.log_metrics({"train/loss": 1.0}, 1)
        raise error
    run = client(store).get_run(tr.run_id)
    assert run.info.status == status
    assert run.data.tags["failure"].startswith(type(error).__name__)
    for k, v in getattr(error, "tags", {}).items():
        assert run.data.tags[k] == v


# -- resuming --------------------------------------------------------------------------
def test_resume_reopens_the_same_run_without_duplicates(store, tmp_path):
    run_dir, config = tmp_path / "run", {"lr": 1e-3}
    with (
        pytest.raises(RuntimeError, match="preempted"),
        Tracker(run_dir, experiment="resume", run_name="r", config=config, tracking_uri=store) as tr,
    ):
        for step in range(1, 7):
            tr.log_metrics(metrics(step), step)
            if step == 4:
                tr.commit(4)
                with pytest.raises(RuntimeError, match="in use by another process"):
                    Tracker(run_dir, experiment="resume", run_name="r", tracking_uri=store)
        raise RuntimeError("preempted")
    first = tr.run_id
    with pytest.raises(ResumeError, match="new run directory"):
        Tracker(run_dir, experiment="resume", run_name="r", config={"lr": 1.0})
    with Tracker(run_dir, experiment="resume", run_name="r", config=config) as tr:  # store from tracking.json
        assert tr.resumed and tr.run_id == first
        assert client(store).get_run(first).info.status == "RUNNING"
        # Resuming before the committed step (the checkpoint at 4 was unreadable) replays step 4:
        # MLflow keeps the value it holds, and gets no second one.
        tr.truncate_after(3)
        for step in range(4, 9):
            tr.log_metrics(metrics(step), step)
    assert client(store).get_run(first).info.status == "FINISHED"
    assert len(client(store).search_runs([client(store).get_experiment_by_name("resume").experiment_id])) == 1
    for key in KEYS:
        assert steps_of(store, first, key) == list(range(1, 9))
    assert [r["step"] for r in load_history(run_dir)] == list(range(1, 9))


def test_a_crash_during_commit_is_repaired_on_resume(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking, "_BATCH", 7)  # several log_batch calls per commit
    original, sent = MlflowClient.log_batch, []

    def flaky(self, *a, **kw):
        if kw.get("metrics"):
            sent.append(1)
            if len(sent) == 3:
                raise RuntimeError("connection lost")
        return original(self, *a, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    run_dir = tmp_path / "run"
    with (
        pytest.raises(RuntimeError, match="connection lost"),
        Tracker(run_dir, experiment="resume", run_name="torn", tracking_uri=store) as tr,
    ):
        for step in range(1, 11):
            tr.log_metrics(metrics(step), step)
        tr.commit(10)  # the checkpoint at 10 is on disk; 14 of 30 points reach MLflow
    assert 0 < len(client(store).get_metric_history(tr.run_id, KEYS[0])) < 10
    with Tracker(run_dir, experiment="resume", run_name="torn") as tr:
        tr.truncate_after(10)
    for key in KEYS:
        assert steps_of(store, tr.run_id, key) == list(range(1, 11))


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from workbench.tracking import Tracker
    run_dir, uri = sys.argv[1:]
    tr = Tracker(run_dir, experiment="crash", run_name="crash", tracking_uri=uri)
    for step in range(1, 18):
        tr.log_metrics({"train/loss": 1 / step, "train/entropy": step / 10}, step)
        if step == 5:
            tr.commit(5)
        # step 15: a checkpoint is saved, and the process dies before commit(15) runs
    print(tr.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_then_resume_gives_one_value_per_step(store, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(run_dir), store],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id = proc.stdout.split()[0]
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 18, "ti')  # a line cut short by the crash
    assert steps_of(store, run_id, "train/loss") == [1, 2, 3, 4, 5]
    with Tracker(run_dir, experiment="crash", run_name="crash") as tr:
        assert tr.resumed and tr.run_id == run_id
        tr.truncate_after(15)  # resume from the checkpoint at step 15
        assert [r["step"] for r in load_history(run_dir)] == list(range(1, 16))
        assert steps_of(store, run_id, "train/loss") == list(range(1, 16))
        for step in range(16, 21):
            tr.log_metrics({"train/loss": 1 / step, "train/entropy": step / 10}, step)
    for key in ("train/loss", "train/entropy"):
        assert steps_of(store, run_id, key) == list(range(1, 21))
    values = {m.step: m.value for m in client(store).get_metric_history(run_id, "train/loss")}
    assert values == {s: 1 / s for s in range(1, 21)}
    assert [r["step"] for r in load_history(run_dir)] == list(range(1, 21))


# -- concurrency -----------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from workbench.tracking import Tracker
    run_dir, uri = sys.argv[1:]
    with Tracker(run_dir, experiment="parallel", run_name=run_dir, tracking_uri=uri, config={"w": run_dir}) as tr:
        ready = pathlib.Path(run_dir + ".ready")
        ready.touch()  # start logging together, or the slower start hides the contention
        while len(list(ready.parent.glob("*.ready"))) < 2:
            time.sleep(0.01)
        for step in range(1, 51):
            tr.log_metrics({f"train/m{i}": step + i / 100 for i in range(10)}, step)
            tr.commit(step)  # one write transaction per step: as much contention as possible
    print(tr.run_id)
""")


def test_two_processes_share_a_fresh_sqlite_store_without_losing_rows(tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"  # both processes race to create it
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"w{i}"), uri],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    run_ids = [out.split()[-1] for out, _ in outs]
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run_id in run_ids:
        assert client(uri).get_run(run_id).info.status == "FINISHED"
        for i in range(10):
            history = client(uri).get_metric_history(run_id, f"train/m{i}")
            assert sorted((m.step, m.value) for m in history) == [(s, s + i / 100) for s in range(1, 51)]


def test_locked_store_errors_are_retried(monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    failures = iter([MlflowException("(sqlite3.OperationalError) database is locked")] * 3)

    def flaky():
        for error in failures:
            raise error
        return "ok"

    assert tracking._retry_locked(flaky) == "ok"
    with pytest.raises(MlflowException, match="other"):
        tracking._retry_locked(lambda: (_ for _ in ()).throw(MlflowException("other")))


# -- a tracking server -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(empty_db, tmp_path):
    port, url = _free_port(), None
    shutil.copy(empty_db, tmp_path / "server.db")
    env = {**subprocess_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner workers
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (outlives this block: closed below)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server forks uvicorn workers
    )
    try:
        deadline = time.monotonic() + 90
        while url is None:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not come up in 90 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                url = f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # wait for the whole group, not just the leader
            proc.poll()
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def test_a_run_reaches_a_tracking_server_named_by_the_environment(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert default_tracking_uri() == mlflow_server
    with Tracker(tmp_path / "run", experiment="sgopd-mini", run_name="remote", config={"lr": 0.1}) as tr:
        for step in range(1, 6):
            tr.log_metrics(metrics(step), step)
        tr.commit(3)
    remote = client(mlflow_server)
    run = remote.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert steps_of(mlflow_server, tr.run_id, KEYS[0]) == [1, 2, 3, 4, 5]
    assert {"config.json", "metrics.jsonl"} <= {a.path for a in remote.list_artifacts(tr.run_id)}
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["tracking_uri"] == mlflow_server


# -- small pieces ----------------------------------------------------------------------
def test_default_tracking_uri(tmp_path, monkeypatch):
    # Hermetic: neither the caller's MLFLOW_TRACKING_URI nor the directory pytest runs from decides.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    local = f"sqlite:///{tmp_path.resolve()}/results/mlflow.db"
    assert default_tracking_uri(tmp_path) == local
    assert default_tracking_uri() == f"sqlite:///{Path(__file__).resolve().parents[1]}/results/mlflow.db"  # the checkout's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set but empty: the default
    assert default_tracking_uri(tmp_path) == local
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_display_uri_hides_credentials_and_the_checkout_path():
    root = Path(__file__).resolve().parents[1]
    assert display_uri(f"sqlite:///{root}/results/mlflow.db") == "sqlite:///results/mlflow.db"
    assert display_uri("sqlite:////elsewhere/mlflow.db") == "sqlite:////elsewhere/mlflow.db"
    assert display_uri("https://user:secret@mlflow.example.org") == "https://***@mlflow.example.org"


def test_importing_tracking_does_not_import_mlflow():
    code = "import sys, workbench.tracking; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"avg": 1})
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "x" * 100_000 + "\ud800")  # fails after part is written
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"avg": 1}
    assert _siblings(target) == ["results.json"]


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    ckpt = tmp_path / "ckpt" / "step_000010"
    with pytest.raises(RuntimeError), atomic_dir(ckpt) as d:
        (d / "model.pt").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not ckpt.exists() and _siblings(ckpt) == []
    with atomic_dir(ckpt) as d:
        (d / "model.pt").write_bytes(b"v1")
    with pytest.raises(RuntimeError), atomic_dir(ckpt) as d:
        (d / "model.pt").write_bytes(b"v2-partial")
        raise RuntimeError("killed")
    assert (ckpt / "model.pt").read_bytes() == b"v1"
    with atomic_dir(ckpt) as d:
        (d / "model.pt").write_bytes(b"v2")
    assert (ckpt / "model.pt").read_bytes() == b"v2" and _siblings(ckpt) == ["step_000010"]
