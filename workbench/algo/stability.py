"""Detached stability weight applied after routing (docs/algorithm.md section 4; paper eq. 9)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workbench.algo.masked import safe, valid
from workbench.registry import Registry

StabilityFn = Callable[..., Tensor]
STABILITY_WEIGHTS: Registry[StabilityFn] = Registry("stability weight mode")


def _unit_mean(w_BT: Tensor, m: Tensor) -> Tensor:
    """Divide a weight that is already 0 on padding by its mean over valid tokens.

    An all-zero weight (every token certain, say) falls back to 1.
    """
    mean = w_BT.sum() / torch.count_nonzero(m).clamp(min=1)
    if float(mean) <= torch.finfo(w_BT.dtype).tiny:
        return m.to(w_BT.dtype)
    return w_BT / mean


@STABILITY_WEIGHTS.register("phi")
def _phi(adv: Tensor, lp_old: Tensor, m: Tensor, clip: float) -> Tensor:
    p = torch.exp(lp_old)
    phi = safe(torch.addcmul(p, p, p, value=-1.0), m)  # p (1 - p), 0 on padding
    # clip(phi / mean(phi), c) / mean(...) equals clamp(phi, c * mean(phi)) / mean(...):
    # one division fewer over the batch.
    mean = phi.sum() / torch.count_nonzero(m).clamp(min=1)
    if float(mean) <= torch.finfo(phi.dtype).tiny:
        return m.to(phi.dtype)
    return _unit_mean(phi.clamp(max=clip * float(mean)), m)


@STABILITY_WEIGHTS.register("clip")
def _clip(adv: Tensor, lp_old: Tensor, m: Tensor, clip: float) -> Tensor:
    a = adv.abs()
    # min(1, c / |A|), with |A| = 0 giving 1 (c / 0 = inf, clamped to 1).
    w = safe((clip / a).clamp(max=1.0), m)
    return _unit_mean(w, m)


@STABILITY_WEIGHTS.register("none")
def _none(adv: Tensor, lp_old: Tensor, m: Tensor, clip: float) -> Tensor:
    return m.to(adv.dtype)


@torch.no_grad()
def stability_weight(adv: Tensor, lp_old: Tensor, mask: Tensor, *, mode: str = "phi", clip: float = 2.0) -> Tensor:
    """Per-token weight ``w [B, T]`` that rescales the routed advantage.

    - ``phi``: ``phi = p (1 - p)`` with ``p = exp(lp_old)``; divided by its mean over the
      batch's valid tokens, clipped to at most ``clip``, divided by its mean again.
    - ``clip``: ``w = min(1, clip / |adv|)``, then normalised to unit mean.
    - ``none``: ``w = 1``.

    The weight is detached, has mean exactly 1 over valid tokens, is 0 on padding, and
    is non-negative, so it never changes a token's class (the sign of ``w * adv``).
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    m = valid(mask)
    return STABILITY_WEIGHTS.get(mode)(adv.detach(), lp_old.detach(), m, clip)
