"""Load a grid's runs and metric histories from MLflow into pandas: ``load_runs``.

This is the only place that reads MLflow; statistics, tables, figures, the report and the
notebook all take the ``Runs`` it returns (or one read back from a ``collect`` snapshot).

The MLflow layout it relies on (written by the workflow and ``workbench.tracking``):

- one experiment per scale, ``sgopd-<scale>``;
- a parent run per grid (tag ``workbench.kind=grid``), child runs carrying tag
  ``mlflow.parentRunId``; training children are tagged ``run`` (a run id of docs/algorithm.md section 8),
  ``group``, ``seed``, ``method``, ``backend``, ``config_hash``, ``git_commit``, with the
  flattened run config as params; evaluation-only children (``student-init``, ``teacher``,
  ``sgopd@90%``) carry ``workbench.kind=eval`` and the same eval metrics;
- canonical metric names (docs/algorithm.md section 10); ``eval/...`` metrics are percentages, logged at
  the final step, and possibly at earlier steps too (intermediate evaluations).

Which runs are kept. Every run of the experiment that has a ``run`` tag and is neither
tagged ``workbench.kind=grid`` nor the parent of another run (optionally only the children
of ``parent_run_id``). Of those, runs whose status is not in ``statuses`` (default
``FINISHED``) and older duplicates of the same (run, seed) (a rerun: the latest start wins)
go to ``Runs.skipped`` with the reason, so that a report can say what it left out.

The final value of a metric is MLflow's latest value (the one at the largest step). A
run without a ``seed`` tag gets seed 0.

Speed. Histories are fetched one metric key at a time for all runs at once where the
store supports it (SQL stores), else with a few threads per (run, key); a 26-run x 3-seed
x 200-step grid loads in about a second from SQLite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.errors import UserError

RUN_COLUMNS = [
    "mlflow_run_id",
    "run",
    "group",
    "seed",
    "method",
    "backend",
    "kind",
    "status",
    "start_time",
    "end_time",
    "config_hash",
    "git_commit",
    "parent_run_id",
]
HISTORY_COLUMNS = ["run", "seed", "mlflow_run_id", "metric", "step", "value"]
DEFAULT_HISTORY_PREFIXES = ("train/", "eval/")
GRID_KIND = "grid"
log = logging.getLogger(__name__)


@dataclass
class Runs:
    """A grid's runs (one row per child run) and their metric histories (long format).

    ``runs`` columns: ``RUN_COLUMNS``, then ``metrics.<name>`` (final values) and
    ``params.<name>`` (the flattened run config, as strings). ``history`` columns:
    ``HISTORY_COLUMNS``, sorted by run, seed, metric, step. ``skipped`` lists the runs left
    out (``mlflow_run_id``, ``run``, ``seed``, ``status``, ``reason``).
    """

    runs: pd.DataFrame
    history: pd.DataFrame
    experiment: str = ""
    tracking_uri: str = ""
    skipped: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["mlflow_run_id", "run", "seed", "status", "reason"])
    )
    _curves: dict | None = field(default=None, init=False, repr=False)  # (run, metric) -> rows, built lazily

    # -- queries -------------------------------------------------------------------------
    @property
    def run_ids(self) -> list[str]:
        return sorted(self.runs["run"].unique())

    def seeds(self, run: str) -> list[int]:
        return sorted(int(s) for s in self.runs.loc[self.runs["run"] == run, "seed"])

    def values(self, run: str, metric: str) -> pd.Series:
        """Final values of ``metric`` for ``run``, indexed by seed (NaN-free, sorted)."""
        col = f"metrics.{metric}"
        if col not in self.runs.columns:
            return pd.Series(dtype=float, name=metric)
        sel = self.runs.loc[self.runs["run"] == run, ["seed", col]].dropna()
        return pd.Series(sel[col].to_numpy(float), index=sel["seed"].astype(int).to_numpy(), name=metric).sort_index()

    def curves(self, run: str, metric: str) -> pd.DataFrame:
        """History of ``metric`` for ``run``: index step, one column per seed (NaN where absent)."""
        if self._curves is None:
            h = self.history
            self._curves = {key: g for key, g in h.groupby(["run", "metric"], observed=True, sort=False)} if len(h) else {}
        g = self._curves.get((run, metric))
        if g is None:
            return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
        wide = g.pivot(index="step", columns="seed", values="value")  # one point per (seed, step), see load_runs
        wide.columns = [int(c) for c in wide.columns]
        return wide.sort_index()

    # -- snapshots -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a snapshot (``runs.parquet``, ``history.parquet``, ``skipped.parquet``, ``meta.json``)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.runs.to_parquet(d / "runs.parquet", index=False)
        self.history.astype({"run": str, "metric": str}).to_parquet(d / "history.parquet", index=False)
        self.skipped.astype(str).to_parquet(d / "skipped.parquet", index=False)
        (d / "meta.json").write_text(json.dumps({"experiment": self.experiment, "tracking_uri": self.tracking_uri}, indent=1))
        return d

    @classmethod
    def read(cls, directory: str | Path) -> Runs:
        """Read a snapshot written by ``save``; a missing or broken one is a ``SnapshotError``."""
        d = Path(directory)
        if not d.is_dir():
            what = "is a file, not a snapshot directory" if d.exists() else "no such directory"
            raise SnapshotError(f"--collected {d}: {what} (write one with `workbench collect`)")
        missing = [f for f in ("meta.json", "runs.parquet", "history.parquet") if not (d / f).is_file()]
        if missing:
            raise SnapshotError(f"--collected {d}: not a snapshot of `workbench collect` (no {', '.join(missing)})")
        try:
            meta = json.loads((d / "meta.json").read_text())
            if not isinstance(meta, dict):
                raise TypeError("meta.json is not a JSON object")
            history = pd.read_parquet(d / "history.parquet")
            history = history.astype({"run": "category", "metric": "category"})
            skipped = pd.read_parquet(d / "skipped.parquet") if (d / "skipped.parquet").exists() else None
            runs = pd.read_parquet(d / "runs.parquet")
            if not {"run", "seed"} <= set(runs.columns):
                raise ValueError("runs.parquet lacks the run and seed columns")
        except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow's errors are OSError / ValueError subclasses
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise SnapshotError(f"--collected {d}: broken snapshot ({reason}); rerun `workbench collect`") from None
        out = cls(runs, history, meta.get("experiment", ""), meta.get("tracking_uri", ""))
        if skipped is not None:
            out.skipped = skipped
        return out


class SnapshotError(UserError, LookupError):
    """A missing or unreadable input of the analysis verbs: a snapshot, a store, an experiment."""


def load_runs(
    tracking_uri: str,
    experiment: str,
    *,
    parent_run_id: str | None = None,
    statuses: Iterable[str] | None = ("FINISHED",),
    history_prefixes: Iterable[str] | None = DEFAULT_HISTORY_PREFIXES,
    history_runs: Iterable[str] | None = None,
) -> Runs:
    """Load the child runs of ``experiment`` and their metric histories.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...``, ``http://...``, ``file:...``).
        experiment: experiment name, e.g. ``sgopd-mini``.
        parent_run_id: keep only the children of this grid run (default: every grid's).
        statuses: run statuses to keep (None keeps all); the others go to ``skipped``.
        history_prefixes: load histories of the metrics whose names start with one of these
            (None: every metric; ``()``: none).
        history_runs: load histories only for these run ids (None: all).
    """
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        # MLflow would create an empty store there and find nothing.
        raise SnapshotError(f"no MLflow store at {tracking_uri} (set --tracking-uri or MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SnapshotError(f"no MLflow experiment {experiment!r} in {tracking_uri}")
    all_runs = _search_all(client, exp.experiment_id, ViewType.ACTIVE_ONLY)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in all_runs} - {None}

    rows, params, skipped = [], [], []
    for r in all_runs:
        tags = r.data.tags
        if tags.get("workbench.kind") == GRID_KIND or r.info.run_id in parents or "run" not in tags:
            continue
        if parent_run_id is not None and tags.get("mlflow.parentRunId") != parent_run_id:
            continue
        row = {
            "mlflow_run_id": r.info.run_id,
            "run": tags["run"],
            "group": tags.get("group", ""),
            "seed": _int(tags.get("seed"), 0),
            "method": tags.get("method", ""),
            "backend": tags.get("backend", ""),
            "kind": tags.get("workbench.kind", "train"),
            "status": r.info.status,
            "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True) if r.info.start_time else pd.NaT,
            "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
            "config_hash": tags.get("config_hash", ""),
            "git_commit": tags.get("git_commit", ""),
            "parent_run_id": tags.get("mlflow.parentRunId", ""),
        }
        row.update({f"metrics.{k}": float(v) for k, v in r.data.metrics.items()})
        rows.append(row)
        params.append({f"params.{k}": v for k, v in r.data.params.items()})

    frame = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    if rows:
        frame = pd.concat([frame, pd.DataFrame(params, index=frame.index)], axis=1)
    keep_status = None if statuses is None else set(statuses)
    if len(frame):
        bad = frame["status"].map(lambda s: keep_status is not None and s not in keep_status)
        skipped += [_skip(r, f"status {r.status}") for r in frame[bad].itertuples()]
        frame = frame[~bad]
        frame = frame.sort_values(["run", "seed", "start_time"])
        dup = frame.duplicated(["run", "seed"], keep="last")
        skipped += [_skip(r, "superseded by a later run of the same run id and seed") for r in frame[dup].itertuples()]
        frame = frame[~dup].reset_index(drop=True)
    metric_cols = sorted(c for c in frame.columns if c.startswith("metrics."))
    param_cols = sorted(c for c in frame.columns if c.startswith("params."))
    frame = frame[RUN_COLUMNS + metric_cols + param_cols]

    wanted = None if history_runs is None else set(history_runs)
    targets = [(row.mlflow_run_id, row.run, row.seed) for row in frame.itertuples() if wanted is None or row.run in wanted]
    prefixes = None if history_prefixes is None else tuple(history_prefixes)
    history = _histories(client, targets, [c[len("metrics.") :] for c in metric_cols], prefixes, frame)
    skipped_df = pd.DataFrame(skipped, columns=["mlflow_run_id", "run", "seed", "status", "reason"])
    return Runs(frame, history, experiment, tracking_uri, skipped_df)


def collect(tracking_uri: str, experiment: str, out_dir: str | Path, **kwargs) -> Path:
    """``load_runs`` then ``Runs.save(out_dir)``: a snapshot the later steps can ``Runs.read``."""
    return load_runs(tracking_uri, experiment, **kwargs).save(out_dir)


# -- helpers -----------------------------------------------------------------------------
def _search_all(client, experiment_id: str, view_type) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=view_type, max_results=50000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _histories(client, targets, metrics, prefixes, frame) -> pd.DataFrame:
    if prefixes is not None:
        metrics = [m for m in metrics if m.startswith(prefixes)]
    if not targets or not metrics:
        return _empty_history()
    by_id = {mid: (run, seed) for mid, run, seed in targets}
    has = {m: set(frame.loc[frame[f"metrics.{m}"].notna(), "mlflow_run_id"]) & by_id.keys() for m in metrics}
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    h = None
    if getattr(store, "engine", None) is not None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            h = _histories_sql(store.engine, sorted(by_id), metrics)
        except (SQLAlchemyError, KeyError, ValueError) as e:  # a schema this code does not know:
            # fall back to MLflow's documented API
            log.info("direct SQL read of metric histories failed (%s); using MLflow's API", e)
    if h is None:
        h = _histories_api(client, store, metrics, has)
    if h.empty:
        return _empty_history()
    # one point per (run, metric, step): the latest logged wins (the tracker never repeats one)
    h = h.sort_values(["mlflow_run_id", "metric", "step", "timestamp"]).drop_duplicates(
        ["mlflow_run_id", "metric", "step"], keep="last"
    )
    ids = h["mlflow_run_id"]
    h["run"] = ids.map({m: rs[0] for m, rs in by_id.items()})
    h["seed"] = ids.map({m: rs[1] for m, rs in by_id.items()}).astype(int)
    h = h[HISTORY_COLUMNS].sort_values(["run", "seed", "metric", "step"]).reset_index(drop=True)
    h["step"] = h["step"].astype(int)
    h["value"] = h["value"].astype(float)
    return h.astype({"run": "category", "metric": "category"})


def _histories_sql(engine, run_ids: list[str], metrics: list[str]) -> pd.DataFrame:
    """SQL stores: read MLflow's ``metrics`` table in one query per 500 runs (the ORM path
    builds an object per point and is ~20x slower). NaN points are stored as ``is_nan``."""
    import sqlalchemy as sa

    table = sa.table(
        "metrics",
        sa.column("run_uuid"),
        sa.column("key"),
        sa.column("step"),
        sa.column("value"),
        sa.column("timestamp"),
        sa.column("is_nan"),
    )
    parts = []
    with engine.connect() as conn:
        for i in range(0, len(run_ids), 500):
            q = sa.select(table.c.run_uuid, table.c.key, table.c.step, table.c.value, table.c.timestamp, table.c.is_nan).where(
                table.c.run_uuid.in_(run_ids[i : i + 500]), table.c.key.in_(metrics)
            )
            rows = [tuple(r) for r in conn.execute(q).fetchall()]
            parts.append(pd.DataFrame(rows, columns=["mlflow_run_id", "metric", "step", "value", "timestamp", "is_nan"]))
    h = pd.concat(parts, ignore_index=True)
    h.loc[h["is_nan"].astype(bool), "value"] = float("nan")
    return h.drop(columns="is_nan")


def _histories_api(client, store, metrics, has) -> pd.DataFrame:
    cols: dict[str, list] = {"mlflow_run_id": [], "metric": [], "step": [], "value": [], "timestamp": []}

    def add(mid, key, points):
        for p in points:
            cols["mlflow_run_id"].append(mid)
            cols["metric"].append(key)
            cols["step"].append(p.step)
            cols["value"].append(p.value)
            cols["timestamp"].append(p.timestamp)

    if store is not None and hasattr(store, "get_metric_history_bulk"):  # one query per key
        for key in metrics:
            ids = sorted(has[key])
            for i in range(0, len(ids), 500):
                for item in store.get_metric_history_bulk(ids[i : i + 500], key, max_results=2**31 - 1):
                    add(item.run_id, key, [item])
    else:  # e.g. a tracking server: one request per (run, key), a few at a time
        jobs = [(mid, key) for key in metrics for mid in sorted(has[key])]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for (mid, key), points in zip(jobs, pool.map(lambda j: client.get_metric_history(*j), jobs)):
                add(mid, key, points)
    return pd.DataFrame(cols)


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": pd.Categorical([]),
            "seed": pd.Series([], dtype=int),
            "mlflow_run_id": pd.Series([], dtype=str),
            "metric": pd.Categorical([]),
            "step": pd.Series([], dtype=int),
            "value": pd.Series([], dtype=float),
        }
    )


def _skip(row, reason: str) -> dict:
    return {"mlflow_run_id": row.mlflow_run_id, "run": row.run, "seed": row.seed, "status": row.status, "reason": reason}


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
