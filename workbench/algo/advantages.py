"""Advantage signals of SG-OPD (docs/algorithm.md section 2).

All functions are pure and detached: advantages are computed from the rollout-time
student (``lp_old``) and never carry gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def grpo_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage per rollout.

    ``A_RL[i] = (r_i - mean_g(r)) / (std_g(r) + eps)`` where ``g`` is rollout ``i``'s
    prompt group and ``std_g`` the unbiased sample standard deviation (as verl's GRPO).

    Args:
        rewards: ``[B]`` verifier rewards (any real values; SG-OPD uses 0/1).
        group_ids: ``[B]`` integer group label of each rollout (same label = same prompt).
        eps: added to the standard deviation.

    Returns:
        ``[B]`` float advantages. A group whose rewards are all equal gives exactly 0.
        Deviation from verl: a single-rollout group also gives 0 (docs/algorithm.md: no verifier
        signal without a contrast), where verl would return ``r_i``.
    """
    rewards = rewards.detach().to(torch.float32) if not rewards.is_floating_point() else rewards.detach()
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, inv, torch.ones_like(rewards))
    total = torch.zeros_like(count).index_add_(0, inv, rewards)
    dev = rewards - (total / count)[inv]
    sq = torch.zeros_like(count).index_add_(0, inv, dev * dev)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    # Equal rewards must give exactly 0: a rounding residue of the mean divided by a
    # residue-sized std would otherwise be a spurious, even large, signal.
    lo = torch.full_like(count, float("inf")).scatter_reduce_(0, inv, rewards, "amin")
    hi = torch.full_like(count, float("-inf")).scatter_reduce_(0, inv, rewards, "amax")
    constant = (lo == hi)[inv]
    return torch.where(constant, torch.zeros_like(dev), dev / (std[inv] + eps))


@torch.no_grad()
def opd_advantage(lp_old: Tensor, lp_teacher: Tensor) -> Tensor:
    """OPD advantage (single-token reverse KL, per-token discount 0).

    ``A_OPD[t] = lp_T[t] - lp_old[t]``, shapes ``[B, T]``.
    """
    return lp_teacher.detach() - lp_old.detach()


@torch.no_grad()
def gopd_advantage(lp_old: Tensor, lp_teacher: Tensor, lp_ref: Tensor, lam: float | Tensor) -> Tensor:
    """G-OPD advantage with reward extrapolation factor ``lam``.

    ``A_lam[t] = lam * (lp_T[t] - lp_ref[t]) - (lp_old[t] - lp_ref[t])``, shapes ``[B, T]``.
    ``lam = 1`` is OPD; ``lam > 1`` is ExOPD. ``lam`` may be a tensor broadcastable to
    ``[B, T]`` (per-token factors, used by the four-cell probe).
    """
    lp_old, lp_teacher, lp_ref = lp_old.detach(), lp_teacher.detach(), lp_ref.detach()
    d_teacher = lp_teacher - lp_ref
    if isinstance(lam, Tensor):
        return torch.addcmul(lp_ref - lp_old, lam.to(d_teacher.dtype), d_teacher)
    return torch.add(lp_ref - lp_old, d_teacher, alpha=lam)
