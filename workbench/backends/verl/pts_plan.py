"""What the PTS trainer decides each verl step, as pure functions (no verl import).

``workbench.backends.verl.pts`` calls these from verl's v1 trainer; here they are plain
tensors in, tensors out, so the CPU tests cover every decision the GPU job makes.

verl counts steps from 1 (``global_steps``); docs/algorithm.md section 6's progress is
``f = step / total`` with a 0-based step, so verl step ``s`` is docs/algorithm.md step ``s - 1``.

Three kinds of rows share a verl batch: the student's rollouts, PTS teacher-anchor rows and
verl's padding rows (``upsample_batch_to_divisible_size`` appends copies of the batch's
*first* row, tagged ``is_padding``, to make the batch divisible by the data-parallel size;
the copies keep that row's fields, ``pts_anchor`` included). ``row_roles`` decides which
is which from verl's flag and the anchor field; every decision below goes through it:
padding rows are never anchors, never join a GRPO group or a metric, and carry zero
loss weight; anchor rows never count in the rollout metrics (``metric_tags``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import workbench.algo as A
from workbench.backends.verl import adapter


@dataclass(frozen=True)
class StepPlan:
    active: bool  # does the teacher sample this step?
    n_prompts: int  # prompts the teacher answers (0 when inactive)
    alpha: float  # anchor-loss weight


def step_plan(global_step: int, total_steps: int, prompts_per_step: int, pts: Mapping[str, Any]) -> StepPlan:
    """PTS at verl step ``global_step`` (1-based) of ``total_steps`` (``pts``: the run's pts section)."""
    if not pts.get("enabled", False):
        return StepPlan(False, 0, 0.0)
    step = global_step - 1
    phases = {"phase1_end_frac": pts["phase1_end_frac"], "phase2_end_frac": pts["phase2_end_frac"]}
    alpha = A.pts_alpha(step, total_steps, **phases, alpha0=pts["alpha0"], alpha1=pts["alpha1"])
    if not A.pts_active(step, total_steps, **phases):
        return StepPlan(False, 0, 0.0)
    return StepPlan(True, A.pts_prompts_per_step(prompts_per_step, pts["teacher_sampling_ratio"]), alpha)


def prompt_flags(n_prompts: int, plan: StepPlan) -> list[bool]:
    """Which of a step's prompts the teacher also answers: the first ``plan.n_prompts``.

    The dataloader already shuffles prompts, so the first ones are a uniform draw (the mini
    backend takes the first ones of its shuffled step too).
    """
    k = min(plan.n_prompts, n_prompts) if plan.active else 0
    return [i < k for i in range(n_prompts)]


def padding_rows(tags: Sequence[Mapping[str, Any]]) -> Tensor:
    """``[B]`` bool: verl's padding rows (its per-row ``is_padding`` tag)."""
    return torch.tensor([bool(t.get("is_padding", False)) for t in tags], dtype=torch.bool)


def row_roles(anchor: Tensor, padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(student, anchor)`` ``[B]`` bool masks; padding rows are neither.

    ``anchor`` is the rows' ``pts_anchor`` field as stored, which verl's padding rows copy
    from the batch's first row: only ``padding`` tells them apart.
    """
    anchor = anchor.reshape(-1).to(torch.bool)
    padding = torch.zeros_like(anchor) if padding is None else padding.reshape(-1).to(torch.bool)
    return ~anchor & ~padding, anchor & ~padding


def metric_tags(tags: Sequence[Mapping[str, Any]], anchor: Tensor) -> list[dict[str, Any]]:
    """verl's row tags for its rollout metrics: anchor rows tagged ``is_padding`` too.

    verl's ``_compute_metrics`` computes its rollout metrics (score = student accuracy,
    response length, ...) over the rows not tagged ``is_padding``; tagging the teacher's
    anchor rows the same way makes them the student's rollouts only.
    """
    _, anchor = row_roles(anchor, padding_rows(tags))
    out = [copy.deepcopy(dict(t)) for t in tags]
    for t, a in zip(out, anchor.tolist()):
        if a:
            t["is_padding"] = True
    return out


def kept_anchors(rewards: Tensor, anchor: Tensor, filter_correct: bool) -> Tensor:
    """``[B]`` bool: anchor rows whose teacher response enters the anchor loss."""
    anchor = anchor.to(torch.bool)
    return anchor & (rewards > 0) if filter_correct else anchor.clone()


def group_ids(uids: Sequence[str]) -> Tensor:
    """``[B]`` integer group label per row from verl's per-row prompt uid."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(u, len(index)) for u in uids], dtype=torch.long)


@torch.no_grad()
def step_fields(
    *,
    rewards: Tensor,
    uids: Sequence[str],
    anchor: Tensor,
    mask: Tensor,
    lp_old: Tensor,
    lp_teacher: Tensor,
    lp_ref: Tensor | None,
    loss_cfg: Mapping[str, Any],
    plan: StepPlan,
    padding: Tensor | None = None,
    entropy: Tensor | None = None,
    loss_agg_mode: str = "token-mean",
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The per-step fields the PTS trainer writes back before the actor update, and metrics.

    - ``advantages``: ``A_RL`` by ``workbench.algo.grpo_advantage`` over the student rows'
      prompt groups (anchor rows excluded from the groups, and 0), broadcast on valid tokens;
    - ``sgopd_weight`` / ``sgopd_row_scale``: ``adapter.driver_fields`` over the whole batch.

    Args are padded ``[B, T]`` response tensors and ``[B]`` rows; ``rewards`` the verifier's
    score per row; ``loss_cfg`` the ``SGOPDLossConfig`` fields (gate, stability, pts);
    ``padding`` verl's padding rows (``padding_rows``): advantage 0, row scale 0, in no
    group, count and metric; ``entropy`` the policy's per-token entropy (verl's
    ``actor/entropy`` averages it over anchor tokens too): ``train/entropy`` over the
    student tokens; ``loss_agg_mode`` verl's ``actor.loss_agg_mode`` (the row scales follow it).
    """
    student, anchor = row_roles(anchor, padding)
    m = mask.to(torch.bool) & (student | anchor)[:, None]
    a_rl_rows = torch.zeros(len(uids), dtype=torch.float32)
    if bool(student.any()):
        gids = group_ids([u for u, s in zip(uids, student.tolist()) if s])
        a_rl_rows[student] = A.grpo_advantage(rewards[student].float(), gids)
    a_rl = torch.where(m, a_rl_rows[:, None].to(lp_old.dtype), torch.zeros((), dtype=lp_old.dtype))
    kept = kept_anchors(rewards, anchor, bool(loss_cfg.get("pts_filter_correct", True)))
    route = {k: loss_cfg[k] for k in adapter.ROUTE_KEYS if k in loss_cfg}
    fields = adapter.driver_fields(
        a_rl,
        lp_old,
        lp_teacher,
        lp_old if lp_ref is None else lp_ref,
        m,
        route_kwargs=route,
        stability_mode=loss_cfg.get("stability_mode", "phi"),
        stability_clip=loss_cfg.get("stability_clip", 2.0),
        anchor=anchor,
        kept=kept,
        alpha=plan.alpha,
        loss_agg_mode=loss_agg_mode,
    )
    fields["advantages"] = a_rl
    fields["sgopd_row_scale"] = torch.where(student | anchor, fields["sgopd_row_scale"], torch.zeros(()))
    n_anchor = int(anchor.sum())
    metrics = {
        "train/reward_mean": float(rewards[student].float().mean()) if bool(student.any()) else 0.0,
        "train/pts_alpha": plan.alpha,
        "train/pts_kept": float(kept.sum()),
    }
    if entropy is not None and bool((m & student[:, None]).any()):
        metrics["train/entropy"] = float(entropy.float()[m & student[:, None]].mean())
    if n_anchor:
        metrics["train/pts_teacher_acc"] = float((rewards[anchor] > 0).float().mean())
    return fields, metrics
