"""Losses of SG-OPD and its baselines (docs/algorithm.md sections 5-7). Each returns ``(loss, metrics)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.algo.masked import safe, token_mean, valid


def _upcast(x: Tensor) -> Tensor:
    """bf16 / fp16 logits to float32 for the softmax; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def ppo_clip_loss(
    lp_new: Tensor,
    lp_old: Tensor,
    adv: Tensor,
    weight: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip token loss with token-mean aggregation (docs/algorithm.md section 5; paper eq. 10).

    ``ratio = exp(lp_new - lp_old)``,
    ``L = -token_mean(w * min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A))``
    over the valid tokens of the whole batch. Shapes ``[B, T]``; gradients flow only
    through ``lp_new``; padding contributes nothing to value or gradient.

    Metrics: ``clipfrac`` (fraction of valid tokens where the clipped term is the active
    minimum), ``ratio_mean``, ``approx_kl`` (token mean of ``lp_old - lp_new``).
    """
    m = valid(mask)
    lp_new = safe(lp_new, m)
    lp_old, adv, weight = (safe(x.detach(), m) for x in (lp_old, adv, weight))
    log_ratio = lp_new - lp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -token_mean(weight * torch.minimum(unclipped, clipped), m)
    with torch.no_grad():
        metrics = {
            "clipfrac": float(token_mean((clipped < unclipped).to(adv.dtype), m)),
            "ratio_mean": float(token_mean(ratio, m)),
            "approx_kl": float(token_mean(-log_ratio, m)),
        }
    return loss, metrics


def nll_loss(logp: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Token-mean negative log-likelihood ``-token_mean(logp)`` (SFT, SeqKD; ``[B, T]``)."""
    loss = -token_mean(logp, mask)
    return loss, {"nll": float(loss.detach())}


def pts_anchor_loss(logp: Tensor, mask: Tensor, kept: Tensor) -> tuple[Tensor, dict[str, float]]:
    """PTS anchor loss on teacher responses (docs/algorithm.md section 6; paper eq. 2).

    ``L_PTS = -token_mean(log pi_s(z_t | x, z_<t))`` over the tokens of the kept
    (verifier-accepted, when filtering) teacher responses ``z``. Rejected responses
    contribute nothing; no kept response gives ``L_PTS = 0`` exactly.

    Args:
        logp: ``[B, T]`` student log-probs of the teacher response tokens.
        mask: ``[B, T]`` response mask.
        kept: ``[B]`` bool, which responses enter the loss.
    """
    m = valid(mask) & kept.to(torch.bool)[:, None]
    loss = -token_mean(logp, m)
    return loss, {"pts_loss": float(loss.detach()), "pts_kept": int(kept.to(torch.bool).sum())}


def generalized_jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """GKD's generalized Jensen-Shannon divergence on full-vocabulary logits (docs/algorithm.md section 7).

    With ``P = pi_T``, ``Q = pi_s`` and ``M = beta P + (1 - beta) Q`` per token,
    ``JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M)`` (Agarwal et al., 2024, as in
    TRL). Its limits are taken exactly: ``beta = 0`` is the forward ``KL(P || Q)`` and
    ``beta = 1`` the reverse ``KL(Q || P)`` (the mixture form would give 0 there; for
    small ``beta``, ``JSD_beta / beta -> KL(P || Q)``). Token mean over valid tokens.

    Args:
        student_logits, teacher_logits: ``[B, T, V]``; gradients flow through the
            student's distribution only.
        mask: ``[B, T]``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    m = valid(mask)[..., None]
    zero = torch.zeros((), dtype=_upcast(student_logits).dtype, device=student_logits.device)
    # Padding is replaced before the softmax: its backward would turn NaN/inf there into NaN
    # gradients. Log-probs are floored so that a zero probability (a -inf logit) gives the
    # 0 * log 0 = 0 convention instead of 0 * inf = NaN.
    floor = -1e4
    log_q = F.log_softmax(torch.where(m, _upcast(student_logits), zero) / temperature, dim=-1).clamp(min=floor)
    log_p = F.log_softmax(torch.where(m, _upcast(teacher_logits.detach()), zero) / temperature, dim=-1).clamp(min=floor)

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
        return (log_a.exp() * (log_a - log_b)).sum(-1)

    if beta == 0.0:
        jsd = kl(log_p, log_q)
    elif beta == 1.0:
        jsd = kl(log_q, log_p)
    else:
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
        jsd = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    loss = token_mean(jsd, mask)
    return loss, {"jsd": float(loss.detach())}


def sequence_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-prob of each next token: ``logits [B, T, V]`` scored against ``tokens [B, T]``.

    ``logits[:, t]`` must be the prediction for ``tokens[:, t]`` (shift before calling).
    """
    logp = F.log_softmax(_upcast(logits) / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution per position, ``[B, T, V] -> [B, T]``."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)
