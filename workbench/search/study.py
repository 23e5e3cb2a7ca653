"""Running a study: storage, setup, workers, trials, staleness, and the final benchmark check.

Exactness. ``setup_study`` creates every trial of the budget up front, as WAITING trials
(the enqueued settings first, then empty ones the sampler fills in when they start), so
the study holds exactly ``n_trials`` trials and a worker never creates one: it claims a
WAITING trial with the storage's own atomic WAITING -> RUNNING transition (the one Optuna
uses for ``enqueue_trial``). That holds for the journal file and for any RDB, with any
number of workers on any number of machines.

Resume. A claimed trial records its owner (host, pid, process start time) and a heartbeat.
A RUNNING trial whose owner is gone (same host: the process is dead; another host: no
heartbeat for ``stale_after_s``) is put back to WAITING, keeping its number, parameters and
run directory ``trial-<n>/``; the next claim re-runs it and training resumes from the run's
last checkpoint. Reset and claim run under a lock file beside the study, so two workers of
one machine never both take a trial back.

Why not Optuna's own heartbeat and retry (``RDBStorage(url, heartbeat_interval=...,
grace_period=..., heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(...))``,
formerly ``failed_trial_callback=RetryFailedTrialCallback``; checked against Optuna 5.1):

- only ``RDBStorage`` has a heartbeat; the default storage here is a journal file
  (``JournalStorage``: none), which needs no database and works on a shared filesystem;
- its retry marks the stale trial FAIL, which is final, and adds a copy under a new number:
  the study would end with more than ``n_trials`` trials and a FAIL per killed worker, and
  the copy would get a new ``trial-<n>/`` and a new MLflow run, so training would start
  over instead of resuming from the checkpoint. Resuming needs the same trial back in
  WAITING, which no callback can do once the trial has failed;
- it waits out the grace period even when the dead worker ran on this machine, where the
  owner record shows a dead process at once;
- it runs inside ``study.optimize`` only (Optuna's docs: not with ask/tell), and workers
  here claim the pre-created trials instead, to keep the count exact.

So the scheduler is this module's: the owner record and heartbeat (trial user attributes),
``requeue_stale`` and ``claim``, through ``BaseStorage``'s own methods (the WAITING ->
RUNNING transition ``Study.ask`` uses to pop an enqueued trial). tests/test_search.py kills
a worker mid-trial and checks the resume; constraints.txt pins the Optuna release.

Everything that touches Optuna imports it inside functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.io import atomic_write_json
from workbench.search.space import (
    METRICS,
    SearchSpace,
    SearchSpaceError,
    base_config_path,
    load_space,
    suggest,
    trial_overrides,
)

# Trial user attributes (visible in optuna-dashboard) and MLflow tags.
OWNER, HEARTBEAT, ATTEMPTS = "workbench.owner", "workbench.heartbeat", "workbench.attempts"
LABEL, RUN, RUN_DIR = "workbench.label", "workbench.run", "workbench.run_dir"
SECONDS, STEPS_RUN, STEPS_TOTAL, ERROR = "workbench.seconds", "workbench.steps_run", "workbench.steps_total", "workbench.error"
STATE_TAG = "optuna.state"
# Study user attributes.
SPACE_HASH, PARENT, EXPERIMENT = "workbench.space_hash", "workbench.mlflow_parent_run_id", "workbench.experiment"
SPACE_DUMP, SCALE = "workbench.space", "workbench.scale"


@dataclass(frozen=True)
class SearchContext:
    """Everything a worker needs to run a study's trials."""

    space_path: Path
    space: SearchSpace
    scale: str | None
    study_name: str
    storage_url: str
    root: Path  # results/search/<study>: trial run directories, the lock, study.json
    world: Path
    experiment: str
    heartbeat_s: float = 30.0
    stale_after_s: float = 600.0
    poll_s: float = 2.0

    @property
    def metric_key(self) -> str:
        return METRICS.get(self.space.metric)


def make_context(
    space_path: str | Path,
    *,
    scale: str | None = None,
    study: str | None = None,
    storage: str | None = None,
    out: str | Path = "results/search",
    world: str | Path | None = None,
    experiment: str | None = None,
    heartbeat_s: float = 30.0,
    stale_after_s: float = 600.0,
    poll_s: float = 2.0,
    n_trials: int | None = None,
) -> SearchContext:
    """Validate the space (before anything is created) and settle names and paths.
    ``n_trials`` replaces the space's trial budget (``--trials``)."""
    space, eff_scale = load_space(space_path, scale=scale, n_trials=n_trials)
    # Another scale is another study: its trials are not comparable with the space's own.
    name = study or (space.name if eff_scale == space.scale else f"{space.name}-{eff_scale}")
    root = Path(out) / name
    return SearchContext(
        space_path=Path(space_path),
        space=space,
        scale=eff_scale,
        study_name=name,
        storage_url=storage or str(root / "optuna.journal"),
        root=root,
        world=Path(world) if world else Path("results") / (eff_scale or "mini") / "world",
        experiment=experiment or f"sgopd-search-{eff_scale or 'default'}",
        heartbeat_s=heartbeat_s,
        stale_after_s=stale_after_s,
        poll_s=poll_s,
    )


# -- storage ---------------------------------------------------------------------------------


def is_rdb_url(url: str) -> bool:
    return "://" in url


def open_storage(url: str):
    """An RDB URL (``sqlite:///...``, ``postgresql://...``) or a journal file path."""
    import optuna

    if is_rdb_url(url):
        # SQLite shared by several processes: wait for the write lock instead of failing.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        # Wrapped in Optuna's trial cache as `create_study(storage=url)` does, once: the trial
        # objects, the claims and the heartbeat must all go through the same wrapper.
        return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=kwargs))
    from optuna.storages.journal import JournalFileBackend

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))


@contextlib.contextmanager
def study_lock(root: Path) -> Iterator[None]:
    """Serialise setup, stale resets and claims between the workers of this machine."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".search.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process is killed


def load(ctx: SearchContext, storage=None, trial_number: int | None = None):
    """A fresh ``optuna.Study`` handle (a fresh one per trial: no stale trial cache)."""
    import optuna

    return optuna.load_study(
        study_name=ctx.study_name,
        storage=storage or open_storage(ctx.storage_url),
        sampler=ctx.space.make_sampler(trial_number),
        pruner=ctx.space.make_pruner(),
    )


# -- setup -----------------------------------------------------------------------------------


def setup_study(ctx: SearchContext):
    """Create (or check and reuse) the study, its MLflow parent run and its ``n_trials`` trials."""
    import optuna

    storage = open_storage(ctx.storage_url)
    h = ctx.space.space_hash(ctx.scale)
    with study_lock(ctx.root):
        study = optuna.create_study(
            study_name=ctx.study_name,
            storage=storage,
            direction=ctx.space.direction,
            sampler=ctx.space.make_sampler(),
            pruner=ctx.space.make_pruner(),
            load_if_exists=True,
        )
        old = study.user_attrs.get(SPACE_HASH)
        if old is not None and old != h:
            started = study.user_attrs.get(SPACE_DUMP, {}).get("n_trials")
            same = f"the same --trials ({started}), " if started not in (None, ctx.space.n_trials) else ""
            raise SearchSpaceError(
                f"study {ctx.study_name!r} in {ctx.storage_url} was started with another search "
                f"space (hash {old}, now {h}); use {same}a new --study, or restore {ctx.space_path}"
            )
        if old is None:
            study.set_user_attr(SPACE_HASH, h)
            study.set_user_attr(SPACE_DUMP, ctx.space.model_dump(mode="json"))
            study.set_user_attr(SCALE, ctx.scale)
        parent = study.user_attrs.get(PARENT)
        if parent is None:
            parent = _start_parent(ctx)
            study.set_user_attr(PARENT, parent)
            study.set_user_attr(EXPERIMENT, ctx.experiment)
        # Mirrored locally: `workbench eval --grid` reads experiment and parent run from it.
        atomic_write_json(
            ctx.root / "study.json",
            {
                "study": ctx.study_name,
                "storage": ctx.storage_url,
                "experiment": study.user_attrs[EXPERIMENT],
                "parent_run_id": parent,
                "scale": ctx.scale,
                "space": str(ctx.space_path),
            },
        )
        trials = study.get_trials(deepcopy=False)
        have = {t.user_attrs.get(LABEL) for t in trials}
        todo = [e for e in ctx.space.enqueue if e.label not in have]
        for e in todo[: max(0, ctx.space.n_trials - len(trials))]:
            study.enqueue_trial(dict(e.params), user_attrs={LABEL: e.label, RUN: e.run})
        for _ in range(ctx.space.n_trials - len(study.get_trials(deepcopy=False))):
            study.enqueue_trial({})  # filled in by the sampler when it starts
    return study


def _start_parent(ctx: SearchContext) -> str:
    from workbench.tracking import Tracker

    tags = {"workbench.kind": "search", "optuna.study": ctx.study_name, "scale": str(ctx.scale)}
    with Tracker(
        ctx.root / "parent",
        experiment=ctx.experiment,
        run_name=f"search-{ctx.study_name}",
        tags=tags,
        config={"space": ctx.space.model_dump(mode="json"), "storage": ctx.storage_url},
    ) as tracker:
        return tracker.run_id


# -- claiming and staleness ------------------------------------------------------------------


def owner_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that claimed a trial still runs (same host only)."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    if start is None:
        return False
    # A recycled pid is another process: its start time differs.
    return owner.get("start") is None or start == owner["start"]


def _process_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: liveness only
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # killed but not yet reaped by its parent
        return None
    return int(fields[19])


def is_stale(trial, *, now: float, stale_after_s: float) -> bool:
    """A RUNNING trial whose worker is gone."""
    owner = trial.user_attrs.get(OWNER)
    if owner and owner.get("host") == socket.gethostname():
        return not owner_alive(owner)
    beats = [float(trial.user_attrs.get(HEARTBEAT) or 0.0)]
    if trial.datetime_start is not None:
        beats.append(trial.datetime_start.timestamp())  # reset by every claim
    return now - max(beats) > stale_after_s


def requeue_stale(study, storage, ctx: SearchContext) -> list[int]:
    """Put trials left RUNNING by dead workers back to WAITING (call under ``study_lock``)."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(ctx.study_name)
    now, back = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, now=now, stale_after_s=ctx.stale_after_s):
            continue
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(tid, OWNER, None)  # before WAITING: never over a new claimer's record
        storage.set_trial_state_values(tid, TrialState.WAITING)
        back.append(t.number)
        _say(f"trial {t.number}: its worker {t.user_attrs.get(OWNER)} is gone; re-queued to resume from its checkpoint")
    return back


def claim(study, storage, ctx: SearchContext) -> int | None:
    """Atomically take the lowest-numbered WAITING trial; returns its trial id."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(ctx.study_name)
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number):
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        # A fresh heartbeat first, so no other machine takes the trial for stale before the owner is set.
        storage.set_trial_user_attr(tid, HEARTBEAT, time.time())
        try:
            if not storage.set_trial_state_values(tid, TrialState.RUNNING):
                continue  # another worker was first
        except UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(tid, OWNER, owner_record())
        storage.set_trial_user_attr(tid, ATTEMPTS, int(t.user_attrs.get(ATTEMPTS, 0)) + 1)
        return tid
    return None


class Heartbeat:
    """Refresh a trial's heartbeat attribute from a daemon thread while it runs."""

    def __init__(self, storage, trial_id: int, every_s: float):
        self.storage, self.trial_id, self.every_s = storage, trial_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT, time.time())
            except Exception:  # noqa: BLE001 (the trial may have just finished; no more beats needed)
                return

    def __enter__(self) -> Heartbeat:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- the worker ------------------------------------------------------------------------------


def run_worker(ctx: SearchContext, *, max_trials: int | None = None) -> int:
    """Run trials of the study until none is left to claim and none runs elsewhere.

    Waiting for the others (instead of leaving) lets a live worker take over the trial of
    a worker that dies. Returns the number of trials this worker ran.
    """
    from optuna.trial import TrialState

    storage = open_storage(ctx.storage_url)
    ran = 0
    while max_trials is None or ran < max_trials:
        study = load(ctx, storage)
        with study_lock(ctx.root):
            requeue_stale(study, storage, ctx)
            trial_id = claim(study, storage, ctx)
        if trial_id is not None:
            run_trial(ctx, storage, trial_id)
            ran += 1
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            break
        time.sleep(ctx.poll_s)
    return ran


def run_trial(ctx: SearchContext, storage, trial_id: int) -> str:
    """Train and score one claimed trial, tell Optuna and MLflow its state; returns the state."""
    import optuna
    from optuna.trial import TrialState

    from workbench.grid import resolve_config
    from workbench.mini import runs
    from workbench.tracking import StopRun, Tracker

    number = storage.get_trial(trial_id).number
    study = load(ctx, storage, trial_number=number)
    trial = optuna.trial.Trial(study, trial_id)
    label = storage.get_trial(trial_id).user_attrs.get(LABEL)
    trial_dir = ctx.root / f"trial-{number}"
    name = f"{ctx.study_name}-trial-{number}"
    parent = study.user_attrs[PARENT]
    experiment = study.user_attrs.get(EXPERIMENT, ctx.experiment)
    tags = {
        "workbench.kind": "trial",
        "optuna.study": ctx.study_name,
        "optuna.trial": number,
        "run": f"trial-{number}",
        "search.label": label or "",
    }
    progress = {"step": 0}
    t0 = time.time()
    state, value, error = TrialState.COMPLETE, None, None
    with Heartbeat(storage, trial_id, ctx.heartbeat_s):
        try:
            params = suggest(trial, ctx.space)  # a resumed trial reads back the parameters it had
            _say(f"trial {number} starts{f' ({label})' if label else ''}: {_fmt(params)}")
            base = base_config_path(ctx.space.base)
            configs = [
                resolve_config(base, scale=ctx.scale, overrides=trial_overrides(ctx.space, params, seed=s, name=name))
                for s in ctx.space.seeds
            ]
            per_seed = configs[0].train.total_steps
            trial.set_user_attr(RUN_DIR, str(trial_dir))
            trial.set_user_attr(STEPS_TOTAL, per_seed * len(configs))
            with Tracker(
                trial_dir,
                experiment=experiment,
                run_name=name,
                tags=tags,
                parent_run_id=parent,
                config={**params, "seeds": list(ctx.space.seeds), "study": ctx.study_name, "label": label or ""},
            ) as tt:
                try:
                    values = []
                    for i, cfg in enumerate(configs):
                        hook = _reporter(trial, storage, trial_id, tt, offset=i * per_seed, key=ctx.metric_key, progress=progress)
                        # cfg.eval.benchmarks is the validation split: no benchmark is seen here.
                        result = runs.train_run(
                            cfg,
                            run_dir=trial_dir / f"seed{cfg.seed}",
                            world=ctx.world,
                            experiment=experiment,
                            parent_run_id=tt.run_id,
                            on_eval=hook,
                            tags={"workbench.kind": "trial-run", "optuna.trial": number},
                        )
                        values.append(100 * float(result[ctx.metric_key]))
                    value = statistics.fmean(values)
                    progress["step"] = per_seed * len(configs)
                    if progress["step"] > tt.last_step:
                        tt.log_metrics({"search/objective": value}, step=progress["step"])
                    tt.set_tags({STATE_TAG: "COMPLETE", "optuna.value": value})
                except StopRun as e:  # pruned: stopped on purpose, not broken
                    state = TrialState.PRUNED
                    tt.set_tags(e.tags)
                    tt.fail(str(e), status="KILLED")
                except Exception as e:
                    state, error = TrialState.FAIL, f"{type(e).__name__}: {e}"
                    tt.set_tags({STATE_TAG: "FAIL"})
                    raise
        except KeyboardInterrupt:
            # Stopped from outside (Ctrl-C, SIGTERM): leave the trial for a restart to resume.
            storage.set_trial_user_attr(trial_id, OWNER, None)
            storage.set_trial_state_values(trial_id, TrialState.WAITING)
            _say(f"trial {number}: interrupted; re-queued (a restart resumes it from its checkpoint)")
            raise
        except Exception as e:  # noqa: BLE001 (any error fails this trial, never the search)
            state, error = TrialState.FAIL, error or f"{type(e).__name__}: {e}"
            traceback.print_exc()
    seconds = time.time() - t0
    trial.set_user_attr(SECONDS, round(seconds, 2))
    trial.set_user_attr(STEPS_RUN, progress["step"])
    if error:
        trial.set_user_attr(ERROR, error[:2000])
    # skip_if_finished: a trial taken back by mistake (heartbeat timeout) is told once only.
    if state == TrialState.COMPLETE:
        study.tell(trial, value, skip_if_finished=True)
    else:
        study.tell(trial, state=state, skip_if_finished=True)
    shown = f" value {value:.2f}" if value is not None else ""
    _say(f"trial {number} {state.name}{shown} after {seconds:.1f}s" + (f": {error}" if error else ""))
    return state.name


def _reporter(trial, storage, trial_id: int, tracker, *, offset: int, key: str, progress: dict) -> Callable[[int, dict], None]:
    """The trainer's ``on_eval`` hook: report the validation metric, prune hopeless trials.

    Steps of later seeds continue after the earlier seeds' (``offset``), so every trial
    reports the same step numbers and the pruner compares like with like.
    """
    from workbench.tracking import StopRun

    def on_eval(step: int, result: dict) -> None:
        g = offset + step
        value = 100 * float(result[key])
        progress["step"] = g
        if g > tracker.last_step:  # a resumed trial may have logged it before it was stopped
            tracker.log_metrics({"search/intermediate": value}, step=g)
            tracker.commit(g)
        if g not in storage.get_trial(trial_id).intermediate_values:
            trial.report(value, g)
        if trial.should_prune():
            raise StopRun(f"pruned by the search at step {g}: {key} {value:.2f}", tags={STATE_TAG: "PRUNED"})

    return on_eval


# -- several workers -------------------------------------------------------------------------


def worker_command(ctx: SearchContext, *, threads: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        "search-worker",
        str(ctx.space_path),
        "--study",
        ctx.study_name,
        "--storage",
        ctx.storage_url,
        "--out",
        str(ctx.root.parent),
        "--world",
        str(ctx.world),
        "--experiment",
        ctx.experiment,
        "--threads",
        str(threads),
        "--heartbeat",
        str(ctx.heartbeat_s),
        "--stale-after",
        str(ctx.stale_after_s),
        "--poll",
        str(ctx.poll_s),
        "--trials",
        str(ctx.space.n_trials),
    ]
    return cmd + (["--scale", ctx.scale] if ctx.scale else [])


def run_workers(ctx: SearchContext, n: int, *, threads: int) -> int:
    """Start ``n`` worker processes on the study and wait for them; returns the worst exit code."""
    procs = [subprocess.Popen(worker_command(ctx, threads=threads)) for _ in range(n)]
    try:
        while any(p.poll() is None for p in procs):  # polling reaps a dead worker at once
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # each worker re-queues its trial for the next run
        for p in procs:
            p.wait()
        raise
    return max((p.returncode for p in procs), default=0)


def counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def is_finished(study, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    return len(trials) == n_trials and all(t.state.is_finished() for t in trials)


# -- after the search: the benchmarks, once ----------------------------------------------------


def benchmark_eval(ctx: SearchContext, trial) -> dict | None:
    """Evaluate a finished trial's models once on the four benchmarks (cached per trial).

    The evaluation uses the base run's own eval settings (as the grid does), not the
    search's validation split; the mean over the trial's seeds is returned.
    """
    from workbench.mini.runs import eval_model

    out_dir = ctx.root / "benchmarks" / f"trial-{trial.number}"
    results = []
    for seed in ctx.space.seeds:
        final = ctx.root / f"trial-{trial.number}" / f"seed{seed}" / "final"
        if not final.exists():
            return None
        out = out_dir / f"seed{seed}.json"
        if out.exists():
            results.append(json.loads(out.read_text()))
            continue
        results.append(
            eval_model(
                str(final),
                world=ctx.world,
                out=out,
                config=str(base_config_path(ctx.space.base)),
                scale=ctx.scale,
                name=f"{ctx.study_name}/trial-{trial.number}",
                seed=seed,
                grid=ctx.root / "study.json",
            )
        )
    return mean_results(results)


def mean_results(results: list[dict]) -> dict:
    """Per-benchmark and AVG avg@k / pass@k averaged over seeds."""
    keys = ("avg_at_k", "pass_at_k")
    out = {"k": results[0]["k"], "seeds": len(results), **{k: statistics.fmean(r[k] for r in results) for k in keys}}
    out["benchmarks"] = {
        b: {k: statistics.fmean(r["benchmarks"][b][k] for r in results) for k in keys} for b in results[0]["benchmarks"]
    }
    return out


# -- helpers ---------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(f"[search {os.getpid()}] {msg}", file=sys.stderr, flush=True)


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
