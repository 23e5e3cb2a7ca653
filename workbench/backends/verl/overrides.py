"""A grid run as a verl job: the complete Hydra override list at a scale (no verl import).

``build_job(cfg, scale)`` maps a validated ``RunConfig`` plus a scale (``scales/*.yaml``:
models, data, cluster, batch sizes, lengths, learning rate, steps, rollout correction)
onto verl 0.9.1's config. The run config decides *what* is trained (method, gate,
stability weight, PTS schedule, SFT teacher data, init, prompt sources, PPO clip); the
scale decides *how big* (everything the miniature world sizes for CPUs: batch, group
size, learning rate, steps, lengths). A run config that sets a field the scale owns
(``SCALE_OWNED``) to anything but its default is an error, not silently overridden; the
run's ``train.steps_frac`` takes its share of the scale's ``train.steps``. Which config
wins where is listed in docs/verl.md.

Every file of a run (checkpoints, merged ``hf/``, ``verl_run.json``, evaluation, done
marker) is named by ``run_paths(results, scale, run, seed)``, the one place the workflow's
rules (``workflow/rules/verl.smk``) and the verbs (``verl-launch --results``) take them from.

Methods on verl:

=========================  =====================================================================
method                     verl job
=========================  =====================================================================
opd (no PTS)               distillation, stock ``k1`` loss + policy gradient
opd + PTS, exopd, sgopd    distillation, ``sgopd`` loss (``SGOPDLossConfig``); PTS runs add the
                           PTS trainer (``trainer.v1.trainer_mode=sgopd_sync``) and agent loop
gkd                        distillation, stock ``forward_kl_topk`` (top-k forward KL, supervised)
grpo                       plain GRPO (no distillation)
sft, seqkd, stage 1        teacher data (vLLM) then verl's SFT trainer (``verl.trainer.sft_trainer``)
=========================  =====================================================================
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from workbench.config import ADAM_BETAS, ConfigError, RunConfig
from workbench.methods import METHODS

SCALES_DIR = Path(__file__).parent / "scales"
LOSS_TARGET = "workbench.backends.verl.loss.SGOPDLossConfig"
REGISTER_MODULE = "workbench.backends.verl.register"
PTS_TRAINER_MODE = "sgopd_sync"
PTS_AGENT_LOOP_MANAGER = "workbench.backends.verl.pts.PTSAgentLoopManager"
REWARD_FN = Path(__file__).parent / "reward.py"
#: docs/algorithm.md section 5 is the plain PPO clip; 1e9 never binds (verl clamps the log-ratio to +-20).
NO_DUAL_CLIP = 1e9

#: ``trainer.total_epochs`` is only a safety cap: ``total_training_steps`` ends the run.
EPOCH_CAP = 1000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScaleData(_Model):
    sources: dict[str, str]
    val_files: list[str]
    max_prompt_length: int = Field(gt=0)
    max_response_length: int = Field(gt=0)


class ScaleCluster(_Model):
    nnodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    rollout_tp: int = Field(ge=1)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    teacher_nnodes: int = Field(ge=1)
    teacher_gpus_per_node: int = Field(ge=1)
    teacher_tp: int = Field(ge=1)
    teacher_gpu_memory_utilization: float = Field(gt=0, le=1)
    node_gpus: int = Field(ge=1, default=8)  # GPUs of one physical node (how many nodes a job asks for)


class ScaleBatch(_Model):
    prompts_per_step: int = Field(gt=0)
    group_size: int = Field(gt=0)
    use_dynamic_bsz: bool = True
    max_token_len_per_gpu: int = Field(gt=0)
    micro_batch_size_per_gpu: int = Field(gt=0)


class ScaleOptim(_Model):
    lr: float = Field(gt=0)
    warmup_steps_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(gt=0)


class ScaleTrain(_Model):
    steps: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)


class ScaleRollout(_Model):
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)


class ScaleRolloutCorrection(_Model):
    rollout_is: Literal["token", "sequence"] | None = "token"
    rollout_is_threshold: float = Field(gt=0, default=2.0)


class ScaleGKD(_Model):
    topk: int = Field(gt=0)


class ScaleSFT(_Model):
    micro_batch_size_per_gpu: int = Field(gt=0)
    max_length: int = Field(gt=0)
    epochs: int = Field(gt=0)
    lr: float = Field(gt=0)


class ScaleEval(_Model):
    n_samples: int = Field(gt=0)
    k: int = Field(gt=0)
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    tensor_parallel_size: int = Field(ge=1)
    gpus: int = Field(ge=1)
    # benchmark -> its staged parquet (`workbench verl-stage`); empty: all four from the hub
    benchmarks: dict[str, str] = {}


class VerlScale(_Model):
    """A verl setup: models, data, cluster, batch sizes and lengths, read from
    ``workbench/backends/verl/scales/<name>.yaml``, the file of the workflow scale
    (``workbench.grid.Scale``, ``experiments/scales/<name>.yaml``) of the same name.
    Unknown keys are errors."""

    name: str
    student: str
    teacher: str
    data: ScaleData
    cluster: ScaleCluster
    batch: ScaleBatch
    optim: ScaleOptim
    train: ScaleTrain
    rollout: ScaleRollout
    rollout_correction: ScaleRolloutCorrection
    gkd: ScaleGKD
    sft: ScaleSFT
    eval: ScaleEval
    verl_extra: list[str] = []

    @property
    def trainer_gpus(self) -> int:
        return self.cluster.nnodes * self.cluster.gpus_per_node

    @property
    def teacher_gpus(self) -> int:
        return self.cluster.teacher_nnodes * self.cluster.teacher_gpus_per_node


def scale_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in SCALES_DIR.glob("*.yaml")))


def load_scale(name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] = ()) -> VerlScale:
    """A scale by name (``paper``, ``smoke``) or YAML path, with dotted ``key=value`` overrides."""
    from workbench.config import _apply_overrides

    path = Path(name_or_path)
    named = path.suffix not in (".yaml", ".yml")
    if named:
        path = SCALES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown scale {str(name_or_path)!r}; valid: {', '.join(scale_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    scale = VerlScale.model_validate(_apply_overrides(data, overrides))
    if named and scale.name != path.stem:  # the name picks the results folder: --scale X must land in X's
        raise ValueError(f"{path}: name {scale.name!r} differs from the file name {path.stem!r}")
    return scale


# -- where a run's files are -------------------------------------------------------------

RUN_STATE = "verl_run.json"


@dataclass(frozen=True)
class RunPaths:
    """Every file of one verl run. ``run_paths`` makes it; with ``run="{run}"`` and
    ``seed="{seed}"`` the fields are the Snakemake rules' wildcard patterns."""

    results: str
    scale: str
    run: str
    seed: int | str

    @property
    def run_dir(self) -> str:
        return f"{self.results}/{self.scale}/verl-runs/{self.run}/seed{self.seed}"

    @property
    def checkpoints(self) -> str:  # trainer.default_local_dir: verl's global_step_N folders
        return f"{self.run_dir}/checkpoints"

    @property
    def hf(self) -> str:  # the last checkpoint merged to Hugging Face format (init_from, evaluation)
        return f"{self.run_dir}/hf"

    @property
    def state(self) -> str:  # the run's MLflow run: verl-launch writes it, realscale-eval reads it
        return f"{self.run_dir}/{RUN_STATE}"

    def hf_at(self, step: int | str) -> str:  # the checkpoint of step N merged (verl_merge_at: sgopd@90%)
        return f"{self.run_dir}/hf-step{step}"

    @property
    def teacher_data(self) -> str:  # SFT family: the teacher's responses as verl SFT parquet
        return f"{self.run_dir}/teacher_data.parquet"

    @property
    def eval_dir(self) -> str:
        return f"{self.run_dir}/eval"

    @property
    def eval_results(self) -> str:  # realscale.evaluate writes <eval_dir>/results.json
        return f"{self.eval_dir}/results.json"

    @property
    def done(self) -> str:  # touched by the workflow once training and the HF export finished
        return f"{self.run_dir}/done"


def run_paths(results: str | Path, scale: str, run: str, seed: int | str) -> RunPaths:
    """The files of run ``run``, seed ``seed``, at verl scale ``scale`` under the results root."""
    return RunPaths(str(results).rstrip("/") or "/", scale, run, seed)


# -- run-config fields the scale owns ------------------------------------------------------

#: Run-config field -> the scale key that sets it on verl (``None``: verl has no such knob).
#: A run config's defaults size the miniature world; on verl these come from the scale, so
#: a run config that changes one is an error instead of a value silently dropped.
SCALE_OWNED: dict[str, str | None] = {
    "optim.lr": "optim.lr",  # SFT family: sft.lr
    "optim.warmup_steps": "optim.warmup_steps_ratio",
    "optim.weight_decay": "optim.weight_decay",
    "optim.grad_clip": "optim.grad_clip",
    "rollout.prompts_per_step": "batch.prompts_per_step",
    "rollout.group_size": "batch.group_size",
    "rollout.temperature": "rollout.temperature",
    "rollout.top_p": "rollout.top_p",
    "rollout.max_new_tokens": "data.max_response_length",
    "train.steps": "train.steps",
    "train.checkpoint_every": "train.checkpoint_every",
    "train.eval_every": None,  # verl_eval evaluates the final model only
    "gkd.beta": None,  # verl's GKD is forward_kl_topk (scale gkd.topk): no JSD beta
    "eval.n_samples": "eval.n_samples",
    "eval.k": "eval.k",
    "eval.temperature": "eval.temperature",
    "eval.top_p": "eval.top_p",
    "eval.max_new_tokens": "eval.max_new_tokens",
    "eval.benchmarks": "eval.benchmarks",  # the scale's staged benchmark files
}


def check_scale_owned(cfg: RunConfig, scale: VerlScale) -> None:
    """Raise ``ConfigError`` if ``cfg`` changes a field the verl scale owns (``SCALE_OWNED``)."""
    default = RunConfig(method=cfg.method)
    bad = []
    for f, key in SCALE_OWNED.items():
        if cfg.get(f) == default.get(f):
            continue
        if key is None:
            bad.append(f"{f}={cfg.get(f)!r} (verl has no such setting)")
            continue
        key = "sft.lr" if key == "optim.lr" and cfg.family == "sft" else key
        value = reduce(getattr, key.split("."), scale)
        bad.append(
            f"{f}={cfg.get(f)!r} (scale {scale.name!r} sets {key}={value!r}; "
            f"change it with --scale-set {key}=VALUE or in the scale file)"
        )
    if bad:
        raise ConfigError(
            f"run {cfg.name or cfg.method!r}: on verl the scale owns these fields; remove them "
            f"from the run config: {'; '.join(bad)}"
        )


def run_steps(cfg: RunConfig, scale: VerlScale) -> int:
    """The run's training steps: its ``train.steps_frac`` share of the scale's ``train.steps``."""
    return max(1, round(scale.train.steps * cfg.train.steps_frac))


# -- the job -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One grid run as a verl job: what to run, with which overrides, on how many GPUs."""

    run_id: str
    kind: Literal["ppo", "sft"]
    overrides: list[str]
    gpus: int  # every GPU the job takes: the student pool plus, distilling, the teacher's pool
    nodes: int
    paths: RunPaths
    steps: int  # training steps (verl's total_training_steps)
    env: dict[str, str] = field(default_factory=dict)
    teacher_data: dict[str, Any] | None = None  # sft family: how to build the teacher data
    init_from: str | None = None

    @property
    def run_dir(self) -> str:
        return self.paths.run_dir

    @property
    def module(self) -> str:
        return "verl.trainer.main_ppo" if self.kind == "ppo" else "verl.trainer.sft_trainer"

    def command(self, python: str = "python") -> list[str]:
        """The verl command line (PPO: a Ray driver; SFT: torchrun over the node's GPUs)."""
        if self.kind == "ppo":
            return [python, "-m", "workbench.backends.verl.main", *self.overrides]
        return ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={self.gpus}", "-m", self.module, *self.overrides]

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.command())


def _v(x: Any) -> str:
    """A Hydra override value."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(_v(i) for i in x) + "]"
    s = str(x)
    return s if all(c.isalnum() or c in "/._-:+@" for c in s) and s else "'" + s.replace("'", "\\'") + "'"


def _dual_clip(cfg: RunConfig) -> float:
    """verl's ``clip_ratio_c`` for the run config's ``optim.clip_ratio_c`` (None: off)."""
    return NO_DUAL_CLIP if cfg.optim.clip_ratio_c is None else cfg.optim.clip_ratio_c


def keep_steps(cfg: RunConfig, scale: VerlScale) -> dict[float, int]:
    """``train.keep_checkpoints_at`` fraction -> the step verl checkpoints it at (before the last)."""
    steps = run_steps(cfg, scale)
    return {f: round(f * steps) for f in cfg.train.keep_checkpoints_at if 0 < round(f * steps) < steps}


def _save_freq(cfg: RunConfig, scale: VerlScale) -> int:
    """Checkpoint every ``checkpoint_every`` steps, and at every ``keep_checkpoints_at`` step
    (``trainer.max_actor_ckpt_to_keep=null`` keeps them all, so such a step can be merged later)."""
    return reduce(math.gcd, keep_steps(cfg, scale).values(), min(scale.train.checkpoint_every, run_steps(cfg, scale)))


def _train_files(cfg: RunConfig, scale: VerlScale) -> list[str]:
    sources = scale.data.sources
    names = list(cfg.train.sources) if cfg.train.sources else list(sources)
    unknown = [s for s in names if s not in sources]
    if unknown:
        raise ValueError(f"train.sources: {unknown} not in scale {scale.name!r} (has {sorted(sources)})")
    return [sources[s] for s in names]


def _init_path(cfg: RunConfig, scale: VerlScale, paths: RunPaths) -> str:
    """The student's starting weights: the scale's student, or ``init_from``'s exported model."""
    ref = cfg.train.init_from
    if ref is None:
        return scale.student
    return ref if ("/" in ref or Path(ref).exists()) else run_paths(paths.results, paths.scale, ref, paths.seed).hf


def build_job(
    cfg: RunConfig, scale: VerlScale, *, seed: int | None = None, experiment: str = "sgopd-verl", results: str | Path = "results"
) -> Job:
    """The verl job of one grid run at ``scale``, its files under ``run_paths(results, ...)``
    (pure: no verl import, no file access)."""
    check_scale_owned(cfg, scale)
    method = METHODS.get(cfg.method)
    seed = cfg.seed if seed is None else seed
    run_id = cfg.name or cfg.method
    paths = run_paths(results, scale.name, run_id, seed)
    if method.family == "sft":
        return _sft_job(cfg, scale, seed, run_id, paths, experiment)
    return _ppo_job(cfg, scale, seed, run_id, paths, experiment)


def _common_trainer(scale: VerlScale, run_id: str, seed: int, paths: RunPaths, experiment: str, steps: int) -> list[str]:
    return [
        f"trainer.project_name={_v(experiment)}",
        f"trainer.experiment_name={_v(f'{run_id}-seed{seed}')}",
        "trainer.logger=[console,mlflow]",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={_v(paths.checkpoints)}",
        "trainer.resume_mode=auto",
        f"trainer.nnodes={scale.cluster.nnodes}",
        f"trainer.n_gpus_per_node={scale.cluster.gpus_per_node}",
    ]


def _ppo_job(cfg: RunConfig, scale: VerlScale, seed: int, run_id: str, paths: RunPaths, experiment: str) -> Job:
    method = METHODS.get(cfg.method)
    b, c, o = scale.batch, scale.cluster, scale.optim
    P, G = b.prompts_per_step, b.group_size
    distill = method.family in ("pg", "gkd") and method.advantage != "grpo"
    # OPD without PTS runs verl's stock k1 loss, whose config has no clip_ratio_c (verl then
    # dual-clips at 3, inert at the update's ratio 1); a run that sets the dual clip takes the
    # sgopd loss with the gate off at lambda 1, which is OPD.
    use_sgopd = (
        method.family == "pg"
        and method.advantage == "routed"
        and (cfg.method != "opd" or cfg.pts.enabled or cfg.optim.clip_ratio_c is not None)
    )
    use_ref = use_sgopd and cfg.needs_reference()
    init = _init_path(cfg, scale, paths)
    steps = run_steps(cfg, scale)
    rc = scale.rollout_correction

    ov = [
        "algorithm.adv_estimator=grpo",
        "algorithm.norm_adv_by_std_in_grpo=true",
        "algorithm.use_kl_in_reward=false",
        # data
        f"data.train_files={_v(_train_files(cfg, scale))}",
        f"data.val_files={_v(scale.data.val_files)}",
        f"data.train_batch_size={P}",
        f"data.max_prompt_length={scale.data.max_prompt_length}",
        f"data.max_response_length={scale.data.max_response_length}",
        "data.filter_overlong_prompts=true",
        "data.truncation=error",
        f"data.seed={seed}",
        # model
        f"actor_rollout_ref.model.path={_v(init)}",
        "actor_rollout_ref.model.use_remove_padding=true",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        # actor: one PPO epoch, one optimizer step per training step (as the mini backend)
        f"actor_rollout_ref.actor.optim.lr={_v(o.lr)}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps_ratio={_v(o.warmup_steps_ratio)}",
        f"actor_rollout_ref.actor.optim.weight_decay={_v(o.weight_decay)}",
        f"actor_rollout_ref.actor.optim.betas={_v(ADAM_BETAS)}",
        f"actor_rollout_ref.actor.optim.clip_grad={_v(o.grad_clip)}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={P}",
        "actor_rollout_ref.actor.ppo_epochs=1",
        f"actor_rollout_ref.actor.loss_agg_mode={cfg.optim.loss_agg_mode}",
        "actor_rollout_ref.actor.entropy_coeff=0",
        f"actor_rollout_ref.actor.clip_ratio_low={_v(cfg.optim.eps_low)}",
        f"actor_rollout_ref.actor.clip_ratio_high={_v(cfg.optim.eps_high)}",
        f"actor_rollout_ref.actor.clip_ratio_c={_v(_dual_clip(cfg))}",
        f"actor_rollout_ref.actor.use_kl_loss={_v(use_ref)}",
        "actor_rollout_ref.actor.kl_loss_coef=0",
        f"actor_rollout_ref.actor.use_dynamic_bsz={_v(b.use_dynamic_bsz)}",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={b.max_token_len_per_gpu}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={b.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        # rollout (vLLM, colocated with the actor)
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.n={G}",
        f"actor_rollout_ref.rollout.temperature={_v(scale.rollout.temperature)}",
        f"actor_rollout_ref.rollout.top_p={_v(scale.rollout.top_p)}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={c.rollout_tp}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={_v(c.gpu_memory_utilization)}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={b.micro_batch_size_per_gpu}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={b.micro_batch_size_per_gpu}",
        # rollout correction (token-level truncated IS between vLLM and FSDP log-probs)
        f"algorithm.rollout_correction.rollout_is={_v(rc.rollout_is)}",
        f"algorithm.rollout_correction.rollout_is_threshold={_v(rc.rollout_is_threshold)}",
        # verifier reward: math-verify on the final answer
        f"reward.custom_reward_function.path={_v(str(REWARD_FN))}",
        "reward.custom_reward_function.name=compute_score",
        *_common_trainer(scale, run_id, seed, paths, experiment, steps),
        f"trainer.total_epochs={EPOCH_CAP}",
        f"trainer.save_freq={_save_freq(cfg, scale)}",
        "trainer.max_actor_ckpt_to_keep=null",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        # every verl process imports the registrations (Ray workers inherit the runtime env)
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES={REGISTER_MODULE}",
    ]
    if distill:
        ov += [
            "distillation.enabled=true",
            f"distillation.nnodes={c.teacher_nnodes}",
            f"distillation.n_gpus_per_node={c.teacher_gpus_per_node}",
            f"distillation.teacher_models.teacher_model.model_path={_v(scale.teacher)}",
            f"distillation.teacher_models.teacher_model.inference.tensor_model_parallel_size={c.teacher_tp}",
            (
                "distillation.teacher_models.teacher_model.inference.gpu_memory_utilization="
                f"{_v(c.teacher_gpu_memory_utilization)}"
            ),
            "distillation.distillation_loss.use_task_rewards=false",
            "distillation.distillation_loss.loss_max_clamp=null",
        ]
    if use_sgopd:
        ov += _sgopd_overrides(cfg, scale)
    elif method.family == "pg" and distill:  # OPD without PTS: verl's own k1 + policy gradient
        ov += [
            "distillation.distillation_loss.loss_mode=k1",
            "distillation.distillation_loss.use_policy_gradient=true",
            f"distillation.distillation_loss.clip_ratio={_v(cfg.optim.eps_low)}",
            f"distillation.distillation_loss.clip_ratio_low={_v(cfg.optim.eps_low)}",
            f"distillation.distillation_loss.clip_ratio_high={_v(cfg.optim.eps_high)}",
        ]
    elif method.family == "gkd":  # top-k forward KL, supervised (no policy gradient)
        ov += [
            "distillation.distillation_loss.loss_mode=forward_kl_topk",
            f"distillation.distillation_loss.topk={scale.gkd.topk}",
            "distillation.distillation_loss.use_policy_gradient=false",
        ]
    ov += list(scale.verl_extra)
    # verl gives the distillation teacher a resource pool of its own GPUs (see docs/verl.md)
    gpus = scale.trainer_gpus + (scale.teacher_gpus if distill else 0)
    return Job(
        run_id=run_id,
        kind="ppo",
        overrides=ov,
        gpus=gpus,
        nodes=-(-gpus // c.node_gpus),
        paths=paths,
        steps=steps,
        env={"VERL_USE_EXTERNAL_MODULES": REGISTER_MODULE},
        init_from=cfg.train.init_from,
    )


def _sgopd_overrides(cfg: RunConfig, scale: VerlScale) -> list[str]:
    g, s, p = cfg.gate, cfg.stability, cfg.pts
    dl = "distillation.distillation_loss"
    ov = [
        f"{dl}._target_={LOSS_TARGET}",
        f"{dl}.loss_mode=sgopd",
        f"{dl}.use_policy_gradient=true",
        f"{dl}.clip_ratio={_v(cfg.optim.eps_low)}",
        f"{dl}.clip_ratio_low={_v(cfg.optim.eps_low)}",
        f"{dl}.clip_ratio_high={_v(cfg.optim.eps_high)}",
        f"+{dl}.clip_ratio_c={_v(_dual_clip(cfg))}",
    ]
    fields: dict[str, Any] = dict(g.route_kwargs())
    fields.update(stability_mode=s.mode, stability_clip=s.clip)
    fields.update({f"pts_{k}": v for k, v in p.model_dump().items()})
    ov += [f"+{dl}.{k}={_v(v)}" for k, v in fields.items()]
    if p.enabled:
        ov += [
            f"trainer.v1.trainer_mode={PTS_TRAINER_MODE}",
            f"+actor_rollout_ref.rollout.agent.agent_loop_manager_class={PTS_AGENT_LOOP_MANAGER}",
        ]
    return ov


def _sft_job(cfg: RunConfig, scale: VerlScale, seed: int, run_id: str, paths: RunPaths, experiment: str) -> Job:
    import workbench.algo as A

    sft = scale.sft
    P, G = scale.batch.prompts_per_step, scale.batch.group_size
    budget, batch = None, P * G  # P * G sequences per optimizer step, the PPO runs' trajectory count
    if cfg.sft.teacher_budget == "pts":
        # PTS's teacher data, used as PTS uses it: as many responses a step as an active PTS
        # step anchors on, about once each (the mini trainer's sft_step does the same),
        # rounded up to a multiple of the GPUs, which verl's SFT trainer splits it over
        per_step, gpus = A.pts_prompts_per_step(P, cfg.pts.teacher_sampling_ratio), scale.cluster.gpus_per_node
        batch = -(-per_step // gpus) * gpus
        budget = A.pts_teacher_prompts(
            scale.train.steps,
            P,
            teacher_sampling_ratio=cfg.pts.teacher_sampling_ratio,
            phase1_end_frac=cfg.pts.phase1_end_frac,
            phase2_end_frac=cfg.pts.phase2_end_frac,
        )
    data_file = paths.teacher_data
    steps = run_steps(cfg, scale)
    teacher_data = {
        "teacher": scale.teacher,
        "train_files": _train_files(cfg, scale),
        "decoding": cfg.sft.teacher_decoding,
        "filter_correct": cfg.sft.filter_correct,
        "max_prompts": budget,
        "temperature": scale.rollout.temperature,
        "top_p": scale.rollout.top_p,
        "max_new_tokens": scale.data.max_response_length,
        "seed": seed,
        "out": data_file,
        "tensor_parallel_size": scale.cluster.teacher_tp,
    }
    ov = [
        f"data.train_files={_v(data_file)}",
        "data.val_files=null",
        "data.messages_key=messages",
        f"data.train_batch_size={batch}",
        f"data.micro_batch_size_per_gpu={sft.micro_batch_size_per_gpu}",
        f"data.max_length={sft.max_length}",
        "data.truncation=error",
        f"model.path={_v(_init_path(cfg, scale, paths))}",
        "model.enable_gradient_checkpointing=true",
        "model.use_remove_padding=true",
        f"optim.lr={_v(sft.lr)}",
        f"optim.weight_decay={_v(scale.optim.weight_decay)}",
        f"optim.betas={_v(ADAM_BETAS)}",
        f"optim.clip_grad={_v(scale.optim.grad_clip)}",
        f"optim.lr_warmup_steps_ratio={_v(scale.optim.warmup_steps_ratio)}",
        *_common_trainer(scale, run_id, seed, paths, experiment, steps),
        f"trainer.total_epochs={EPOCH_CAP}",
        f"trainer.seed={seed}",
        f"trainer.save_freq={_save_freq(cfg, scale)}",
        *scale.verl_extra,
    ]
    # torchrun over one node's student GPUs; the teacher data is generated before, on the same GPUs.
    return Job(
        run_id=run_id,
        kind="sft",
        overrides=ov,
        gpus=scale.cluster.gpus_per_node,
        nodes=1,
        paths=paths,
        steps=steps,
        env={"VERL_USE_EXTERNAL_MODULES": REGISTER_MODULE},
        teacher_data=teacher_data,
        init_from=cfg.train.init_from,
    )
