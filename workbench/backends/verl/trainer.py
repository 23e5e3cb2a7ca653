"""verl's sync PPO trainer as every workbench PPO-family run uses it (``workbench_sync``).

Every distillation and RL run (sgopd, exopd, opd, gkd, grpo...) runs this trainer mode;
the PTS runs run its subclass (``pts.PTSTrainer``, mode ``sgopd_sync``).
``python -m workbench.backends.verl.main`` selects it unless the overrides choose a mode.
It adds two things to verl's ``PPOTrainerSync`` and changes nothing else:

1. **docs/algorithm.md section 10's metric names at every step.** ``_compute_metrics`` is where verl
   assembles the step's metrics dict, which ``fit`` then hands to every logger backend;
   adding the canonical names there (``metrics.add_canonical``) reaches MLflow, the
   console and any other backend alike. The alternatives were worse: wrapping
   ``Tracking.log`` means replacing a class verl imports by name into its trainer module,
   and a per-method hook would let a method slip through (before this trainer only the
   PTS runs had the names).
2. **MLflow that survives a resume.** verl's ``Tracking`` (``verl/utils/tracking.py``)
   attaches to ``MLFLOW_RUN_ID`` and calls ``mlflow.log_params`` with the whole config
   each time a job starts. MLflow refuses a changed value for a logged param, so a resumed
   job whose config changed in any value fails that call; verl retries the whole set-up
   three times (the run is by then active in the process, so the retries fail as well),
   logs a warning and trains on *without MLflow*, exit code 0. A metric that fails to log
   three times is likewise dropped with a warning. So the trainer takes MLflow out of
   ``trainer.logger`` before verl builds its ``Tracking`` and adds ``MlflowLogger`` to
   that ``Tracking`` in its place (the ``logger`` property: verl assigns
   ``self.logger = Tracking(...)`` in ``fit`` and logs through it right after; the
   assignment is the one point between the two). ``MlflowLogger`` logs only the params
   the run does not have yet, records a changed value as a ``resumed.<key>`` tag, and
   fails the job when a step's metrics cannot be logged after retries.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from workbench.backends.verl.metrics import add_canonical
from workbench.tracking import ensure_experiment

log = logging.getLogger(__name__)

TRAINER_MODE = "workbench_sync"
#: verl's fallback when ``MLFLOW_TRACKING_URI`` is unset (``verl/utils/tracking.py``).
VERL_DEFAULT_URI = "sqlite:////tmp/mlruns.db"
RESUMED_TAG = "resumed."


def _params(config: Mapping[str, Any] | None) -> dict[str, str]:
    """The run's params with the same keys verl's own MLflow logger gives them (so that a
    run first tracked by verl's logger resumes without a conflict), as MLflow stores them."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    from verl.utils.tracking import _compute_mlflow_params_from_objects

    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in _compute_mlflow_params_from_objects(config).items()}


class MlflowLogger:
    """A verl ``Tracking`` backend (``log(data, step)``, ``finish()``) for one MLflow run.

    The run: ``MLFLOW_RUN_ID`` (the launcher's), else a new run named ``experiment_name``
    in experiment ``project_name`` (as verl does). Params: logged once; on a later start the
    ones the run already has with the same value are skipped, a changed value goes to the
    tag ``resumed.<key>`` (tags may change; the first value stays the param). Metrics: one
    batch per step, retried with back-off, then an error: a job never trains on untracked.
    ``finish`` ends only a run it created; the launcher's run is ended by the launcher,
    which knows whether the job succeeded.
    """

    attempts = 5
    backoff_s = 1.0

    def __init__(self, project_name: str, experiment_name: str, config: Mapping[str, Any] | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or VERL_DEFAULT_URI)
        run_id = os.environ.get("MLFLOW_RUN_ID")
        self.owns_run = not run_id
        if run_id:
            self.run_id = run_id
        else:
            exp_id = ensure_experiment(self.client, self.client.tracking_uri, project_name)
            self.run_id = self.client.create_run(exp_id, run_name=experiment_name).info.run_id
        self.changed = self.log_params(_params(config))

    def _retry(self, what: str, fn, *args, **kwargs):
        for attempt in range(self.attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # the stores raise no common type
                if attempt == self.attempts - 1:
                    raise RuntimeError(f"MLflow: {what} failed {self.attempts} times for run {self.run_id}: {e}") from e
                log.warning("MLflow: %s failed (attempt %d/%d): %s", what, attempt + 1, self.attempts, e)
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def log_params(self, params: Mapping[str, str]) -> dict[str, str]:
        """Log the params the run lacks; the changed ones as ``resumed.<key>`` tags (returned)."""
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        have = self._retry("reading the run", self.client.get_run, self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in have]
        changed = {k: v for k, v in params.items() if k in have and have[k] != v}
        tags = [RunTag(RESUMED_TAG + k, v[:MAX_TAG_VAL_LENGTH]) for k, v in changed.items()]
        self._retry("logging params", self.client.log_batch, self.run_id, params=new, tags=tags)
        if changed:
            log.warning(
                "MLflow run %s: %d param(s) differ from the run's first start, kept as tags %s*: %s",
                self.run_id,
                len(changed),
                RESUMED_TAG,
                ", ".join(sorted(changed)[:10]),
            )
        return changed

    _invalid = re.compile(r"[^/\w.\- :]")  # MLflow's allowed key characters (as verl's own logger)

    @classmethod
    def key(cls, name: str) -> str:
        return cls._invalid.sub("_", re.sub(r"/+", "/", name.replace("@", "_at_")))

    def log(self, data: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for k, v in data.items():
            try:
                metrics.append(Metric(self.key(k), float(v), now, int(step)))
            except (TypeError, ValueError):
                continue  # not a number (verl logs tables and text elsewhere)
        self._retry(f"logging step {step}'s metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def finish(self) -> None:
        if self.owns_run:
            self._retry("ending the run", self.client.set_terminated, self.run_id, "FINISHED")


@register_trainer(TRAINER_MODE)
class WorkbenchTrainer(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` with the workbench's metric names and MLflow handling."""

    _mlflow: MlflowLogger | None = None

    def _build_replay_buffer(self):
        # verl tests the mode's name ("sync") in several places: behave as its sync trainer.
        self.trainer_mode = "sync"
        self.parameter_sync_step = 1
        return super()._build_replay_buffer()

    def fit(self, *args, **kwargs):
        self._take_over_mlflow()
        return super().fit(*args, **kwargs)

    def _take_over_mlflow(self) -> None:
        """Start ``MlflowLogger`` (params of the whole config, as verl would log them) and take
        ``mlflow`` out of ``trainer.logger``, so that verl's ``Tracking`` never sets it up."""
        backends = OmegaConf.select(self.config, "trainer.logger")
        backends = [backends] if isinstance(backends, str) else list(backends or [])
        if "mlflow" in backends:
            self._mlflow = MlflowLogger(
                self.config.trainer.project_name,
                self.config.trainer.experiment_name,
                OmegaConf.to_container(self.config, resolve=True),
            )
            with open_dict(self.config):
                self.config.trainer.logger = [b for b in backends if b != "mlflow"]

    @property
    def logger(self):
        return self.__dict__.get("_tracking")

    @logger.setter
    def logger(self, tracking) -> None:
        if tracking is not None and self._mlflow is not None:
            tracking.logger["mlflow"] = self._mlflow
        self.__dict__["_tracking"] = tracking

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        add_canonical(metrics, n_gpus=self._get_n_gpus_for_throughput())


__all__ = ["TRAINER_MODE", "MlflowLogger", "WorkbenchTrainer"]
