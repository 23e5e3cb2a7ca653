"""Masked reductions shared by every loss and metric (token-mean and sequence-mean aggregation)."""

from __future__ import annotations

import torch
from torch import Tensor


def valid(mask: Tensor) -> Tensor:
    """Boolean view of a response mask ``[B, T]`` (1 on response tokens)."""
    return mask if mask.dtype == torch.bool else mask != 0


def token_mean(x_BT: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the valid tokens of the whole batch; 0 when none is valid.

    Masked entries are selected away (not multiplied by 0), so a NaN or inf on padding
    reaches neither the value nor the gradient.
    """
    m = valid(mask)
    total = torch.where(m, x_BT, torch.zeros((), dtype=x_BT.dtype, device=x_BT.device)).sum()
    return total / torch.count_nonzero(m).clamp(min=1)


def seq_mean_token_mean(x_BT: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of each sequence's token mean (verl's ``seq-mean-token-mean``).

    ``(1 / S) * sum_i (1 / n_i) * sum_t x[i, t]`` over the ``S`` rows with ``n_i >= 1`` valid
    tokens: every sequence weighs the same, whatever its length (``token_mean`` weighs every
    token the same). Rows without a valid token are left out; 0 when no row has one. Masked
    entries are selected away, as in ``token_mean``.
    """
    m = valid(mask)
    n_tokens = m.sum(-1)
    row_sum = torch.where(m, x_BT, torch.zeros((), dtype=x_BT.dtype, device=x_BT.device)).sum(-1)
    return (row_sum / n_tokens.clamp(min=1)).sum() / torch.count_nonzero(n_tokens).clamp(min=1)


def safe(x_BT: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """``x`` with masked entries replaced by ``fill``; the gradient there is exactly 0."""
    return torch.where(valid(mask), x_BT, torch.tensor(fill, dtype=x_BT.dtype, device=x_BT.device))
