"""What the PTS trainer decides each verl step, as pure functions (no verl import).

``workbench.backends.verl.pts`` calls these from verl's v1 trainer; here they are plain
tensors in, tensors out, so the CPU tests cover every decision the GPU job makes.

verl counts steps from 1 (``global_steps``); SPEC section 6's progress is
``f = step / total`` with a 0-based step, so verl step ``s`` is SPEC step ``s - 1``.
"""

from __future__ import annotations

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
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The per-step fields the PTS trainer writes back before the actor update, and metrics.

    - ``advantages``: ``A_RL`` by ``workbench.algo.grpo_advantage`` over the student rows'
      prompt groups (anchor rows excluded from the groups, and 0), broadcast on valid tokens;
    - ``sgopd_weight`` / ``sgopd_row_scale``: ``adapter.driver_fields`` over the whole batch.

    Args are padded ``[B, T]`` response tensors and ``[B]`` rows; ``rewards`` the verifier's
    score per row; ``loss_cfg`` the ``SGOPDLossConfig`` fields (gate, stability, pts).
    """
    anchor = anchor.to(torch.bool)
    m = mask.to(torch.bool)
    student = ~anchor
    a_rl_rows = torch.zeros(len(uids), dtype=torch.float32)
    if bool(student.any()):
        gids = group_ids([u for u, s in zip(uids, student.tolist()) if s])
        a_rl_rows[student] = A.grpo_advantage(rewards[student].float(), gids)
    a_rl = torch.where(m, a_rl_rows[:, None].to(lp_old.dtype), torch.zeros((), dtype=lp_old.dtype))
    kept = kept_anchors(rewards, anchor, bool(loss_cfg.get("pts_filter_correct", True)))
    route = {k: loss_cfg[k] for k in adapter.ROUTE_KEYS if k in loss_cfg}
    fields = adapter.driver_fields(
        a_rl, lp_old, lp_teacher, lp_old if lp_ref is None else lp_ref, m, route_kwargs=route,
        stability_mode=loss_cfg.get("stability_mode", "phi"), stability_clip=loss_cfg.get("stability_clip", 2.0),
        anchor=anchor, kept=kept, alpha=plan.alpha,
    )
    fields["advantages"] = a_rl
    n_anchor = int(anchor.sum())
    metrics = {
        "train/reward_mean": float(rewards[student].float().mean()) if bool(student.any()) else 0.0,
        "train/pts_alpha": plan.alpha,
        "train/pts_kept": float(kept.sum()),
    }
    if n_anchor:
        metrics["train/pts_teacher_acc"] = float((rewards[anchor] > 0).float().mean())
    return fields, metrics
