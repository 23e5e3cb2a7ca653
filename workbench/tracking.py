"""Run tracking: MLflow plus a local ``metrics.jsonl``, resumable and crash-safe.

Trainer-side use (the mini backend's ``train_run`` and trainer, in outline)::

    with Tracker(run_dir, experiment="sgopd-mini", run_name=f"{cfg.name}-seed{cfg.seed}",
                 tags=standard_tags(cfg), config=cfg.to_dict()) as tr:
        start = <step of the newest readable checkpoint, 0 if none>  # the trainer's business
        tr.truncate_after(start)                     # drop what a crash left past it
        for step in range(start + 1, cfg.train.total_steps + 1):
            tr.log_metrics({"train/loss": loss, ...}, step)
            if step % cfg.train.checkpoint_every == 0:
                with atomic_dir(run_dir / "checkpoints" / f"step-{step:06d}") as d:
                    save(d)
                tr.commit(step)                      # checkpoint on disk: publish metrics
        tr.log_metrics({"eval/avg_at_k": ..., ...}, step)
        tr.log_dict(results, "eval/results.json")

API
- ``Tracker(run_dir, *, experiment, run_name, tags=None, config=None, parent_run_id=None,
  tracking_uri=None, lock=None)``: a context manager. ``lock``: the run directory's lock
  from ``lock_run_dir``, taken and released by the caller (without it the Tracker takes its
  own). Attributes ``run_id`` (MLflow's), ``resumed``, ``committed_step``, ``last_step``.
  Methods ``log_metrics(metrics, step)``, ``commit(step)``, ``truncate_after(step)``,
  ``log_artifact(path, artifact_path=None)``, ``log_dict(obj, name)``, ``set_tags(tags)``,
  ``finish()``, ``fail(message)``.
  Leaving the block normally marks the run FINISHED; an exception (a non-finite loss
  included) marks it FAILED with the message in tag ``failure``; Ctrl-C marks it KILLED.
- ``check_finite(value, step, name="loss")`` raises ``NonFiniteLossError``; ``log_metrics``
  calls it on ``train/loss`` (after writing the line, so the bad value is on record).
- ``standard_tags(cfg)``: run, group, seed, method, backend, config_hash of a ``RunConfig``.
- ``default_tracking_uri(root=None)``, ``load_history(run_dir)``.
- ``lock_run_dir(run_dir)``: take a run directory's lock (``RunInUseError`` at once if another
  process holds it), e.g. to inspect or clear the directory before a Tracker opens on it.
- ``defer_signals()``: a context manager that holds SIGINT/SIGTERM until its block ends.

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
checkpoint and its commit). Resuming from before ``committed_step`` (the later checkpoints
were unreadable) replays those steps: the points MLflow already holds keep their values and are
not sent again (a deterministic replay recomputes the same ones; timings differ).
The price: MLflow shows a run's curves at checkpoint granularity; ``metrics.jsonl`` is live.

Stops. Every MLflow call, and ``commit``, ``finish``, ``fail`` and the opening as a whole,
run with SIGINT and SIGTERM held (``defer_signals``); the stop acts once they return. A
KeyboardInterrupt raised inside SQLAlchemy would leave a SQLite write transaction open, and
the Tracker's own "mark KILLED" would then wait on that lock for minutes. With a stop
pending, a busy store is not retried; a run ended by a stop is marked KILLED with at most
a few attempts. A stop while a Tracker opens ends the new run KILLED.

Concurrency. Two Trackers may not share a run directory (a lock file says so at once).
Several processes may share one SQLite store: its creation and experiment creation are
serialised by a lock file beside the database, and "database is locked" errors are
retried with jittered exponential backoff. Experiments are tagged as model-training
experiments (``mlflow.experimentKind``), so MLflow 3's UI opens them on the runs list.

mlflow is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from workbench.errors import UserError
from workbench.io import atomic_write_json, atomic_write_text
from workbench.provenance import git_state, short_hash

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
_STOP_ATTEMPTS = 3  # MLflow calls that end a stopped run: a stop must not wait on a busy store
# MLflow 3's UI opens an experiment without this tag on its GenAI overview page; this value
# is the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT (model training: the runs list).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class NonFiniteLossError(FloatingPointError):
    """The loss became nan or inf: the run stops and is marked FAILED."""


class ResumeError(UserError, RuntimeError):
    """A run directory cannot be resumed as asked; the message says why and what to do."""


class RunInUseError(UserError, RuntimeError):
    """Another process holds the run directory's lock (it is training there)."""


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
            return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).relative_to(_repo_root().resolve()))
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


def lock_run_dir(run_dir: str | os.PathLike[str]) -> TextIO:
    """Create ``run_dir`` if needed and take its lock, the one a Tracker holds: an open file,
    released by ``close()`` or the process ending. Pass it to a Tracker as ``lock``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file; remove it or pick another directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return _try_lock(run_dir / LOCK_FILE)
    except OSError as e:
        raise UserError(f"cannot use {run_dir} as a run directory: {e.strerror or e}; pick a writable place") from e


_held: list[int] = []  # signals held by the active defer_signals block (main thread only)
_holding = False


@contextlib.contextmanager
def defer_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them as their handlers would
    have (Ctrl-C raises KeyboardInterrupt after the block). Nested blocks belong to the
    outermost one. Outside the main thread, where handlers cannot be set, the block runs as is."""
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    _holding = True
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:  # None: set outside Python, which cannot be put back
                previous[sig] = signal.signal(sig, lambda s, _f: _held.append(s))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _holding = False
        pending = list(dict.fromkeys(_held))
        _held.clear()
        for sig in pending:
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


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
        lock=None,
    ):
        self.run_dir = Path(run_dir)
        self._own_lock = lock is None
        self._run_lock = lock_run_dir(self.run_dir) if lock is None else lock
        self._attempts = 10
        self._published: set[tuple[str, int]] = set()  # (key, step) MLflow holds from before a replay
        self._started = False  # True once the MLflow run is RUNNING because of us
        try:
            with defer_signals():  # the first use may create the store: never stop half-way
                self._open(experiment, run_name, dict(tags or {}), config, parent_run_id, tracking_uri)
        except BaseException as e:
            if self._started:  # never leave a run RUNNING that no process works on
                self._abandon(e)
            if hasattr(self, "_jsonl"):
                self._jsonl.close()
            if self._own_lock:
                self._run_lock.close()
            raise

    def _open(self, experiment, run_name, tags, config, parent_run_id, tracking_uri) -> None:
        from mlflow.tracking import MlflowClient

        state_path = self.run_dir / STATE_FILE
        state = _read_state(state_path)
        if state and tracking_uri and tracking_uri != state["tracking_uri"]:
            raise ResumeError(
                f"{self.run_dir} belongs to MLflow run {state['run_id']} in {state['tracking_uri']},"
                f" not {tracking_uri}; use a new run directory or edit {state_path}"
            )
        self.tracking_uri = state["tracking_uri"] if state else tracking_uri or default_tracking_uri()
        self.resumed = state is not None
        if config is not None:
            tags.setdefault("config_hash", short_hash(config))
        with _store_lock(self.tracking_uri):  # first use creates/migrates the db: one at a time
            self._client = self._call(MlflowClient, self.tracking_uri)
            try:
                if state:
                    self._resume(state, tags)
                else:
                    self._create(experiment, run_name, tags, parent_run_id)
            except Exception as e:
                _raise_if_unwritable(self.tracking_uri, e)
                raise
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
        commit, dirty = git_state()
        if commit:
            tags["git_commit"] = tags["mlflow.source.git.commit"] = commit
            if dirty is not None:
                tags["git_dirty"] = str(dirty).lower()
        tags.setdefault("run", run_name)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        exp_id = self._experiment_id(experiment)
        run = self._call(self._client.create_run, exp_id, run_name=run_name, tags={k: _clip(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        self._started = True
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
                f"{self.run_dir} was started with config {old}, resumed with {new}; a changed config needs a new run "
                "directory (or `workbench train --restart` to discard this run)"
            )
        self._call(self._client.update_run, self.run_id, status="RUNNING")
        self._started = True

    def _log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # Re-logging a param with the same value is a no-op for MLflow, so this is idempotent.
        params = [Param(k, _param_value(v)) for k, v in _flatten(config)]
        for i in range(0, len(params), _PARAM_BATCH):
            self._call(self._client.log_batch, self.run_id, params=params[i : i + _PARAM_BATCH])
        self.log_dict(config, "config.json")

    def _experiment_id(self, name: str) -> str:
        return ensure_experiment(self._client, self.tracking_uri, name, call=self._call)

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
        """A checkpoint at ``step`` is safely on disk: publish buffered metrics up to ``step``.
        A stop meanwhile waits for the commit to finish (or give up on a busy store)."""
        with defer_signals():
            os.fsync(self._jsonl.fileno())  # the local record must never lag behind MLflow
            self._send([m for m in self._buffer if m[3] <= step])
            self._buffer = [m for m in self._buffer if m[3] > step]
            if self.committed_step is None or step > self.committed_step:
                self.committed_step = step
            self._save_state()

    def truncate_after(self, step: int) -> None:
        """Resume at checkpoint ``step``: forget later local metrics, finish publishing earlier ones.

        A ``step`` before ``committed_step`` (the later checkpoints were unreadable) replays
        the steps in between: MLflow cannot delete points, so those it holds are kept and the
        replayed ones are not sent again."""
        records, torn = _read_jsonl(self.run_dir / METRICS_FILE)
        keep = [r for r in records if r["step"] <= step]
        if torn or len(keep) < len(records):
            self._rewrite_jsonl(keep)
        self._buffer = [m for m in self._buffer if m[3] <= step]
        self._set_last(keep)
        if self.committed_step is not None and step < self.committed_step:
            keys = self._call(self._client.get_run, self.run_id).data.metrics.keys()
            self._published = {
                (key, m.step)
                for key in keys
                for m in self._call(self._client.get_metric_history, self.run_id, key)
                if step < m.step <= self.committed_step
            }
            self._buffer = []
            return
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
            with defer_signals():  # a stop now lets the run finish first: its work is done
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
            with defer_signals():  # a second Ctrl-C must not leave the run RUNNING
                self.set_tags({FAILURE_TAG: message})
                self._end(status)
        finally:
            self._close()

    def _abandon(self, exc: BaseException) -> None:
        """End the run after its opening failed or was stopped (nothing local to attach)."""
        self._attempts = _STOP_ATTEMPTS
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        try:
            with defer_signals():
                self.set_tags({FAILURE_TAG: f"{type(exc).__name__}: {exc}"})
                self._call(self._client.set_terminated, self.run_id, status=status)
        except Exception:
            log.exception("could not mark MLflow run %s %s", self.run_id, status)

    def _end(self, status: str) -> None:
        self._jsonl.flush()
        self.log_artifact(self.run_dir / METRICS_FILE)
        self._call(self._client.set_terminated, self.run_id, status=status)

    def _close(self) -> None:
        # A run that could not be ended cleanly stays RUNNING in MLflow; reopening resumes it.
        self.closed = True
        self._jsonl.close()
        if self._own_lock:
            self._run_lock.close()

    def __enter__(self) -> Tracker:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish()
            return False
        status = "FAILED" if isinstance(exc, Exception) and not isinstance(exc, StopRun) else "KILLED"
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: end promptly, busy store or not
            self._attempts = _STOP_ATTEMPTS
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

        metrics = [Metric(k, v, t, s) for k, v, t, s in points if (k, s) not in self._published]
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

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _retry_locked(fn, *args, attempts=self._attempts, **kwargs)


# -- module helpers ---------------------------------------------------------------------------


def ensure_experiment(client: Any, tracking_uri: str, name: str, *, call: Callable[..., Any] | None = None) -> str:
    """The id of MLflow experiment ``name``, created if absent, the one way every backend makes
    experiments: artifacts beside a SQLite store, and tagged as a model-training experiment so
    that MLflow 3's UI opens it on the runs list. ``call(fn, *args)`` wraps each store call
    (a Tracker's retries and signal deferral)."""
    from mlflow.exceptions import MlflowException

    call = call or (lambda fn, *a, **k: fn(*a, **k))
    for _ in range(2):
        exp = call(client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise UserError(f"MLflow experiment {name!r} is deleted; restore it or pick another name")
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag, or by someone else
                call(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return call(
                client.create_experiment,
                name,
                artifact_location=_artifact_location(tracking_uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as e:  # another process created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise RuntimeError(f"could not create or find MLflow experiment {name!r}")


def _retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``, retrying SQLite "database is locked" errors with jittered backoff.

    MLflow already sets a busy timeout, but SQLite still reports a lock at once when two
    writers would deadlock, and a bare retry in lockstep just collides again. Each attempt
    holds SIGINT/SIGTERM (``defer_signals``): a stop lands between attempts, never inside
    SQLAlchemy with a transaction open.
    """
    for attempt in range(attempts):
        try:
            with defer_signals():
                return fn(*args, **kwargs)
        except Exception as e:
            # A stop waiting in an enclosing defer_signals block: give up instead of retrying.
            if attempt == attempts - 1 or "database is locked" not in str(e) or _held:
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

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        f = open(f"{db}.lock", "a")  # noqa: SIM115
    except OSError as e:
        raise UserError(
            f"cannot create the MLflow store {db}: {e.strerror or e}; "
            "set MLFLOW_TRACKING_URI to a writable place (e.g. sqlite:////tmp/mlflow.db)"
        ) from e
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _raise_if_unwritable(uri: str, error: Exception) -> None:
    """A SQLite store that cannot be opened or written is the user's to fix: say which."""
    db = _sqlite_path(uri)
    text = str(error)
    if db is not None and any(s in text for s in ("unable to open database", "readonly database", "disk I/O error")):
        raise UserError(
            f"cannot write the MLflow store {db} ({text.splitlines()[0][:200]}); "
            "check its permissions or set MLFLOW_TRACKING_URI to a writable place"
        ) from error


def _try_lock(path: Path):
    import fcntl

    f = open(path, "a")  # noqa: SIM115 (the lock lives as long as the file stays open)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunInUseError(
            f"{path.parent} is in use by another process (a Tracker holds {path}); wait for that run to end or stop it"
        ) from None
    return f  # held until closed, or until the process dies


def _read_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # UnicodeDecodeError included
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("run_id"), str) or "tracking_uri" not in state:
        raise ResumeError(
            f"{path} is unreadable (not JSON with run_id and tracking_uri); it names the run's MLflow run: "
            "restore it, or delete it to log this run to a new MLflow run (checkpoints and metrics.jsonl "
            "are kept and re-sent)"
        )
    return state


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Records, and whether the last line was cut short by a crash (then it is skipped)."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records = []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ResumeError(
                f"{path}, line {n}: not a metrics record ({line[:40]!r}...); repair or delete that line "
                "(MLflow holds every committed step), then rerun"
            )
        records.append(record)
    return records, bool(tail)


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


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
