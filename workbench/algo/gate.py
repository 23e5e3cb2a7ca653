"""Token-level sign-consistency gate and routed advantage (docs/algorithm.md section 3).

``s[t] = sign(A_RL[i]) * sign(A_OPD[t])`` classifies every response token as
consensus (+1), conflict (-1) or neutral (0, either signal exactly 0). Consensus tokens
get the strong extrapolation ``A_{lambda_high}``, neutral tokens ``A_{lambda_base}`` (or
another reading, ``NEUTRAL_MODES``), and conflict tokens a fallback chosen by name from
``FALLBACKS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workbench.algo.advantages import gopd_advantage, opd_advantage
from workbench.algo.masked import safe, valid
from workbench.registry import Registry

CONSENSUS, CONFLICT, NEUTRAL = 1, -1, 0

# A fallback maps the token signals to the conflict-token advantage [B, T].
Fallback = Callable[..., Tensor]
FALLBACKS: Registry[Fallback] = Registry("disagree_mode")


@FALLBACKS.register("interp")
def _interp(*, a_opd: Tensor, a_base: Tensor, a_rl: Tensor, beta: float) -> Tensor:
    """Softened OPD: ``beta * A_OPD`` (beta 1 keeps OPD, beta 0 masks the token)."""
    return beta * a_opd


@FALLBACKS.register("preserve")
def _preserve(*, a_opd: Tensor, a_base: Tensor, a_rl: Tensor, beta: float) -> Tensor:
    """Plain G-OPD: ``A_{lambda_base}``, as if the gate were off on this token."""
    return a_base


@FALLBACKS.register("grpo")
def _grpo(*, a_opd: Tensor, a_base: Tensor, a_rl: Tensor, beta: float) -> Tensor:
    """The verifier's own advantage ``A_RL[i]``."""
    return a_rl


@FALLBACKS.register("mask")
def _mask(*, a_opd: Tensor, a_base: Tensor, a_rl: Tensor, beta: float) -> Tensor:
    """No update on conflict tokens."""
    return torch.zeros_like(a_opd)


GATE_ALL_TOKENS_AS = (None, "conflict")
GATE_LEVELS = (2, 4)
#: What a neutral token (s = 0) gets with the gate on (docs/algorithm.md section 11): ``base``
#: A_{lambda_base} (the default), ``consensus`` A_{lambda_high}, ``opd`` A_OPD, ``mask`` 0.
NEUTRAL_MODES = ("base", "consensus", "opd", "mask")


def _scalar(x: float, like: Tensor) -> Tensor:
    """A 0-dim tensor of ``like``'s dtype and device (avoids promotion copies in where)."""
    return torch.tensor(x, dtype=like.dtype, device=like.device)


@torch.no_grad()
def sign_classes(a_rl_BT: Tensor, a_opd_BT: Tensor, mask: Tensor) -> Tensor:
    """``s[t] = sign(A_RL) * sign(A_OPD)`` as int8 ``[B, T]``; 0 on padding."""
    s = torch.sign(a_rl_BT) * torch.sign(a_opd_BT)
    return torch.where(valid(mask), s, torch.zeros((), dtype=s.dtype)).to(torch.int8)


@torch.no_grad()
def gate_fractions(token_class: Tensor, mask: Tensor) -> dict[str, float]:
    """Token-class fractions logged per step (docs/algorithm.md section 3), from ``sign_classes``.

    ``conflict_frac`` and ``consensus_frac`` are over valid tokens whose ``A_RL != 0``
    and ``A_OPD != 0`` (exactly the tokens of class +1 or -1); ``neutral_frac`` is over
    all valid tokens. Empty sets give 0.
    """
    n_conflict = int(torch.count_nonzero(token_class == CONFLICT))
    n_consensus = int(torch.count_nonzero(token_class == CONSENSUS))
    n_valid = int(torch.count_nonzero(valid(mask)))
    n_signed = n_conflict + n_consensus
    return {
        "conflict_frac": n_conflict / max(n_signed, 1),
        "consensus_frac": n_consensus / max(n_signed, 1),
        "neutral_frac": (n_valid - n_signed) / max(n_valid, 1),
    }


@torch.no_grad()
def route_advantage(
    a_rl: Tensor,
    lp_old: Tensor,
    lp_teacher: Tensor,
    lp_ref: Tensor,
    mask: Tensor,
    *,
    sign_gate: bool = True,
    lambda_base: float = 1.25,
    lambda_high: float = 1.8,
    disagree_mode: str = "interp",
    disagree_interp_beta: float = 0.5,
    gate_all_tokens_as: str | None = None,
    gate_levels: int = 2,
    cell_lambda_pos_pos: float | None = None,
    cell_lambda_neg_neg: float | None = None,
    cell_beta_pos_neg: float | None = None,
    cell_beta_neg_pos: float | None = None,
    neutral_mode: str = "base",
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Routed SG-OPD advantage ``A_hat`` (docs/algorithm.md section 3; paper section 4.2, eqs. 4-8).

    With ``A_OPD = lp_T - lp_old``, ``A_lam = lam (lp_T - lp_ref) - (lp_old - lp_ref)`` and
    ``s = sign(A_RL) sign(A_OPD)``::

        A_hat = A_{lambda_high}          if s = +1  (consensus)
              = fallback(disagree_mode)  if s = -1  (conflict)
              = A_{lambda_base}          if s =  0  (neutral; see neutral_mode)

    Variants: ``sign_gate=False`` gives every token ``A_{lambda_base}`` (uniform G-OPD;
    with ``lambda_base=1`` it is OPD). ``gate_all_tokens_as="conflict"`` gives every
    token the conflict fallback. ``gate_levels=4`` is the two-level probe: the cells
    ``(sign A_RL, sign A_OPD)`` = (+,+), (-,-) use ``A_{cell_lambda_*}`` and (+,-), (-,+)
    use ``cell_beta_* * A_OPD``; unset cell factors default to ``lambda_high`` and
    ``disagree_interp_beta`` (which makes the probe equal the binary interp gate).
    ``neutral_mode`` (with the gate on, either level count) replaces what neutral tokens
    get: ``consensus`` ``A_{lambda_high}``, ``opd`` ``A_OPD``, ``mask`` 0; ``base``, the
    default, keeps ``A_{lambda_base}``. Gate off or ``gate_all_tokens_as`` set, it is unused.

    Args:
        a_rl: ``[B]`` or ``[B, T]`` outcome advantage (broadcast over tokens).
        lp_old, lp_teacher, lp_ref: ``[B, T]`` log-probs of the sampled tokens.
        mask: ``[B, T]`` response mask.

    Returns:
        ``(adv [B, T], token_class [B, T] int8 in {+1, -1, 0}, metrics)``. Everything is
        detached and 0 on padding. The class is the sign classification whatever the
        routing (so OPD runs still log conflict fractions). Metrics: ``conflict_frac``,
        ``consensus_frac``, ``neutral_frac``, ``adv_mean``, ``adv_abs_max``,
        ``kl_teacher`` (token mean of ``lp_old - lp_T``).
    """
    fallback = FALLBACKS.get(disagree_mode)
    if gate_all_tokens_as not in GATE_ALL_TOKENS_AS:
        raise ValueError(f"gate_all_tokens_as must be one of {GATE_ALL_TOKENS_AS}, got {gate_all_tokens_as!r}")
    if gate_levels not in GATE_LEVELS:
        raise ValueError(f"gate_levels must be one of {GATE_LEVELS}, got {gate_levels!r}")
    if neutral_mode not in NEUTRAL_MODES:
        raise ValueError(f"neutral_mode must be one of {NEUTRAL_MODES}, got {neutral_mode!r}")
    m = valid(mask)
    lp_old, lp_teacher, lp_ref = lp_old.detach(), lp_teacher.detach(), lp_ref.detach()
    a_rl = a_rl.detach().to(lp_old.dtype)
    a_rl_BT = (a_rl[:, None] if a_rl.dim() == 1 else a_rl).expand_as(lp_old)

    # Few full-size passes: this runs on every token of every step. A_OPD is zeroed on
    # padding, which makes the class 0 there without another pass. One G-OPD call with
    # a per-token lambda gives A_high on consensus and A_base elsewhere.
    a_opd = safe(opd_advantage(lp_old, lp_teacher), m)
    sign_rl = torch.sign(a_rl[:, None] if a_rl.dim() == 1 else a_rl)
    cls = (sign_rl * torch.sign(a_opd)).to(torch.int8)

    if gate_all_tokens_as == "conflict":
        a_base = gopd_advantage(lp_old, lp_teacher, lp_ref, lambda_base)
        adv = fallback(a_opd=a_opd, a_base=a_base, a_rl=a_rl_BT, beta=disagree_interp_beta)
    elif not sign_gate:
        adv = gopd_advantage(lp_old, lp_teacher, lp_ref, lambda_base)
    elif gate_levels == 2:
        lam = torch.where(cls == CONSENSUS, _scalar(lambda_high, a_opd), _scalar(lambda_base, a_opd))
        adv = gopd_advantage(lp_old, lp_teacher, lp_ref, lam)  # A_high on consensus, A_base elsewhere
        conflict = cls == CONFLICT
        # On conflict tokens ``adv`` still holds A_base, which is what ``preserve`` returns.
        adv = torch.where(conflict, fallback(a_opd=a_opd, a_base=adv, a_rl=a_rl_BT, beta=disagree_interp_beta), adv)
    else:
        lam_pp = lambda_high if cell_lambda_pos_pos is None else cell_lambda_pos_pos
        lam_nn = lambda_high if cell_lambda_neg_neg is None else cell_lambda_neg_neg
        beta_pn = disagree_interp_beta if cell_beta_pos_neg is None else cell_beta_pos_neg
        beta_np = disagree_interp_beta if cell_beta_neg_pos is None else cell_beta_neg_pos
        # On a signed token the sign of A_RL names the cell: consensus (+,+)/(-,-), conflict (+,-)/(-,+).
        rl_pos = a_rl_BT > 0
        lam = torch.where(
            cls == CONSENSUS,
            torch.where(rl_pos, _scalar(lam_pp, a_opd), _scalar(lam_nn, a_opd)),
            _scalar(lambda_base, a_opd),
        )
        beta = torch.where(rl_pos, _scalar(beta_pn, a_opd), _scalar(beta_np, a_opd))
        adv = torch.where(cls == CONFLICT, beta * a_opd, gopd_advantage(lp_old, lp_teacher, lp_ref, lam))
    if sign_gate and gate_all_tokens_as is None and neutral_mode != "base":
        # Neutral tokens hold A_base here; another reading replaces them (padding is class 0
        # too and is zeroed below). The default skips this pass.
        if neutral_mode == "consensus":
            neutral_adv = gopd_advantage(lp_old, lp_teacher, lp_ref, lambda_high)
        elif neutral_mode == "opd":
            neutral_adv = a_opd
        else:
            neutral_adv = torch.zeros_like(adv)
        adv = torch.where(cls == NEUTRAL, neutral_adv, adv)

    adv = safe(adv, m)
    n_valid = max(int(torch.count_nonzero(m)), 1)
    metrics = gate_fractions(cls, m)
    lo, hi = torch.aminmax(adv) if adv.numel() else (torch.zeros(()), torch.zeros(()))
    metrics.update(
        adv_mean=float(adv.sum()) / n_valid,
        adv_abs_max=max(-float(lo), float(hi)),
        kl_teacher=-float(a_opd.sum()) / n_valid,
    )
    return adv, cls, metrics
