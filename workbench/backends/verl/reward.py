"""verl's custom reward function for the workbench's runs (``reward.custom_reward_function``).

Binary verifier: 1.0 when math-verify finds the response's final answer equal to the
ground truth, else 0.0. Each call grades in this process's ``GradingPool`` (a hard
per-answer timeout: a pathological answer costs its timeout, never a hung reward worker).

verl 0.9.1 calls a synchronous reward function through ``loop.run_in_executor(None, ...)``
(``verl/experimental/reward_loop/reward_manager/naive.py``), i.e. from many threads at
once. The pool is thread-safe (``GradingPool``), is created once per process under a lock,
and serves ``WORKBENCH_GRADE_WORKERS`` answers at a time (default 2: one pathological
answer does not stall the other calls). ``tests/test_verl_reward.py`` hammers this function
from many threads.
"""

from __future__ import annotations

import atexit
import os
import threading

from workbench.backends.verl.grading import GradingPool

TIMEOUT = float(os.environ.get("WORKBENCH_GRADE_TIMEOUT", "10"))
WORKERS = int(os.environ.get("WORKBENCH_GRADE_WORKERS", "2"))
_pool: GradingPool | None = None
_pool_pid: int | None = None
_lock = threading.Lock()


def _shared_pool() -> GradingPool:
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked copy of a process gets its own pool
            _pool, _pool_pid = GradingPool(workers=WORKERS, timeout=TIMEOUT), os.getpid()
            atexit.register(_pool.close)
        return _pool


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    fmt = extra_info.get("answer_format", "boxed") if isinstance(extra_info, dict) else "boxed"
    return 1.0 if _shared_pool().grade([(solution_str, str(ground_truth))], fmt)[0].correct else 0.0
