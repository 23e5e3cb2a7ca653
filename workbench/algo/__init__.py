"""The SG-OPD math, once, as pure PyTorch functions (docs/algorithm.md sections 2-7, 9).

Both backends (mini and verl) call these; no formula is written anywhere else.
"""

from workbench.algo.advantages import gopd_advantage, grpo_advantage, opd_advantage
from workbench.algo.evaluation import avg_at_k, benchmark_scores, eval_metrics, pass_at_k
from workbench.algo.gate import CONFLICT, CONSENSUS, FALLBACKS, NEUTRAL, gate_fractions, route_advantage, sign_classes
from workbench.algo.losses import (
    generalized_jsd_loss,
    nll_loss,
    ppo_clip_loss,
    pts_anchor_loss,
    sequence_logprobs,
    token_entropy,
)
from workbench.algo.masked import token_mean
from workbench.algo.schedule import pts_active, pts_alpha, pts_prompts_per_step, pts_teacher_prompts
from workbench.algo.stability import STABILITY_WEIGHTS, stability_weight

__all__ = [
    "CONFLICT",
    "CONSENSUS",
    "FALLBACKS",
    "NEUTRAL",
    "STABILITY_WEIGHTS",
    "avg_at_k",
    "benchmark_scores",
    "eval_metrics",
    "gate_fractions",
    "generalized_jsd_loss",
    "gopd_advantage",
    "grpo_advantage",
    "nll_loss",
    "opd_advantage",
    "pass_at_k",
    "ppo_clip_loss",
    "pts_active",
    "pts_alpha",
    "pts_anchor_loss",
    "pts_prompts_per_step",
    "pts_teacher_prompts",
    "route_advantage",
    "sequence_logprobs",
    "sign_classes",
    "stability_weight",
    "token_entropy",
    "token_mean",
]
