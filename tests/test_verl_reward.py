"""The reward function and its grading pool under concurrent calls (CPU, seconds).

verl 0.9.1 calls a synchronous reward function via ``loop.run_in_executor(None, ...)``
(``verl/experimental/reward_loop/reward_manager/naive.py``): many threads at once. A pool
shared without care crossed replies between threads (scores swapped 1 <-> 0) and could
hang; these tests pin both down with known answers and a wall-time bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("math_verify")

from workbench.backends.verl import grading, reward
from workbench.backends.verl.grading import GradingPool

N = 64
# half right, half wrong, every answer different: a crossed reply shows as a wrong score
ANSWERS = [(f"so the answer is \\boxed{{{i}}}", str(i if i % 2 == 0 else i + 1)) for i in range(N)]
WANT = [1.0 if i % 2 == 0 else 0.0 for i in range(N)]


def _score(i: int) -> float:
    response, gold = ANSWERS[i]
    return reward.compute_score("math", response, gold, extra_info={"answer_format": "boxed"})


def _hammer(n_threads: int, seconds: float) -> list[float | None]:
    """Score every answer from ``n_threads`` daemon threads; None where a call has not returned
    within ``seconds`` (a hang fails the test instead of hanging the suite)."""
    got: list[float | None] = [None] * N
    todo = iter(range(N))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            got[i] = _score(i)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(n_threads)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return got


def test_reward_function_from_many_threads_scores_every_answer_right():
    for _ in range(3):
        got = _hammer(16, seconds=30)
        assert None not in got, f"{got.count(None)} of {N} calls still running after 30 s"
        assert got == WANT, f"{sum(g != w for g, w in zip(got, WANT))} of {N} scores wrong"


def test_reward_function_through_run_in_executor_as_verl_calls_it():
    async def run_all():  # verl's RewardLoopWorker: gather over rows, each through the default executor
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(None, lambda i=i: _score(i)) for i in range(N)))

    t0 = time.monotonic()
    for _ in range(3):
        assert asyncio.run(run_all()) == WANT
    assert time.monotonic() - t0 < 60


def test_reward_pool_is_created_once_per_process_even_when_threads_race():
    reward._pool = None  # the next calls race to create it
    barrier = threading.Barrier(8)

    def first_call(i):
        barrier.wait()
        return _score(i), id(reward._shared_pool())

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(first_call, range(8)))
    assert [s for s, _ in out] == WANT[:8]
    assert len({p for _, p in out}) == 1


def test_shared_pool_with_batches_of_different_sizes_from_threads():
    """Callers of different batch sizes share two workers; each gets its own answers, in order."""
    with GradingPool(workers=2, timeout=20) as pool:

        def call(k):
            idx = [(k * 7 + j) % N for j in range(1 + k % 5)]
            grades = pool.grade([ANSWERS[i] for i in idx])
            return [1.0 if g.correct else 0.0 for g in grades], [WANT[i] for i in idx]

        with ThreadPoolExecutor(12) as ex:
            for got, want in ex.map(call, range(40)):
                assert got == want


def test_a_pathological_answer_among_concurrent_calls_costs_its_timeout_and_nothing_else():
    bomb = ("\\boxed{9^{9^{9}}}", "3")  # minutes of C-level arithmetic in sympy
    t0 = time.monotonic()
    with GradingPool(workers=2, timeout=2.0) as pool:

        def call(i):
            return pool.grade([bomb if i == 3 else ANSWERS[i]])[0]

        with ThreadPoolExecutor(8) as ex:
            grades = list(ex.map(call, range(16)))
    assert time.monotonic() - t0 < 30
    assert grades[3].timed_out and not grades[3].correct
    assert [1.0 if g.correct else 0.0 for i, g in enumerate(grades) if i != 3] == [w for i, w in enumerate(WANT[:16]) if i != 3]
    assert not any(g.timed_out for i, g in enumerate(grades) if i != 3)


def _never_ready(conn):  # a worker that hangs before reporting ready (e.g. a deadlock after fork)
    time.sleep(3600)


def test_a_worker_that_never_starts_is_an_error_within_its_deadline(monkeypatch):
    monkeypatch.setattr(grading, "_worker", _never_ready)
    t0 = time.monotonic()
    with GradingPool(workers=1, timeout=1.0, start_timeout=0.5) as pool, pytest.raises(RuntimeError, match="did not start"):
        pool.grade([ANSWERS[0]])
    assert time.monotonic() - t0 < 10


def test_waiting_for_a_free_worker_has_a_deadline():
    bomb = ("\\boxed{9^{9^{9}}}", "3")
    with GradingPool(workers=1, timeout=3.0, queue_timeout=0.5) as pool:
        holder = threading.Thread(target=pool.grade, args=([bomb],))
        holder.start()
        time.sleep(0.2)  # the holder has the only worker for ~3 s
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no grading worker"):
            pool.grade([ANSWERS[0]])
        assert time.monotonic() - t0 < 2
        holder.join()
        assert pool.grade([ANSWERS[0]])[0].correct  # the worker went back to the pool
