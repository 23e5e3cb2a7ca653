"""SG-OPD as a verl distillation loss (verl 0.9.1), registered as ``loss_mode: sgopd``.

Two extension points of verl carry it, both public:

- ``register_distillation_loss``: the only loss hook that sees the teacher's log-probs
  (``teacher_logprobs``), the rollout-time student's (``old_log_probs``), the GRPO
  advantage (``advantages``) and, with a reference policy enabled, ``ref_log_prob``.
  ``register_policy_loss`` sees none of the teacher or reference log-probs.
- ``_target_``: verl's config dataclasses reject unknown keys, so the gate, stability
  and PTS fields live on ``SGOPDLossConfig``, a ``DistillationLossConfig`` subclass.
  Pointing ``distillation.distillation_loss._target_`` at it both adds the fields and
  imports this module (which registers the loss) in every process that builds the config:
  the driver, the TaskRunner, the actor workers and the agent-loop workers.

verl then runs its own ``distillation_ppo_loss``: ``use_policy_gradient=True`` makes it
apply the PPO clip (``compute_policy_loss_vanilla``) with ``-loss`` as the advantage, and
``use_task_rewards=False`` adds no GRPO policy term (the verifier is only SG-OPD's gate).

Traps handled here (verl 0.9.1):

- ``rollout_is_weights`` reaches the distillation path as a nested (jagged) tensor in the
  v1 trainer and ``compute_policy_loss_vanilla`` multiplies it with padded tensors, which
  fails. ``sgopd`` replaces it in the micro-batch with its padded form (and 1 on PTS anchor
  rows, whose tokens the teacher sampled) before verl reads it.
- ``DistillationLossConfig.loss_max_clamp`` defaults to 10 in the dataclass (null only in
  the YAML): a clamp of ``-loss`` would clip routed advantages and the PTS row scales, so
  ``SGOPDLossConfig`` defaults it to None and rejects any other value.
- dual-clip PPO: ``compute_policy_loss_vanilla`` reads ``config.get("clip_ratio_c", 3.0)``
  from the loss config, which has no such field, so verl's distillation path always
  dual-clips at 3. docs/algorithm.md section 5 is the plain clip: ``SGOPDLossConfig.clip_ratio_c``
  defaults to 1e9, which never binds because verl clamps the log-ratio to +-20
  (``e**20 < 1e9``); the run config's ``optim.clip_ratio_c`` sets it (``overrides``).

The PPO clip, dual clip and aggregation (``loss_agg_mode``, read from the actor config) are
verl's own; ``workbench.algo.ppo_clip_loss`` computes the same (``tests/test_verl_loss.py``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import torch
from tensordict import TensorDict
from verl.trainer.distillation.losses import (
    DISTILLATION_LOSS_REGISTRY,
    DistillationLossSettings,
    register_distillation_loss,
)
from verl.utils.metric import AggregationType, Metric
from verl.workers.config import DistillationLossConfig
from verl.workers.utils.padding import no_padding_2_padding

from workbench.backends.verl import adapter
from workbench.config import GateConfig, PTSConfig, StabilityConfig

LOSS_NAME = "sgopd"
#: Never binds (verl clamps the log-ratio to +-20 and e**20 < 1e9): plain PPO clip, docs/algorithm.md section 5.
NO_DUAL_CLIP = 1e9
#: Metric-name prefix: the v1 trainer prefixes "actor/", ``workbench.backends.verl.metrics`` strips it.
PREFIX = "train/"
STAT_PREFIX = "sgopd/"

#: The run-config sections mirrored on ``SGOPDLossConfig``: section -> (field prefix, model).
MIRRORED = {"gate": ("", GateConfig), "stability": ("stability_", StabilityConfig), "pts": ("pts_", PTSConfig)}
#: A mirrored default that differs from the run config's: a loss config alone starts no PTS trainer.
_MIRROR_DEFAULTS = {"pts_enabled": False}


def _plain(annotation: Any) -> Any:
    """A pydantic annotation as the plain type OmegaConf accepts (the constraints stay with
    pydantic, which ``SGOPDLossConfig.__post_init__`` runs)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _plain(typing.get_args(annotation)[0])
    if origin is Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in typing.get_args(annotation) if a is not type(None))
        return Optional[_plain(inner)]  # noqa: UP045 (OmegaConf reads typing.Optional)
    return annotation


def _mirror_run_config(cls: type) -> type:
    """Declare the run config's gate, stability and PTS fields on ``cls``, before ``@dataclass``
    makes them fields: one declaration (``workbench.config``), the same names, defaults and
    validation."""
    for prefix, model in MIRRORED.values():
        for name, f in model.model_fields.items():
            cls.__annotations__[prefix + name] = _plain(f.annotation)
            setattr(cls, prefix + name, _MIRROR_DEFAULTS.get(prefix + name, f.default))
    return cls


@dataclass
@_mirror_run_config
class SGOPDLossConfig(DistillationLossConfig):
    """``DistillationLossConfig`` plus SG-OPD's gate, stability and PTS fields.

    Those fields are declared by ``workbench.config`` alone (``_mirror_run_config``):
    ``GateConfig``'s under their own names, ``StabilityConfig``'s as ``stability_*``,
    ``PTSConfig``'s as ``pts_*`` (read by the PTS trainer, ``workbench.backends.verl.pts``),
    with the same defaults (but ``pts_enabled``: False) and the same validation.
    """

    loss_mode: str = LOSS_NAME
    use_task_rewards: bool = False
    use_policy_gradient: bool = True
    loss_max_clamp: float | None = None
    log_prob_min_clamp: float | None = None
    topk: int | None = None
    clip_ratio_c: float = NO_DUAL_CLIP

    def __post_init__(self):
        super().__post_init__()
        if self.loss_mode != LOSS_NAME:
            return
        problems = []
        if not self.use_policy_gradient:
            problems.append("use_policy_gradient must be true (verl's PPO clip applies SG-OPD's advantage)")
        if self.use_task_rewards:
            problems.append("use_task_rewards must be false (SG-OPD uses the verifier only as its gate)")
        if self.loss_max_clamp is not None:
            problems.append(f"loss_max_clamp must be null (got {self.loss_max_clamp}): it would clip routed advantages")
        if self.clip_ratio_c <= 1.0:
            problems.append(f"clip_ratio_c must be > 1 (got {self.clip_ratio_c})")
        from pydantic import ValidationError

        for section, (_, model) in MIRRORED.items():
            try:
                model(**self.section(section))
            except ValidationError as e:
                problems += [
                    f"{section}.{'.'.join(map(str, err['loc']))}: {err['msg']}".replace(".: ", ": ") for err in e.errors()
                ]
        if problems:
            raise ValueError("distillation.distillation_loss (sgopd): " + "; ".join(problems))

    def section(self, name: str) -> dict[str, Any]:
        """The run config's section ``name`` (``gate``, ``stability``, ``pts``) from the mirrored fields."""
        prefix, model = MIRRORED[name]
        return {k: getattr(self, prefix + k) for k in model.model_fields}

    def route_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``workbench.algo.route_advantage``."""
        return self.section("gate")

    def pts_kwargs(self) -> dict[str, Any]:
        """The run config's ``pts`` section."""
        return self.section("pts")

    def needs_reference(self) -> bool:
        return GateConfig(**self.route_kwargs()).needs_reference()


# -- tensors of a verl micro-batch -------------------------------------------------------


def dense(x: torch.Tensor, width: int, fill: float = 0.0) -> torch.Tensor:
    """``[B, width]`` padded view of a response tensor, nested (jagged) or already padded."""
    if x.is_nested:
        x = x.to_padded_tensor(fill)
    if x.shape[1] < width:
        x = torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)
    return x[:, :width]


def row_field(data: TensorDict, key: str) -> torch.Tensor | None:
    """A per-row field (``[B]``, or a per-token field constant along the row) as ``[B]``."""
    if key not in data:
        return None
    x = data[key]
    if x.is_nested:
        x = x.to_padded_tensor(0)
    return x.reshape(x.shape[0], -1)[:, 0] if x.dim() > 1 else x


def pad_rollout_is_weights(data: TensorDict, width: int, anchor: torch.Tensor | None = None) -> None:
    """Workaround: replace a nested ``rollout_is_weights`` by its padded ``[B, width]`` form.

    verl's ``distillation_loss`` reads ``data.get("rollout_is_weights")`` right after the
    registered loss returns and multiplies it with padded tensors; a nested tensor there
    fails (it pads ``old_log_probs`` and ``response_mask`` but not this one). Anchor rows
    get weight 1: their tokens were sampled by the teacher, not by the rollout policy
    that the weights correct for.
    """
    if "rollout_is_weights" not in data:
        return
    w = data["rollout_is_weights"]
    if not w.is_nested and anchor is None:
        return
    w = dense(w, width)
    if anchor is not None:
        w = torch.where(anchor.to(torch.bool)[:, None], torch.ones((), dtype=w.dtype, device=w.device), w)
    data["rollout_is_weights"] = w


def _metrics(
    stats: dict[str, Any], lp_new: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor | None, row_scale: torch.Tensor | None
) -> dict[str, Any]:
    """verl metrics of one micro-batch: plain floats (averaged over micro-batches by verl)
    under the canonical names, and ``Metric`` sums / maxima that add up exactly across
    micro-batches and ranks (``workbench.backends.verl.metrics`` turns them into the exact
    step values)."""
    out: dict[str, Any] = {PREFIX + k: v for k, v in stats["fractions"].items()}
    n = max(stats["n_valid"], 1)
    out[PREFIX + "adv_mean"] = stats["adv_sum"] / n
    out[PREFIX + "kl_teacher"] = stats["kl_teacher_sum"] / n
    out[PREFIX + "adv_abs_max"] = Metric(AggregationType.MAX, stats["adv_abs_max"])
    for key in ("n_valid", "n_neutral", "n_conflict", "n_consensus"):
        out[STAT_PREFIX + key] = Metric(AggregationType.SUM, stats[key])
    out[STAT_PREFIX + "adv_sum"] = Metric(AggregationType.SUM, stats["adv_sum"])
    out[STAT_PREFIX + "kl_teacher_sum"] = Metric(AggregationType.SUM, stats["kl_teacher_sum"])
    if anchor is not None:
        with torch.no_grad():
            kept = anchor.to(torch.bool) & (row_scale > 0 if row_scale is not None else True)
            z = mask & kept[:, None]
            n_z = int(torch.count_nonzero(z))
            nll_sum = -float(torch.where(z, lp_new.detach(), torch.zeros((), dtype=lp_new.dtype)).sum())
        out[STAT_PREFIX + "pts_nll_sum"] = Metric(AggregationType.SUM, nll_sum)
        out[STAT_PREFIX + "pts_tokens"] = Metric(AggregationType.SUM, n_z)
        out[STAT_PREFIX + "pts_kept_rows"] = Metric(AggregationType.SUM, int(kept.sum()))
        out[PREFIX + "pts_loss"] = nll_sum / max(n_z, 1)
    return out


def _sgopd_loss(config, distillation_config, model_output, data: TensorDict) -> tuple[torch.Tensor, dict[str, Any]]:
    cfg = distillation_config.distillation_loss
    if not isinstance(cfg, SGOPDLossConfig):
        raise TypeError(
            "loss_mode 'sgopd' needs distillation.distillation_loss._target_="
            f"{SGOPDLossConfig.__module__}.{SGOPDLossConfig.__qualname__} (got {type(cfg).__name__})"
        )
    lp_new = no_padding_2_padding(model_output["log_probs"], data)  # [B, T], current policy (grad)
    width = lp_new.shape[1]
    with torch.no_grad():
        lp_teacher = no_padding_2_padding(data["teacher_logprobs"], data).squeeze(-1).to(lp_new.dtype)
        mask = dense(data["response_mask"], width).to(torch.bool)
        lp_old = dense(data["old_log_probs"], width).to(lp_new.dtype)
        a_rl = dense(data["advantages"], width).to(lp_new.dtype)
        if "ref_log_prob" in data:
            lp_ref = dense(data["ref_log_prob"], width).to(lp_new.dtype)
        elif cfg.needs_reference():
            raise KeyError(
                "sgopd with an extrapolation factor != 1 needs ref_log_prob: enable the reference policy "
                "(actor_rollout_ref.actor.use_kl_loss=True with kl_loss_coef=0)"
            )
        else:
            lp_ref = lp_old  # every factor is 1: lp_ref cancels
        anchor = row_field(data, "pts_anchor")
        anchor = anchor.to(torch.bool) if anchor is not None and bool(anchor.any()) else None
        weight = dense(data["sgopd_weight"], width) if "sgopd_weight" in data else None
        row_scale = row_field(data, "sgopd_row_scale")
        adv, stats = adapter.token_advantage(
            a_rl,
            lp_old,
            lp_teacher,
            lp_ref,
            mask,
            route_kwargs=cfg.route_kwargs(),
            stability_mode=cfg.stability_mode,
            stability_clip=cfg.stability_clip,
            anchor=anchor,
            weight=weight,
            row_scale=row_scale,
        )
        pad_rollout_is_weights(data, width, anchor)
    return -adv, _metrics(stats, lp_new, mask, anchor, row_scale)


if LOSS_NAME not in DISTILLATION_LOSS_REGISTRY:  # idempotent: a module imported twice registers once
    sgopd_distillation_loss = register_distillation_loss(DistillationLossSettings(names=[LOSS_NAME], use_estimator=True))(
        _sgopd_loss
    )
else:
    sgopd_distillation_loss = DISTILLATION_LOSS_REGISTRY[LOSS_NAME]
