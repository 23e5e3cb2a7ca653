"""SG-OPD on verl's batch tensors, built from ``workbench.algo`` (pure PyTorch, no verl import).

verl's distillation loss sees one micro-batch as padded ``[B, T]`` response tensors. The
SG-OPD pieces split into what is exact per token and what is a batch statistic:

- routing (``route_advantage``) is per token: ``A_RL`` arrives already normalised over
  the whole GRPO group in ``data["advantages"]``, so a micro-batch routes exactly as the
  whole batch would;
- the stability weight (``stability_weight``) is normalised over the valid tokens of the
  batch. Computed on a micro-batch it is normalised over that micro-batch only; the PTS
  trainer (``workbench.backends.verl.pts``) therefore computes it once over the whole
  batch on the driver (``driver_fields``) and ships it as ``sgopd_weight``;
- verl's token-mean divides by the token count of the whole (global) mini-batch, its
  ``seq-mean-token-mean`` by its row count. When PTS teacher-anchor rows share the batch,
  those counts include the anchors; the per-row ``sgopd_row_scale`` from ``driver_fields``
  restores docs/algorithm.md section 6's normalisations (``L_tok`` over the student rows,
  ``L_PTS`` over kept teacher tokens).

The loss returned to verl is ``-(A_hat * w * row_scale)`` per token: verl's policy-gradient
path (``use_policy_gradient=True``) feeds its negation to the PPO clip as the advantage.
Because ``w >= 0`` and rollout-IS weights are ``>= 0``, ``w * min(r A, clip(r) A) =
min(r (w A), clip(r) (w A))``, and likewise for the dual clip ``max(., c A)`` on ``A < 0``:
the weighted clip is exactly docs/algorithm.md section 5's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import workbench.algo as A
from workbench.algo.losses import LOSS_AGG_MODES
from workbench.config import GateConfig

#: Route keyword arguments of ``workbench.algo.route_advantage`` (GateConfig's fields).
ROUTE_KEYS = tuple(GateConfig.model_fields)


def routed_advantage(
    a_rl: Tensor,
    lp_old: Tensor,
    lp_teacher: Tensor,
    lp_ref: Tensor,
    mask: Tensor,
    *,
    route_kwargs: Mapping[str, Any],
    stability_mode: str,
    stability_clip: float,
    weight: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """``(A_hat, w, token_class, metrics)`` of docs/algorithm.md sections 3-4 on padded ``[B, T]`` tensors.

    ``weight`` is a precomputed stability weight (the whole batch's, from ``driver_fields``);
    None computes it over ``mask`` here. All outputs are detached and 0 off ``mask``.
    """
    adv, cls, metrics = A.route_advantage(a_rl, lp_old, lp_teacher, lp_ref, mask, **route_kwargs)
    if weight is None:
        weight = A.stability_weight(adv, lp_old, mask, mode=stability_mode, clip=stability_clip)
    else:
        weight = torch.where(mask, weight.detach().to(adv.dtype), torch.zeros((), dtype=adv.dtype, device=adv.device))
    return adv, weight, cls, metrics


def class_counts(metrics: Mapping[str, float], n_valid: int) -> dict[str, int]:
    """Token-class counts recovered exactly from ``route_advantage``'s fractions.

    The fractions are ratios of integer counts (``gate_fractions``), so rounding the
    products gives the counts back without another pass over the tokens. Counts (not
    fractions) are what add up across micro-batches and data-parallel ranks.
    """
    n_neutral = round(metrics["neutral_frac"] * n_valid)
    n_signed = n_valid - n_neutral
    n_conflict = round(metrics["conflict_frac"] * n_signed)
    return {"n_valid": n_valid, "n_neutral": n_neutral, "n_conflict": n_conflict, "n_consensus": n_signed - n_conflict}


def row_scales(mask: Tensor, anchor: Tensor, kept: Tensor, alpha: float, loss_agg_mode: str = "token-mean") -> Tensor:
    """Per-row factor that turns verl's mean over all rows into docs/algorithm.md's two means.

    ``token-mean``: verl divides every token's term by ``N`` = the valid tokens of all rows
    (student rollouts and teacher-anchor rows alike). docs/algorithm.md wants ``L_tok``
    over the ``N_s`` student tokens and ``alpha * L_PTS`` over the ``N_k`` tokens of kept
    anchor rows, so student rows get ``N / N_s`` and kept anchor rows ``alpha * N / N_k``.

    ``seq-mean-token-mean``: verl divides row ``i``'s token mean by ``R`` = every row of the
    batch (``mask.shape[0]``, verl's ``global_batch_size`` in the PTS trainer, padding rows
    included). ``L_tok`` is then the mean over the ``R_s`` student rows with a valid token
    (student rows get ``R / R_s``) while ``L_PTS`` keeps its token mean (section 6): kept
    anchor row ``i`` with ``n_i`` tokens gets ``alpha * R * n_i / N_k``.

    Rejected anchor rows get 0 either way.

    Args:
        mask: ``[B, T]`` response mask of the whole (global) batch.
        anchor: ``[B]`` bool, PTS teacher-anchor rows.
        kept: ``[B]`` bool, anchor rows the verifier kept (ignored on student rows).
        alpha: ``pts_alpha`` of this step.
        loss_agg_mode: verl's ``actor.loss_agg_mode`` (``LOSS_AGG_MODES``).
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    m = mask.to(torch.bool)
    anchor, kept = anchor.to(torch.bool), kept.to(torch.bool) & anchor.to(torch.bool)
    tokens = m.sum(-1).to(torch.float64)
    n_all = float(tokens.sum())
    n_student = float(tokens[~anchor].sum())
    n_kept = float(tokens[kept].sum())
    scale = torch.zeros(m.shape[0], dtype=torch.float64, device=m.device)
    if loss_agg_mode == "token-mean":
        if n_student > 0:
            scale[~anchor] = n_all / n_student
        if n_kept > 0 and alpha > 0:
            scale[kept] = alpha * n_all / n_kept
    else:
        rows = float(m.shape[0])
        rows_student = float(torch.count_nonzero(tokens[~anchor]))
        if rows_student > 0:
            scale[~anchor] = rows / rows_student
        if n_kept > 0 and alpha > 0:
            scale[kept] = alpha * rows * tokens[kept] / n_kept
    return scale.to(torch.float32)


@torch.no_grad()
def driver_fields(
    a_rl: Tensor,
    lp_old: Tensor,
    lp_teacher: Tensor,
    lp_ref: Tensor,
    mask: Tensor,
    *,
    route_kwargs: Mapping[str, Any],
    stability_mode: str,
    stability_clip: float,
    anchor: Tensor | None = None,
    kept: Tensor | None = None,
    alpha: float = 0.0,
    loss_agg_mode: str = "token-mean",
) -> dict[str, Tensor]:
    """Whole-batch fields that make a micro-batched verl update equal the batch's docs/algorithm.md loss.

    Computed once per step on the driver over the global batch (padded ``[B, T]``):
    ``sgopd_weight`` (the stability weight over the student rows' valid tokens, 0 on anchor
    rows) and ``sgopd_row_scale`` (``row_scales``; ``loss_agg_mode`` is verl's actor's).
    """
    B = mask.shape[0]
    anchor = torch.zeros(B, dtype=torch.bool, device=mask.device) if anchor is None else anchor.to(torch.bool)
    kept = torch.zeros_like(anchor) if kept is None else kept.to(torch.bool)
    student = mask.to(torch.bool) & ~anchor[:, None]
    _, weight, _, _ = routed_advantage(
        a_rl,
        lp_old,
        lp_teacher,
        lp_ref,
        student,
        route_kwargs=route_kwargs,
        stability_mode=stability_mode,
        stability_clip=stability_clip,
    )
    return {
        "sgopd_weight": weight.to(torch.float32),
        "sgopd_row_scale": row_scales(mask, anchor, kept, alpha, loss_agg_mode),
    }


def token_advantage(
    a_rl: Tensor,
    lp_old: Tensor,
    lp_teacher: Tensor,
    lp_ref: Tensor,
    mask: Tensor,
    *,
    route_kwargs: Mapping[str, Any],
    stability_mode: str,
    stability_clip: float,
    anchor: Tensor | None = None,
    weight: Tensor | None = None,
    row_scale: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The per-token advantage handed to verl's PPO clip, and the step's SG-OPD statistics.

    Student rows: ``A_hat * w``; anchor rows (``anchor[B]``): 1 on every valid token (with
    ``row_scale`` = ``alpha * N / N_k`` this is the anchor NLL's gradient at ratio 1); then
    every row times ``row_scale[B]`` (1 when absent). Returns ``(adv [B, T], stats)``;
    ``stats`` holds the class counts, sums and maxima that add up across micro-batches.
    """
    m = mask.to(torch.bool)
    student = m if anchor is None else m & ~anchor.to(torch.bool)[:, None]
    adv, w, _, metrics = routed_advantage(
        a_rl,
        lp_old,
        lp_teacher,
        lp_ref,
        student,
        route_kwargs=route_kwargs,
        stability_mode=stability_mode,
        stability_clip=stability_clip,
        weight=weight,
    )
    out = adv * w
    if anchor is not None:
        out = torch.where(m & anchor.to(torch.bool)[:, None], torch.ones((), dtype=out.dtype, device=out.device), out)
    if row_scale is not None:
        out = out * row_scale.to(out.dtype)[:, None]
    n_valid = int(torch.count_nonzero(student))
    stats: dict[str, Any] = class_counts(metrics, n_valid)
    stats.update(
        fractions={k: metrics[k] for k in ("conflict_frac", "consensus_frac", "neutral_frac")},
        adv_sum=metrics["adv_mean"] * n_valid,
        adv_abs_max=metrics["adv_abs_max"],
        kl_teacher_sum=metrics["kl_teacher"] * n_valid,
    )
    return out, stats


__all__ = [
    "ROUTE_KEYS",
    "class_counts",
    "driver_fields",
    "routed_advantage",
    "row_scales",
    "token_advantage",
]
