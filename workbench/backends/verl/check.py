"""``workbench verl-check``: compose and validate verl's full config for grid runs, on CPU.

For each run: build its job (``overrides.build_job``), compose verl's own Hydra config
(``ppo_trainer`` or ``sft_trainer_engine``, from the installed verl) with the overrides,
run verl's ``validate_config`` (batch divisibility, micro-batch settings, the actor's
dataclass validation), instantiate every config dataclass the job's processes will
build (actor, rollout, reference, algorithm, rollout correction, distillation with its
teacher pool and loss, reward, data-free trainer parts), and check what verl would only
find out on the cluster: the PTS trainer mode is registered, the loss is registered,
MLflow is importable (verl silently drops a logger it cannot set up), TransferQueue is
installed (verl's default v1 trainer imports it), the teacher has its own GPU pool and
the job requests exactly the GPUs of verl's resource pools.
Nothing is downloaded: model paths are not opened.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.backends.verl.overrides import Job, VerlScale, build_job


@dataclass
class RunCheck:
    run_id: str
    ok: bool
    kind: str = ""
    gpus: int = 0
    n_overrides: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        head = f"{status} {self.run_id:28s} {self.kind:3s} gpus={self.gpus:<2d} overrides={self.n_overrides:<3d}"
        tail = "; ".join(self.errors if not self.ok else self.notes)
        return head + (f"  {tail}" if tail else "")


def verl_config_dir() -> str:
    import verl

    return os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def compose(job: Job):
    """verl's composed config (an OmegaConf ``DictConfig``) for ``job``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    name = "ppo_trainer" if job.kind == "ppo" else "sft_trainer_engine"
    with initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        return hydra_compose(config_name=name, overrides=list(job.overrides))


def _validate_ppo(cfg, job: Job, result: RunCheck) -> None:
    from omegaconf import OmegaConf
    from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import workbench.backends.verl.register as reg

    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    OmegaConf.resolve(cfg)
    arr = cfg.actor_rollout_ref
    for node in (arr.actor, arr.rollout, cfg.algorithm):
        omega_conf_to_dataclass(node)
    fn = cfg.reward.custom_reward_function
    if fn.path:
        from verl.utils.import_utils import load_extern_object

        if not callable(load_extern_object(fn.path, fn.name)):
            result.errors.append(f"reward function {fn.path}:{fn.name} is not callable")
    if cfg.distillation.enabled:
        dist = omega_conf_to_dataclass(cfg.distillation)
        loss = dist.distillation_loss
        if loss.loss_mode not in DISTILLATION_LOSS_REGISTRY:
            result.errors.append(f"distillation loss {loss.loss_mode!r} is not registered")
        # verl 0.9.1 puts the teacher on a resource pool of its own GPUs, never the student's
        # (trainer/ppo/v1/trainer_base.py, _init_resource_pool_mgr: "teacher_pool").
        pool = cfg.distillation.n_gpus_per_node * cfg.distillation.nnodes
        if pool < 1:
            result.errors.append(f"the teacher pool has {pool} GPUs; verl serves the teacher on its own pool (1+)")
        teacher = next(iter(dist.teacher_models.values()))
        result.notes.append(
            f"loss={loss.loss_mode} teacher_pool={pool} (x{teacher.num_replicas} tp{teacher.inference.tensor_model_parallel_size})"
        )
        if loss.loss_mode == "sgopd":
            if loss.needs_reference() and not need_reference_policy(cfg):
                result.errors.append("the gate needs ref_log_prob but no reference policy is enabled")
            if loss.pts_enabled and cfg.trainer.v1.trainer_mode != "sgopd_sync":
                result.errors.append("PTS needs trainer.v1.trainer_mode=sgopd_sync")
    if cfg.trainer.use_v1:
        mode = cfg.trainer.v1.trainer_mode
        if importlib.util.find_spec("transfer_queue") is None:
            result.errors.append("verl's v1 trainer needs the TransferQueue package (pip install transferqueue)")
        elif mode not in ("sync", "colocate_async", "separate_async"):
            from verl.trainer.ppo.v1 import get_trainer_cls

            try:
                get_trainer_cls(mode)
            except ValueError as e:
                result.errors.append(str(e))
        if mode == "sgopd_sync" and not reg.PTS_AVAILABLE:
            result.errors.append("the PTS trainer could not be registered (TransferQueue missing)")
    # What verl's ResourcePoolManager asks Ray for must be what the job asks the cluster for.
    pools = cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes
    if cfg.distillation.enabled:
        pools += cfg.distillation.n_gpus_per_node * cfg.distillation.nnodes
    if pools != job.gpus:
        result.errors.append(f"verl's resource pools take {pools} GPUs but the job requests {job.gpus}")
    if arr.actor.ppo_mini_batch_size != cfg.data.train_batch_size or arr.actor.ppo_epochs != 1:
        result.errors.append("one optimizer step per training step expects ppo_mini_batch_size == train_batch_size, 1 epoch")
    if cfg.algorithm.rollout_correction.rollout_is and not arr.rollout.calculate_log_probs:
        result.errors.append("rollout correction needs actor_rollout_ref.rollout.calculate_log_probs=true")


def _validate_sft(cfg, job: Job, result: RunCheck) -> None:
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    OmegaConf.resolve(cfg)
    for node in (cfg.optim, cfg.engine, cfg.checkpoint):
        omega_conf_to_dataclass(node)
    if cfg.data.train_batch_size % (cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes):
        result.errors.append("data.train_batch_size must divide by the number of GPUs")
    if cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes != job.gpus:  # torchrun starts job.gpus processes
        result.errors.append(
            f"the SFT trainer expects {cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes} GPUs but the job requests {job.gpus}"
        )
    td = job.teacher_data or {}
    budget = "all prompts" if td.get("max_prompts") is None else f"{td['max_prompts']} prompts"
    result.notes.append(f"teacher data: {td.get('decoding')} decoding, {budget}, filter_correct={td.get('filter_correct')}")


def check_job(job: Job) -> RunCheck:
    """Compose and validate one job's verl config; errors are collected, never raised."""
    t0 = time.time()
    result = RunCheck(job.run_id, ok=False, kind=job.kind, gpus=job.gpus, n_overrides=len(job.overrides))
    try:
        cfg = compose(job)
        (_validate_ppo if job.kind == "ppo" else _validate_sft)(cfg, job, result)
        if "mlflow" in list(cfg.trainer.logger) and importlib.util.find_spec("mlflow") is None:
            result.errors.append("trainer.logger has mlflow but mlflow is not installed (verl would drop it silently)")
    except Exception as e:  # noqa: BLE001 - every failure is a line of the report
        msg = str(e).strip().splitlines()
        text = f"{msg[0] if msg else ''}" + (
            f" ({msg[-2] if msg[-1].startswith('full_key') else msg[-1]})" if len(msg) > 1 else ""
        )
        result.errors.append(f"{type(e).__name__}: {text[:300]}")
    result.ok = not result.errors
    result.seconds = time.time() - t0
    return result


def grid_configs(runs_dir: str | Path = "experiments/runs", runs: Iterable[str] | None = None):
    from workbench.config import load_config

    runs_dir = Path(runs_dir)
    names = list(runs) if runs else sorted(p.stem for p in runs_dir.glob("*.yaml"))
    for name in names:
        yield name, load_config(runs_dir / f"{name}.yaml")


def check_grid(
    scale: VerlScale,
    runs_dir: str | Path = "experiments/runs",
    runs: Iterable[str] | None = None,
    seed: int | None = None,
    results: str | Path = "results",
) -> list[RunCheck]:
    import workbench.backends.verl.register  # noqa: F401  (the driver process's registrations)

    out = []
    for name, cfg in grid_configs(runs_dir, runs):
        try:
            job = build_job(cfg, scale, seed=seed, results=results)
        except Exception as e:  # noqa: BLE001
            out.append(RunCheck(name, ok=False, errors=[f"{type(e).__name__}: {e}"]))
            continue
        out.append(check_job(job))
    return out
