"""verl's step metrics under the canonical names of docs/algorithm.md section 10 (pure; no verl import).

verl logs its own names (``critic/score/mean``, ``actor/entropy``, ``timing_s/step``...)
and prefixes everything the actor's loss returns with ``actor/``. ``canonical_metrics``
adds the docs/algorithm.md names beside them, so both backends' runs compare in MLflow; verl's own
names stay for anyone who knows verl. ``add_canonical`` is what every verl PPO-family run
applies at each step (``trainer.WorkbenchTrainer._compute_metrics``), whatever its method.

The ``sgopd`` loss reports per micro-batch fractions (averaged by verl: approximate) and
exact integer counts and sums (``sgopd/n_*``, ``sgopd/*_sum``, added up by verl); from the
counts the fractions here are the exact step values over all of the step's tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: canonical name <- verl name, first match wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "train/reward_mean": ("critic/score/mean", "critic/rewards/mean"),
    "train/entropy": ("actor/entropy",),
    "train/response_length": ("response_length/mean",),
    "train/clipfrac": ("actor/distillation/pg_clipfrac", "actor/pg_clipfrac"),
    "train/loss": ("actor/loss", "actor/pg_loss"),
    "train/grad_norm": ("actor/grad_norm",),
    "perf/step_seconds": ("timing_s/step",),
    "perf/tokens_per_second": ("perf/throughput",),
}
SPEC_TRAIN = (
    "conflict_frac",
    "consensus_frac",
    "neutral_frac",
    "adv_mean",
    "adv_abs_max",
    "kl_teacher",
    "pts_loss",
    "pts_alpha",
    "pts_teacher_acc",
    "pts_kept",
)


def _get(m: Mapping[str, Any], *keys: str) -> float | None:
    for k in keys:
        if k in m and m[k] is not None:
            return float(m[k])
    return None


def canonical_metrics(metrics: Mapping[str, Any], *, n_gpus: int = 1) -> dict[str, float]:
    """The docs/algorithm.md section 10 names found (or derived) in one step's verl metrics.

    ``perf/throughput`` is verl's tokens per second per GPU; ``n_gpus`` turns it into the
    job's total (the mini backend's ``perf/tokens_per_second`` is its whole process's).
    """
    out: dict[str, float] = {}
    for name, sources in ALIASES.items():
        v = _get(metrics, *sources)
        if v is not None:
            out[name] = v * n_gpus if name == "perf/tokens_per_second" else v
    for key in SPEC_TRAIN:  # the sgopd loss's own names, prefixed "actor/" by the v1 trainer
        v = _get(metrics, f"train/{key}", f"actor/train/{key}")
        if v is not None:
            out[f"train/{key}"] = v
    counts = {
        k: _get(metrics, f"sgopd/{k}", f"actor/sgopd/{k}")
        for k in ("n_valid", "n_neutral", "n_conflict", "n_consensus", "adv_sum", "kl_teacher_sum", "pts_nll_sum", "pts_tokens")
    }
    if counts["n_valid"]:
        n = counts["n_valid"]
        signed = (counts["n_conflict"] or 0) + (counts["n_consensus"] or 0)
        out["train/conflict_frac"] = (counts["n_conflict"] or 0) / max(signed, 1)
        out["train/consensus_frac"] = (counts["n_consensus"] or 0) / max(signed, 1)
        out["train/neutral_frac"] = (counts["n_neutral"] or 0) / n
        if counts["adv_sum"] is not None:
            out["train/adv_mean"] = counts["adv_sum"] / n
        if counts["kl_teacher_sum"] is not None:
            out["train/kl_teacher"] = counts["kl_teacher_sum"] / n
    if counts["pts_tokens"]:
        out["train/pts_loss"] = (counts["pts_nll_sum"] or 0.0) / counts["pts_tokens"]
    return out


def add_canonical(metrics: dict[str, Any], *, n_gpus: int = 1) -> dict[str, Any]:
    """Add ``canonical_metrics(metrics)`` to ``metrics`` in place (and return it).

    A canonical name the step already has keeps its value: the workbench computed it
    itself (the PTS trainer's student-only ``train/reward_mean``, its ``train/pts_*``).
    """
    for k, v in canonical_metrics(metrics, n_gpus=n_gpus).items():
        metrics.setdefault(k, v)
    return metrics
