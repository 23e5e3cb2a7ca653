"""verl's custom reward function for the workbench's runs (``reward.custom_reward_function``).

Binary verifier: 1.0 when math-verify finds the response's final answer equal to the
ground truth, else 0.0. Each call grades in this process's own one-worker
``GradingPool`` (a hard per-answer timeout: a pathological answer costs its timeout,
never a hung reward worker).
"""

from __future__ import annotations

import atexit
import os

from workbench.backends.verl.grading import GradingPool

TIMEOUT = float(os.environ.get("WORKBENCH_GRADE_TIMEOUT", "10"))
_pool: GradingPool | None = None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    global _pool
    if _pool is None:
        _pool = GradingPool(workers=1, timeout=TIMEOUT)
        atexit.register(_pool.close)
    fmt = (extra_info or {}).get("answer_format", "boxed") if isinstance(extra_info, dict) else "boxed"
    return 1.0 if _pool.grade([(solution_str, str(ground_truth))], fmt)[0].correct else 0.0
