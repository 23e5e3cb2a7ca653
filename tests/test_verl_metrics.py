"""Every verl PPO-family run logs docs/algorithm.md section 10's metric names, and MLflow survives a resume (CPU).

- Each grid run's job, as ``python -m workbench.backends.verl.main`` hands it to verl,
  composes to a trainer mode whose class (verl's own registry) is a ``WorkbenchTrainer``.
- That trainer's ``_compute_metrics`` runs verl 0.9.1's real ``_compute_metrics`` (its
  TransferQueue reads served from memory: the real TransferQueue needs Ray actors) and
  adds the canonical names, for the actor metrics each method family really produces.
- verl's own MLflow set-up drops MLflow on a resume with a changed param (the trap,
  shown); the trainer's ``MlflowLogger`` keeps logging, and fails loudly instead of
  dropping a step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from omegaconf import OmegaConf
from tensordict import TensorDict

from workbench.backends.verl import pts_plan
from workbench.backends.verl.trainer import MlflowLogger, WorkbenchTrainer
from workbench.config import load_config

RUNS = Path(__file__).resolve().parents[1] / "experiments" / "runs"
N_GPUS = 8

#: what the analysis reads (workbench/analysis: figures' panels, stats' conflict metric, PTS figure)
BASE = {
    "train/reward_mean",
    "train/response_length",
    "train/entropy",
    "train/loss",
    "train/grad_norm",
    "perf/step_seconds",
    "perf/tokens_per_second",
}
ROUTED = BASE | {
    "train/conflict_frac",
    "train/consensus_frac",
    "train/neutral_frac",
    "train/adv_mean",
    "train/adv_abs_max",
    "train/kl_teacher",
}
PTS = ROUTED | {"train/pts_alpha", "train/pts_kept", "train/pts_teacher_acc", "train/pts_loss"}


# -- every PPO-family run trains with a workbench trainer -----------------------------------------


def test_every_ppo_family_run_trains_with_a_workbench_trainer():
    from verl.trainer.ppo.v1 import get_trainer_cls

    from workbench.backends.verl import main, trainer
    from workbench.backends.verl.check import compose
    from workbench.backends.verl.overrides import build_job, load_scale

    assert main.DEFAULT_TRAINER_MODE == trainer.TRAINER_MODE
    scale = load_scale("paper")
    modes = {}
    for path in sorted(RUNS.glob("*.yaml")):
        job = build_job(load_config(path), scale)
        if job.kind != "ppo":
            continue
        cfg = compose(dataclasses.replace(job, overrides=main.verl_argv(job.overrides)))
        cls = get_trainer_cls(cfg.trainer.v1.trainer_mode)  # what verl's TaskRunner does
        assert issubclass(cls, WorkbenchTrainer), (path.stem, cls)
        modes[path.stem] = cfg.trainer.v1.trainer_mode
    assert {"opd", "gkd", "grpo", "sgopd", "exopd-1.25", "pts-30-35"} <= modes.keys()
    assert modes["pts-30-35"] == "sgopd_sync" and modes["opd"] == modes["grpo"] == "workbench_sync"


def test_main_keeps_a_chosen_trainer_mode():
    from workbench.backends.verl.main import verl_argv

    assert verl_argv(["a=1"]) == ["a=1", "trainer.v1.trainer_mode=workbench_sync"]
    assert verl_argv(["trainer.v1.trainer_mode=sgopd_sync"]) == ["trainer.v1.trainer_mode=sgopd_sync"]
    assert verl_argv(["++trainer.v1.trainer_mode=x"]) == ["++trainer.v1.trainer_mode=x"]


# -- the step's metrics through verl's own _compute_metrics ----------------------------------------


class MemoryKV:
    """TransferQueue's ``kv_batch_get`` over rows held in memory: per-token fields as jagged
    nested tensors, per-row fields stacked, absent fields left out (as TransferQueue does)."""

    def __init__(self, rows: dict[str, dict[str, torch.Tensor]]):
        self.rows = rows

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        names = [f for f in (select_fields or self.rows[keys[0]]) if all(f in self.rows[k] for k in keys)]
        out = {}
        for f in names:
            vals = [torch.as_tensor(self.rows[k][f]) for k in keys]
            out[f] = torch.nested.as_nested_tensor(vals, layout=torch.jagged) if vals[0].dim() else torch.stack(vals)
        return TensorDict(out, batch_size=[len(keys)])


def _rows(n_student: int, n_anchor: int, seed: int = 0):
    """Rows as verl stores them after a step, anchors first (verl's padding copies row 0)."""
    g = torch.Generator().manual_seed(seed)
    rows, tags = {}, []
    for i in range(n_anchor + n_student):
        p, r = int(torch.randint(3, 7, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
        if i < n_anchor:  # the teacher's answers: long and right, unlike the student's average
            r = 12
        score = torch.zeros(r)
        score[-1] = 1.0 if i < n_anchor else float(torch.rand((), generator=g) < 0.5)
        rows[f"u{i}_0_0"] = {
            "prompts": torch.randint(3, 50, (p,), generator=g),
            "responses": torch.randint(3, 50, (r,), generator=g),
            "response_mask": torch.ones(r, dtype=torch.long),
            "advantages": torch.randn(r, generator=g),
            "returns": torch.randn(r, generator=g),
            "rm_scores": score,
            "num_turns": torch.tensor(2),
            "pts_anchor": torch.tensor(int(i < n_anchor)),
            "entropy": torch.rand(r, generator=g),
        }
        tags.append({"min_global_steps": 2, "max_global_steps": 2, "seq_len": p + r})
    return rows, tags


def _pad(rows, tags, n_pad: int):
    """verl's own padding (``upsample_batch_to_divisible_size``'s template): copies of row 0."""
    from verl.trainer.ppo.padding_utils import construct_minimal_padding_template

    first = next(iter(rows))
    sample, tag = construct_minimal_padding_template(rows[first], tags[0], eos_token_id=2)
    for j in range(n_pad):
        rows[f"pad_{j}_0"] = dict(sample)
        tags.append(dict(tag))
    return rows, tags


def _engine_metrics(loss_metrics: dict) -> dict:
    """What ``_update_actor`` adds: the worker's metrics prefixed ``actor/`` (verl's helpers)."""
    from verl.utils.metric import reduce_metrics
    from verl.utils.py_functional import rename_dict

    out = rename_dict({**loss_metrics, "loss": 0.25, "grad_norm": 0.75, "lr": 1e-6, "mfu": 0.3}, "actor/")
    out["perf/mfu/actor"] = out.pop("actor/mfu")
    return reduce_metrics({k: [v] for k, v in out.items()})


def _loss_metrics(family: str, anchor_fields=None) -> dict:
    """The actor loss's own metrics for a family, from verl's real loss where it runs on CPU."""
    from verl.workers.config import DistillationLossConfig

    from workbench.backends.verl.loss import SGOPDLossConfig
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, run_verl

    if family in ("sgopd", "exopd"):
        cfg = SGOPDLossConfig(lambda_high=1.5 if family == "sgopd" else 1.25)
        return run_verl(actor_config(), distillation_config(cfg), make_batch(seed=1, n_rows=9))[2]
    if family == "pts":
        batch, extra = anchor_fields
        return run_verl(actor_config(), distillation_config(SGOPDLossConfig()), batch, extra)[2]
    if family == "opd":
        stock = DistillationLossConfig(loss_mode="k1", use_policy_gradient=True, use_task_rewards=False, loss_max_clamp=None)
        return run_verl(actor_config(), distillation_config(stock), make_batch(seed=1, n_rows=9, is_weights=False))[2]
    return {}  # gkd, grpo: the worker-level names only


def _pts_step(rows, tags):
    """What ``PTSTrainer._compute_advantage`` computes for these rows (and the loss's inputs)."""
    from workbench.backends.verl.testing import make_batch

    keys = list(rows)
    mask_rows = [rows[k]["response_mask"].bool() for k in keys]
    width = max(len(m) for m in mask_rows)
    pad = lambda xs: torch.stack([torch.nn.functional.pad(x.float(), (0, width - len(x))) for x in xs])
    mask = pad(mask_rows).bool()
    anchor = torch.stack([rows[k]["pts_anchor"] for k in keys])
    rewards = torch.stack([rows[k]["rm_scores"].sum() for k in keys])
    plan = pts_plan.StepPlan(True, 2, 0.5)
    zeros = torch.zeros(len(keys), width)
    _, metrics = pts_plan.step_fields(
        rewards=rewards,
        uids=[k.split("_")[0] for k in keys],
        anchor=anchor,
        mask=mask,
        lp_old=zeros - 1,
        lp_teacher=zeros - 1.5,
        lp_ref=None,
        loss_cfg={"pts_filter_correct": False},
        plan=plan,
        padding=pts_plan.padding_rows(tags),
        entropy=pad([rows[k]["entropy"] for k in keys]),
    )
    batch = make_batch(seed=2, n_rows=9, n_anchor=2)
    extra = {"sgopd_row_scale": torch.ones(9), "pts_anchor": batch.anchor.long()}
    return metrics, (batch, extra)


FAMILIES = ["sgopd", "exopd", "opd", "gkd", "grpo", "pts"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_logs_the_spec_names_through_the_trainers_compute_metrics(family, monkeypatch):
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta

    from workbench.backends.verl.pts import PTSTrainer

    pts = family == "pts"
    rows, tags = _pad(*_rows(n_student=7, n_anchor=2 if pts else 0), n_pad=3)
    monkeypatch.setattr(tq, "kv_batch_get", MemoryKV(rows).kv_batch_get)
    trainer = object.__new__(PTSTrainer if pts else WorkbenchTrainer)
    trainer.config = OmegaConf.create(
        {"actor_rollout_ref": {"rollout": {"moe_load_balance_metrics_interval": 0}, "model": {"mtp": None}}}
    )
    trainer.use_critic = False
    trainer._rollout_moe_lb_metrics_accumulator = None
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: N_GPUS)

    metrics = {"actor/entropy": 0.8}  # _compute_old_log_prob's
    anchor_fields = None
    if pts:
        step_metrics, anchor_fields = _pts_step(rows, tags)
        metrics.update(step_metrics)
    metrics.update(_engine_metrics(_loss_metrics(family, anchor_fields)))
    timing = {"step": 20.0, "gen": 8.0, "update_actor": 6.0}
    batch = KVBatchMeta(keys=list(rows), tags=tags, partition_id="train")
    trainer._compute_metrics(batch, metrics, timing, global_steps=3, epoch=0)

    want = {"sgopd": ROUTED, "exopd": ROUTED, "pts": PTS}.get(family, BASE)
    assert want <= metrics.keys(), sorted(want - metrics.keys())
    real = [k for k, t in zip(rows, tags) if not t.get("is_padding")]
    student = [k for k in real if not int(rows[k]["pts_anchor"])]
    assert metrics["train/reward_mean"] == pytest.approx(sum(float(rows[k]["rm_scores"].sum()) for k in student) / len(student))
    assert metrics["critic/score/mean"] == pytest.approx(metrics["train/reward_mean"])  # verl's own: students only
    assert metrics["train/response_length"] == pytest.approx(sum(len(rows[k]["responses"]) for k in student) / len(student))
    assert metrics["train/loss"] == 0.25 and metrics["train/grad_norm"] == 0.75
    assert metrics["perf/step_seconds"] == 20.0
    assert metrics["perf/tokens_per_second"] == pytest.approx(metrics["perf/throughput"] * N_GPUS)
    if pts:  # the student's entropy, not verl's all-row actor/entropy; counts without padding rows
        ent = torch.cat([rows[k]["entropy"] for k in student])
        assert metrics["train/entropy"] == pytest.approx(float(ent.mean()))
        assert metrics["train/pts_kept"] == 2.0
        assert batch.tags[0].get("is_padding") is None  # verl's bookkeeping keeps the real tags
    else:
        assert metrics["train/entropy"] == 0.8
    if want >= ROUTED:  # exact fractions from the loss's integer counts
        n = metrics["actor/sgopd/n_conflict"] + metrics["actor/sgopd/n_consensus"]
        assert metrics["train/conflict_frac"] == pytest.approx(metrics["actor/sgopd/n_conflict"] / n)


# -- PTS glue: padding rows and anchor rows --------------------------------------------------------


def test_metric_tags_hide_anchors_and_keep_padding_and_the_originals():
    tags = [{"seq_len": 5}, {"seq_len": 6}, {"seq_len": 7, "is_padding": True}]
    anchor = torch.tensor([1, 0, 1])  # the padding row copied an anchor flag
    out = pts_plan.metric_tags(tags, anchor)
    assert [t.get("is_padding", False) for t in out] == [True, False, True]
    assert "is_padding" not in tags[0]  # a copy
    student, anchors = pts_plan.row_roles(anchor, pts_plan.padding_rows(tags))
    assert student.tolist() == [False, True, False] and anchors.tolist() == [True, False, False]


# -- MLflow ------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


CONFIG = {
    "trainer": {"logger": ["console", "mlflow"], "project_name": "e", "experiment_name": "r-seed0", "total_training_steps": 10},
    "actor": {"lr": 1e-6, "ppo_epochs": 1},
}


def test_verls_own_mlflow_setup_drops_mlflow_on_a_resume_with_a_changed_param(mlflow_run, monkeypatch):
    """The trap (verl 0.9.1): the job goes on, tracked nowhere."""
    import mlflow
    from verl.utils import tracking as vt

    client, run_id = mlflow_run
    monkeypatch.setattr(vt, "MLFLOW_SLEEP_SECONDS", 0)
    first = vt.Tracking("e", "r-seed0", default_backend=["mlflow"], config=CONFIG)
    assert "mlflow" in first.logger
    first.finish()  # mlflow.end_run() also drops MLFLOW_RUN_ID from os.environ: a new job sets it again
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    changed = {**CONFIG, "actor": {"lr": 2e-6, "ppo_epochs": 1}}
    try:
        again = vt.Tracking("e", "r-seed0", default_backend=["mlflow"], config=changed)
        assert "mlflow" not in again.logger  # and no error: the job would train on untracked
        assert client.get_run(run_id).data.params["actor/lr"] == "1e-06"
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()


def _tracking_as_verls_fit_builds_it(config):
    """``WorkbenchTrainer`` set up as in ``fit``: its MLflow take-over, then verl's own
    ``Tracking`` from the (edited) config, assigned to ``self.logger`` as verl does."""
    from verl.utils.tracking import Tracking

    trainer = object.__new__(WorkbenchTrainer)
    trainer.config = OmegaConf.create(config)
    trainer._take_over_mlflow()
    trainer.logger = Tracking(
        project_name=trainer.config.trainer.project_name,
        experiment_name=trainer.config.trainer.experiment_name,
        default_backend=trainer.config.trainer.logger,
        config=OmegaConf.to_container(trainer.config, resolve=True),
    )
    return trainer


def test_a_resume_with_changed_params_keeps_mlflow(mlflow_run):
    client, run_id = mlflow_run
    first = _tracking_as_verls_fit_builds_it(CONFIG)
    assert list(first.config.trainer.logger) == ["console"] and "mlflow" in first.logger.logger
    first.logger.log({"train/reward_mean": 0.25, "val-core/x/acc/mean@4": 1.0}, step=1)
    first.logger.finish()

    resumed = {**CONFIG, "actor": {"lr": 2e-6, "ppo_epochs": 1}, "extra": {"new": True}}
    again = _tracking_as_verls_fit_builds_it(resumed)
    again.logger.log({"train/reward_mean": 0.5}, step=2)
    run = client.get_run(run_id)
    assert run.data.params["actor/lr"] == "1e-06"  # the first value stays the param
    assert run.data.tags["resumed.actor/lr"] == "2e-06"  # the change is kept, as a tag
    assert run.data.params["extra/new"] == "True" and run.data.params["trainer/logger/1"] == "mlflow"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/reward_mean")] == [(1, 0.25), (2, 0.5)]
    assert "val-core/x/acc/mean_at_4" in run.data.metrics  # verl's key sanitising
    assert run.info.status == "RUNNING"  # the launcher's run: the launcher ends it


def test_a_failing_store_fails_the_step_instead_of_dropping_it(mlflow_run):
    client, run_id = mlflow_run
    logger = MlflowLogger("e", "r-seed0", CONFIG)
    logger.attempts, logger.backoff_s = 2, 0.0
    client.delete_run(run_id)
    with pytest.raises(RuntimeError, match="MLflow: logging step 3"):
        logger.log({"train/reward_mean": 1.0}, step=3)


def test_without_a_launcher_run_it_creates_and_ends_its_own(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'own.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    logger = MlflowLogger("proj", "name", CONFIG)
    logger.log({"a": 1.0}, step=1)
    logger.finish()
    run = MlflowClient(uri).get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "name" and run.data.metrics["a"] == 1.0


# -- the launcher's side of MLflow ---------------------------------------------------------------------


def test_a_sqlite_or_file_store_is_refused_inside_a_slurm_job():
    from workbench.backends.verl.launch import check_tracking_store
    from workbench.errors import UserError

    for uri in ("sqlite:////shared/mlflow.db", "file:///shared/mlruns", "/shared/mlruns"):
        with pytest.raises(UserError, match="tracking server"):
            check_tracking_store(uri, {"SLURM_JOB_ID": "123"})
        check_tracking_store(uri, {})  # one machine: fine
    check_tracking_store("http://mlflow.cluster:5000", {"SLURM_JOB_ID": "123"})
    check_tracking_store("postgresql://u@db/mlflow", {"SLURM_JOB_ID": "123"})


def test_the_launcher_owns_the_run_status_and_reopens_it_on_resume(tmp_path, monkeypatch):
    import sys

    from mlflow.tracking import MlflowClient

    from workbench.backends.verl import launch
    from workbench.backends.verl.overrides import build_job, load_scale

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(RUNS / "sgopd.yaml")
    job = build_job(cfg, load_scale("paper"), results=str(tmp_path / "results"))
    run_id, got_uri = launch.ensure_mlflow_run(job, cfg, experiment="e", parent_run_id=None, tracking_uri=uri)
    client = MlflowClient(uri)
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": got_uri}
    fail = [launch.Step("train", [sys.executable, "-c", "raise SystemExit(3)"], env)]
    assert launch.run(fail) == 3 and client.get_run(run_id).info.status == "FAILED"
    assert launch.ensure_mlflow_run(job, cfg, experiment="e", parent_run_id=None, tracking_uri=None)[0] == run_id
    assert client.get_run(run_id).info.status == "RUNNING"  # the resumed attempt
    ok = [launch.Step("train", [sys.executable, "-c", "pass"], env)]
    assert launch.run(ok) == 0 and client.get_run(run_id).info.status == "FINISHED"


def test_the_export_step_fails_when_metrics_stop_short_of_the_checkpoint(mlflow_run, tmp_path, monkeypatch, capsys):
    from workbench.backends.verl import launch

    client, run_id = mlflow_run
    (tmp_path / "ckpt" / "global_step_5" / "actor").mkdir(parents=True)
    (tmp_path / "ckpt" / "global_step_3" / "actor").mkdir(parents=True)
    for step in range(1, 5):  # a job that lost its last step's metrics
        client.log_metric(run_id, "training/global_step", step, step=step)
    assert launch.merge(str(tmp_path / "ckpt"), str(tmp_path / "hf")) == 1
    assert "up to step 4" in capsys.readouterr().err
    client.log_metric(run_id, "training/global_step", 5, step=5)
    launch.check_logged(run_id, client.tracking_uri, 5)  # complete: no error
    with pytest.raises(RuntimeError, match="up to step None"):
        launch.check_logged(client.create_run(client.get_run(run_id).info.experiment_id).info.run_id, client.tracking_uri, 1)
