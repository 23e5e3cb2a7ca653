"""Run tracking: MLflow plus a local ``metrics.jsonl``, resumable and crash-safe.

Trainer-side use (both backends)::

    with Tracker(run_dir, experiment="sgopd-mini", run_name=cfg.name,
                 tags=standard_tags(cfg), config=cfg.to_dict()) as tr:
        start = latest_checkpoint_step(run_dir) or 0    # the trainer's business
        tr.truncate_after(start)                         # drop what the crash left past it
        for step in range(start + 1, cfg.train.steps + 1):
            tr.log_metrics({"train/loss": loss, ...}, step)
            if step % save_every == 0:
                with atomic_dir(run_dir / f"ckpt/step_{step:06d}") as d:
                    save(d)
                tr.commit(step)                          # checkpoint on disk: publish metrics
        tr.log_metrics({"eval/avg_at_k": ..., ...}, step)
        tr.log_dict(results, "eval/results.json")

API
- ``Tracker(run_dir, *, experiment, run_name, tags=None, config=None, parent_run_id=None,
  tracking_uri=None)``: a context manager. Attributes ``run_id`` (MLflow's), ``resumed``,
  ``committed_step``, ``last_step``. Methods ``log_metrics(metrics, step)``, ``commit(step)``,
  ``truncate_after(step)``, ``log_artifact(path, artifact_path=None)``,
  ``log_dict(obj, name)``, ``set_tags(tags)``, ``finish()``, ``fail(message)``.
  Leaving the block normally marks the run FINISHED; an exception (a non-finite loss
  included) marks it FAILED with the message in tag ``failure``; Ctrl-C marks it KILLED.
- ``check_finite(value, step, name="loss")`` raises ``NonFiniteLossError``; ``log_metrics``
  calls it on ``train/loss`` (after writing the line, so the bad value is on record).
- ``standard_tags(cfg)``: run, group, seed, method, backend, config_hash of a ``RunConfig``.
- ``default_tracking_uri(root=None)``, ``load_history(run_dir)``.

Where things go. ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/results/mlflow.db``
with artifacts in ``results/mlartifacts/<experiment>``; an ``http://`` server works too. A
run directory holds ``metrics.jsonl`` (one line per ``log_metrics`` call: ``step``, ``time``
in ms, the metrics; nan/inf as Python's json writes them) and ``tracking.json`` (store URI,
MLflow run id, committed step). Opening a Tracker on a directory that has ``tracking.json``
resumes that MLflow run, in that store (``experiment``, ``run_name`` and ``parent_run_id``
are then the run's own; a different ``config_hash`` or ``tracking_uri`` is a ``ResumeError``).

Exactly one point per (metric, step), crash or not. MLflow cannot delete metric points, so
MLflow only ever receives steps a checkpoint covers: ``log_metrics`` appends to
``metrics.jsonl`` (flushed each call) and buffers; ``commit(step)`` fsyncs the file, sends
buffered points up to ``step`` with ``log_batch`` (one call per 1000 points, not one per
metric), then records ``committed_step``; ``finish()`` sends the rest. After a crash,
``truncate_after(S)`` (S = the checkpoint resumed from) atomically drops local lines past S
and re-sends lines from ``committed_step`` to S that MLflow lacks (a crash between a
checkpoint and its commit); resuming from before ``committed_step`` raises ``ResumeError``.
The price: MLflow shows a run's curves at checkpoint granularity; ``metrics.jsonl`` is live.

Concurrency. Two Trackers may not share a run directory (a lock file says so at once).
Several processes may share one SQLite store: its creation and experiment creation are
serialised by a lock file beside the database, and "database is locked" errors are
retried with jittered exponential backoff.

mlflow is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import posixpath
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from workbench.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
T = TypeVar("T")

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "tracking.json"
LOCK_FILE = ".tracking.lock"
FAILURE_TAG = "failure"
_RESERVED = ("step", "time")
_METRIC_NAME = re.compile(r"^[\w\-. /:]+$")  # what MLflow accepts, checked before it is on disk
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100  # ... and of params per call
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 5000


class NonFiniteLossError(FloatingPointError):
    """The loss became nan or inf: the run stops and is marked FAILED."""


class ResumeError(RuntimeError):
    """A run directory cannot be resumed as asked; the message says why and what to do."""


class StopRun(Exception):
    """Raised inside a ``Tracker`` to stop its run on purpose (a pruned search trial): the run
    ends KILLED, not FAILED, with ``tags`` set."""

    def __init__(self, message: str, *, tags: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.tags = dict(tags or {})


def check_finite(value: float, step: int, name: str = "loss") -> None:
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(
            f"{name} is {v} at step {step}: training diverged, stopping the run "
            "(resume from an earlier checkpoint with a lower learning rate, or inspect metrics.jsonl)"
        )


def default_tracking_uri(root: str | os.PathLike[str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``<root>/results`` (git-ignored)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(root) if root is not None else _repo_root()
    return f"sqlite:///{(base / 'results' / 'mlflow.db').resolve()}"


def display_uri(uri: str | None) -> str:
    """A tracking URI as reports print it: credentials dropped, and a SQLite file inside the
    repository given relative to it (the reports' commands run from the repository root)."""
    uri = re.sub(r"//[^/@]+@", "//***@", uri or "?")
    if uri.startswith("sqlite:///"):
        with contextlib.suppress(ValueError):
            return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).relative_to(_repo_root().resolve()))
    return uri


def standard_tags(cfg: Any) -> dict[str, str]:
    """The tags every run carries, read from a ``workbench.config.RunConfig`` (or look-alike)."""
    tags = {
        "run": cfg.name,
        "group": cfg.group,
        "seed": cfg.seed,
        "method": cfg.method,
        "backend": cfg.backend,
        "config_hash": cfg.config_hash(),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def load_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl``: dicts with ``step``, ``time`` and metrics."""
    return _read_jsonl(Path(run_dir) / METRICS_FILE)[0]


class Tracker:
    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        tracking_uri: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run_lock = _try_lock(self.run_dir / LOCK_FILE)
        try:
            self._open(experiment, run_name, dict(tags or {}), config, parent_run_id, tracking_uri)
        except BaseException:
            self._run_lock.close()
            raise

    def _open(self, experiment, run_name, tags, config, parent_run_id, tracking_uri) -> None:
        from mlflow.tracking import MlflowClient

        state_path = self.run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        if state and tracking_uri and tracking_uri != state["tracking_uri"]:
            raise ResumeError(
                f"{self.run_dir} belongs to MLflow run {state['run_id']} in {state['tracking_uri']},"
                f" not {tracking_uri}; use a new run directory or edit {state_path}"
            )
        self.tracking_uri = state["tracking_uri"] if state else tracking_uri or default_tracking_uri()
        self.resumed = state is not None
        if config is not None:
            tags.setdefault("config_hash", _hash(config))
        with _store_lock(self.tracking_uri):  # first use creates/migrates the db: one at a time
            self._client = MlflowClient(self.tracking_uri)
            if state:
                self._resume(state, tags)
            else:
                self._create(experiment, run_name, tags, parent_run_id)
        if config is not None:  # again on resume: it may not have made it before a crash
            self._log_config(config)
        self.closed = False
        # The local record: read back what a previous process left, then append.
        records, torn = _read_jsonl(self.run_dir / METRICS_FILE)
        if torn:  # a line cut by a crash would glue itself to the next append
            self._rewrite_jsonl(records, reopen=False)
        self._set_last(records)
        self._buffer: list[tuple[str, float, int, int]] = []  # (key, value, time ms, step)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def _create(self, experiment, run_name, tags, parent_run_id) -> None:
        commit = _git(["rev-parse", "HEAD"])
        if commit:
            tags["git_commit"] = tags["mlflow.source.git.commit"] = commit
            dirty = _git(["status", "--porcelain", "--untracked-files=no"])
            if dirty is not None:
                tags["git_dirty"] = str(bool(dirty)).lower()
        tags.setdefault("run", run_name)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        exp_id = self._experiment_id(experiment)
        run = self._call(self._client.create_run, exp_id, run_name=run_name, tags={k: _clip(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        self.committed_step: int | None = None
        # Saved before anything else can fail, so a retry resumes this run instead of orphaning it.
        self._save_state()

    def _resume(self, state, tags) -> None:
        from mlflow.exceptions import MlflowException

        self.run_id = state["run_id"]
        self.committed_step = state.get("committed_step")
        try:
            run = self._call(self._client.get_run, self.run_id)
        except MlflowException as e:
            raise ResumeError(
                f"{self.run_dir} names MLflow run {self.run_id}, which {self.tracking_uri} "
                f"cannot give back ({e.error_code}); use a new run directory"
            ) from e
        old, new = run.data.tags.get("config_hash"), tags.get("config_hash")
        if old and new and old != str(new):
            raise ResumeError(
                f"{self.run_dir} was started with config {old}, resumed with {new}; a changed config needs a new run directory"
            )
        self._call(self._client.update_run, self.run_id, status="RUNNING")

    def _log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # Re-logging a param with the same value is a no-op for MLflow, so this is idempotent.
        params = [Param(k, _param_value(v)) for k, v in _flatten(config)]
        for i in range(0, len(params), _PARAM_BATCH):
            self._call(self._client.log_batch, self.run_id, params=params[i : i + _PARAM_BATCH])
        self.log_dict(config, "config.json")

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(2):
            exp = self._call(self._client.get_experiment_by_name, name)
            if exp is not None:
                if exp.lifecycle_stage != "active":
                    raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it or pick another name")
                return exp.experiment_id
            try:
                return self._call(
                    self._client.create_experiment, name, artifact_location=_artifact_location(self.tracking_uri, name)
                )
            except MlflowException as e:  # another process created it first (remote server)
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise RuntimeError(f"could not create or find MLflow experiment {name!r}")

    # -- logging ------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record one step's metrics locally now and for MLflow at the next ``commit``.

        Steps never go back, and a metric appears at most once per step, so a history has
        one value per (metric, step). Raises ``NonFiniteLossError`` on a nan/inf ``train/loss``.
        """
        step = int(step)
        if step < self.last_step:
            raise ValueError(
                f"step {step} comes after step {self.last_step}; "
                "when resuming from a checkpoint call truncate_after(checkpoint_step) first"
            )
        values = {str(k): float(v) for k, v in metrics.items()}
        for key in values:
            if key in _RESERVED or not _METRIC_NAME.match(key) or posixpath.normpath(key) != key:
                raise ValueError(f"invalid metric name {key!r}")
        repeated = sorted(values.keys() & self._keys_at_last) if step == self.last_step else []
        if repeated:
            raise ValueError(f"metrics {repeated} were already logged at step {step}")
        now = int(time.time() * 1000)
        self._jsonl.write(json.dumps({"step": step, "time": now, **values}) + "\n")
        self._jsonl.flush()  # survives the process being killed; commit() makes it durable
        self._buffer.extend((k, v, now, step) for k, v in values.items())
        if step > self.last_step:
            self.last_step, self._keys_at_last = step, set()
        self._keys_at_last |= values.keys()
        if "train/loss" in values:
            check_finite(values["train/loss"], step)

    def commit(self, step: int) -> None:
        """A checkpoint at ``step`` is safely on disk: publish buffered metrics up to ``step``."""
        os.fsync(self._jsonl.fileno())  # the local record must never lag behind MLflow
        self._send([m for m in self._buffer if m[3] <= step])
        self._buffer = [m for m in self._buffer if m[3] > step]
        if self.committed_step is None or step > self.committed_step:
            self.committed_step = step
        self._save_state()

    def truncate_after(self, step: int) -> None:
        """Resume at checkpoint ``step``: forget later local metrics, finish publishing earlier ones."""
        if self.committed_step is not None and step < self.committed_step:
            raise ResumeError(
                f"MLflow run {self.run_id} already holds metrics up to step {self.committed_step} "
                f"and MLflow cannot delete them: resume from a checkpoint at step >= "
                f"{self.committed_step}, or start a new run directory"
            )
        records, torn = _read_jsonl(self.run_dir / METRICS_FILE)
        keep = [r for r in records if r["step"] <= step]
        if torn or len(keep) < len(records):
            self._rewrite_jsonl(keep)
        self._buffer = [m for m in self._buffer if m[3] <= step]
        self._set_last(keep)
        # Lines in [committed_step, step] may have missed MLflow (crash between checkpoint and
        # commit, or mid-commit); send those it lacks. Steps below committed_step are there.
        lo = self.committed_step if self.committed_step is not None else -math.inf
        pending = {
            (k, r["step"]): (k, v, r["time"], r["step"])
            for r in keep
            if r["step"] >= lo
            for k, v in r.items()
            if k not in _RESERVED
        }
        pending.update({(m[0], m[3]): m for m in self._buffer})  # normally empty on resume
        present = set()
        for key in {k for k, _ in pending}:
            history = self._call(self._client.get_metric_history, self.run_id, key)
            present |= {(key, m.step) for m in history if m.step >= lo}
        self._buffer = []
        self._send([m for k, m in pending.items() if k not in present])
        self.committed_step = step
        self._save_state()

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        """Save ``obj`` as artifact ``name`` (``.json`` or ``.yaml``), e.g. evaluation results."""
        self._call(self._client.log_dict, self.run_id, dict(obj), name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call(self._client.log_batch, self.run_id, tags=[RunTag(k, _clip(v)) for k, v in tags.items()])

    # -- ending ---------------------------------------------------------------------------
    def finish(self) -> None:
        """Publish every remaining metric and mark the run FINISHED."""
        if self.closed:
            return
        try:
            self.commit(self.last_step)
            self._end("FINISHED")
        finally:
            self._close()

    def fail(self, message: str, status: str = "FAILED") -> None:
        """Mark the run FAILED (or KILLED) with ``message``; uncommitted metrics stay local only,
        so a resume from the last checkpoint stays exact (metrics.jsonl is attached as artifact)."""
        if self.closed:
            return
        try:
            self.set_tags({FAILURE_TAG: message})
            self._end(status)
        finally:
            self._close()

    def _end(self, status: str) -> None:
        self._jsonl.flush()
        self.log_artifact(self.run_dir / METRICS_FILE)
        self._call(self._client.set_terminated, self.run_id, status=status)

    def _close(self) -> None:
        # A run that could not be ended cleanly stays RUNNING in MLflow; reopening resumes it.
        self.closed = True
        self._jsonl.close()
        self._run_lock.close()

    def __enter__(self) -> Tracker:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish()
            return False
        status = "FAILED" if isinstance(exc, Exception) and not isinstance(exc, StopRun) else "KILLED"
        try:
            if isinstance(exc, StopRun) and exc.tags:
                self.set_tags(exc.tags)
            self.fail(f"{type(exc).__name__}: {exc}", status=status)
        except Exception:  # never hide the error that ended the run behind a tracking error
            log.exception("could not mark MLflow run %s %s", self.run_id, status)
        return False

    # -- helpers --------------------------------------------------------------------------
    def _send(self, points: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, t, s) for k, v, t, s in points]
        for i in range(0, len(metrics), _BATCH):
            self._call(self._client.log_batch, self.run_id, metrics=metrics[i : i + _BATCH], synchronous=True)

    def _save_state(self) -> None:
        atomic_write_json(
            self.run_dir / STATE_FILE,
            {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "committed_step": self.committed_step},
        )

    def _set_last(self, records: list[dict[str, Any]]) -> None:
        self.last_step = records[-1]["step"] if records else -1
        self._keys_at_last = {k for r in records if r["step"] == self.last_step for k in r} - set(_RESERVED)

    def _rewrite_jsonl(self, records: list[dict[str, Any]], reopen: bool = True) -> None:
        if reopen:
            self._jsonl.close()
        atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))
        if reopen:
            self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115

    @staticmethod
    def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _retry_locked(fn, *args, **kwargs)


# -- module helpers ---------------------------------------------------------------------------
def _retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``, retrying SQLite "database is locked" errors with jittered backoff.

    MLflow already sets a busy timeout, but SQLite still reports a lock at once when two
    writers would deadlock, and a bare retry in lockstep just collides again.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt == attempts - 1 or "database is locked" not in str(e):
                raise
            delay = min(0.05 * 2**attempt, 2.0) * (0.5 + random.random())
            log.warning("MLflow store busy (%s); retrying in %.2fs", type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _artifact_location(uri: str, experiment: str) -> str | None:
    # MLflow's default for a SQLite store is ./mlruns under whatever the cwd is: keep the
    # artifacts beside the database instead. A server chooses its own (None).
    db = _sqlite_path(uri)
    safe = re.sub(r"[^\w.-]", "_", experiment)
    return (db.parent / "mlartifacts" / safe).as_uri() if db else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _try_lock(path: Path):
    import fcntl

    f = open(path, "a")  # noqa: SIM115 (the lock lives as long as the file stays open)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"{path.parent} is in use by another process (a Tracker holds {path})") from None
    return f  # held until closed, or until the process dies


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Records, and whether the last line was cut short by a crash (then it is skipped)."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records = [json.loads(line) for line in lines if line]
    return records, bool(tail)


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # read-only: never refresh the index
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= _MAX_PARAM_LEN else s[: _MAX_PARAM_LEN - 3] + "..."  # config.json has it all


def _clip(v: Any) -> str:
    s = str(v)
    return s if len(s) <= _MAX_TAG_LEN else s[: _MAX_TAG_LEN - 3] + "..."
