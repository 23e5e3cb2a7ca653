"""Phased teacher sampling schedule (docs/algorithm.md section 6; paper eq. 3)."""

from __future__ import annotations

import math


def _progress(step: int, total_steps: int, phase1_end_frac: float, phase2_end_frac: float) -> float:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0.0 <= phase1_end_frac < phase2_end_frac <= 1.0:
        raise ValueError(f"need 0 <= phase1_end_frac < phase2_end_frac <= 1, got {phase1_end_frac}, {phase2_end_frac}")
    return step / total_steps


def pts_alpha(
    step: int,
    total_steps: int,
    *,
    phase1_end_frac: float = 0.30,
    phase2_end_frac: float = 0.35,
    alpha0: float = 1.0,
    alpha1: float = 0.1,
) -> float:
    """Weight of the PTS anchor loss at ``step`` (0-based) of ``total_steps``.

    With progress ``f = step / total_steps`` and phase ends ``p1 < p2``::

        alpha = alpha0                                                   f < p1
              = alpha1 + (alpha0 - alpha1) (1 + cos(pi (f - p1) / (p2 - p1))) / 2   p1 <= f < p2
              = 0                                                        f >= p2

    Continuous at ``p1``; tends to ``alpha1`` as ``f -> p2`` and drops to 0 there,
    which is when teacher sampling stops (see ``pts_active``).
    """
    f = _progress(step, total_steps, phase1_end_frac, phase2_end_frac)
    if f < phase1_end_frac:
        return float(alpha0)
    if f < phase2_end_frac:
        x = (f - phase1_end_frac) / (phase2_end_frac - phase1_end_frac)
        return float(alpha1 + (alpha0 - alpha1) * (1 + math.cos(math.pi * x)) / 2)
    return 0.0


def pts_active(step: int, total_steps: int, *, phase1_end_frac: float = 0.30, phase2_end_frac: float = 0.35) -> bool:
    """Whether the teacher samples at ``step``: only while ``f < p2``."""
    return _progress(step, total_steps, phase1_end_frac, phase2_end_frac) < phase2_end_frac


def pts_teacher_prompts(
    total_steps: int,
    prompts_per_step: int,
    *,
    teacher_sampling_ratio: float = 0.125,
    phase1_end_frac: float = 0.30,
    phase2_end_frac: float = 0.35,
) -> int:
    """Teacher-rollout budget of a PTS run: prompts answered by the teacher over training.

    Each active step answers ``max(1, round(rho * prompts_per_step))`` prompts. Used to
    give the time-separated stage 1 the same teacher budget as PTS.
    """
    per_step = pts_prompts_per_step(prompts_per_step, teacher_sampling_ratio)
    active = sum(
        pts_active(s, total_steps, phase1_end_frac=phase1_end_frac, phase2_end_frac=phase2_end_frac) for s in range(total_steps)
    )
    return per_step * active


def pts_prompts_per_step(prompts_per_step: int, teacher_sampling_ratio: float) -> int:
    """Prompts the teacher answers in an active PTS step: ``max(1, round(rho * P))``."""
    return max(1, round(teacher_sampling_ratio * prompts_per_step))
