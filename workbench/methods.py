"""The registry of training methods (docs/algorithm.md sections 7-8).

A method names how the student is optimised (its ``family``) and fixes or defaults the
config fields that define it, so that a run config lists only what differs. This module
is import-light: the CLI reads method names from it for ``--help`` and choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.registry import Registry

Family = Literal["sft", "gkd", "pg"]


@dataclass(frozen=True)
class Method:
    name: str
    family: Family  # sft: teacher-forced NLL; gkd: on-policy JSD; pg: on-policy PPO-clip
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # dotted field -> required value
    defaults: Mapping[str, Any] = field(default_factory=dict)  # dotted field -> default value
    advantage: Literal["routed", "grpo", "none"] = "routed"


METHODS: Registry[Method] = Registry("method")

_NO_PTS = {"pts.enabled": False}
for _m in (
    Method(
        "sft",
        "sft",
        "SFT on one sampled teacher response per training prompt",
        fixed=_NO_PTS,
        defaults={"sft.teacher_decoding": "sample"},
        advantage="none",
    ),
    Method(
        "seqkd",
        "sft",
        "SeqKD: SFT on the teacher's greedy response per training prompt",
        fixed=_NO_PTS,
        defaults={"sft.teacher_decoding": "greedy"},
        advantage="none",
    ),
    Method("gkd", "gkd", "GKD: full-vocabulary generalized JSD on student samples", fixed=_NO_PTS, advantage="none"),
    Method(
        "opd",
        "pg",
        "OPD: sampled-token reverse-KL advantage lp_T - lp_old",
        fixed={"gate.sign_gate": False, "gate.lambda_base": 1.0, "gate.gate_all_tokens_as": None},
        defaults={"stability.mode": "none", "pts.enabled": False},
    ),
    Method(
        "exopd",
        "pg",
        "ExOPD: uniform G-OPD with lambda_base > 1 (gate off)",
        fixed={"gate.sign_gate": False},
        defaults={"stability.mode": "none", "pts.enabled": False},
    ),
    Method(
        "sgopd",
        "pg",
        "SG-OPD: sign-consistency gate (+ PTS and stability weight by default)",
        fixed={"gate.sign_gate": True, "gate.gate_all_tokens_as": None},
        defaults={"stability.mode": "phi", "pts.enabled": True},
    ),
    Method(
        "grpo",
        "pg",
        "GRPO reference: the verifier's outcome advantage only",
        defaults={"stability.mode": "none", "pts.enabled": False},
        advantage="grpo",
    ),
):
    METHODS.register(_m.name, _m)
