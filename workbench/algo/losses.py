"""Losses of SG-OPD and its baselines (docs/algorithm.md sections 5-7). Each returns ``(loss, metrics)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.algo.masked import safe, seq_mean_token_mean, token_mean, valid


def _upcast(x: Tensor) -> Tensor:
    """bf16 / fp16 logits to float32 for the softmax; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


#: Token-loss aggregations (``ppo_clip_loss``'s ``loss_agg_mode``; verl's names).
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")


def ppo_clip_loss(
    lp_new: Tensor,
    lp_old: Tensor,
    adv: Tensor,
    weight: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip token loss (docs/algorithm.md section 5; paper eq. 10).

    ``ratio = exp(lp_new - lp_old)``, per token
    ``o = min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)`` and
    ``L = -agg(w * o)`` over the valid tokens. Shapes ``[B, T]``; gradients flow only
    through ``lp_new``; padding contributes nothing to value or gradient.

    The defaults are the project's reading; two switches give the G-OPD fork of verl's loss
    (docs/algorithm.md section 11):

    - ``clip_ratio_c`` (None: off): dual-clip PPO (Ye et al. 2020, verl's ``clip_ratio_c``).
      On tokens with ``A < 0`` the objective is ``max(o, clip_ratio_c * A)``, so the loss
      ``-A * ratio`` is capped at ``-A * clip_ratio_c`` (and the gradient there is 0);
      ``A >= 0`` is unaffected. Must be > 1.
    - ``loss_agg_mode``: ``token-mean`` averages over the valid tokens of the whole batch;
      ``seq-mean-token-mean`` averages each sequence's token mean over the sequences
      (``masked.seq_mean_token_mean``), so a long response weighs as much as a short one.

    Metrics, token means over the valid tokens whatever the aggregation (as verl's):
    ``clipfrac`` (tokens where the clipped term is the active minimum, the dual clip aside:
    verl's ``pg_clipfrac``), ``clipfrac_lower`` (tokens with ``A < 0`` where the dual clip
    binds, verl's ``pg_clipfrac_lower``; 0 without it), ``ratio_mean``, ``approx_kl``
    (``lp_old - lp_new``).
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or None: no dual clip), got {clip_ratio_c!r}")
    m = valid(mask)
    lp_new = safe(lp_new, m)
    lp_old, adv, weight = (safe(x.detach(), m) for x in (lp_old, adv, weight))
    log_ratio = lp_new - lp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    objective = torch.minimum(unclipped, clipped)
    clipfrac_lower = 0.0
    if clip_ratio_c is not None:
        floor = clip_ratio_c * adv
        negative = adv < 0
        with torch.no_grad():
            clipfrac_lower = float(token_mean((negative & (objective < floor)).to(adv.dtype), m))
        objective = torch.where(negative, torch.maximum(objective, floor), objective)
    agg = token_mean if loss_agg_mode == "token-mean" else seq_mean_token_mean
    loss = -agg(weight * objective, m)
    with torch.no_grad():
        metrics = {
            "clipfrac": float(token_mean((clipped < unclipped).to(adv.dtype), m)),
            "clipfrac_lower": clipfrac_lower,
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
