"""Answer grading with ``math-verify`` in a process pool with a hard per-answer timeout.

math-verify's own timeouts use ``signal.alarm``: they only work in a process's main
thread and cannot interrupt long C-level arithmetic (a ``\\boxed{9^{9^{9}}}`` answer makes
sympy build a ~150 MB integer). Here every answer is graded in a worker process with
math-verify's timeouts off; the parent waits at most ``timeout`` seconds per answer, then
kills the worker, records the answer as wrong (``timed_out``), and starts a fresh worker.

``answer_format``:
- ``boxed`` (real benchmarks): math-verify extracts the final answer from the response
  (``\\boxed{}`` first, then a trailing expression) and compares it with the gold answer;
- ``hash`` (the miniature world): the mini verifier's rule, exactly one ``#`` followed by
  nothing but digits (so ``#3!`` is no answer, not 3 factorial); the digits are wrapped
  in ``\\boxed{}`` and graded the same way.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ANSWER_FORMATS = ("boxed", "hash")


def _gold(answer: str) -> str:
    a = str(answer).strip()
    return a if "\\boxed" in a or a.startswith("$") else f"\\boxed{{{a}}}"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    for marker in ("\\boxed", "\\fbox"):
        start = text.rfind(marker)
        if start < 0:
            continue
        i = start + len(marker)
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            continue
        depth = 0
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1 : j]
        return None  # unbalanced: let math-verify try the whole text
    return None


def _prediction(response: str, answer_format: str) -> str:
    """The text math-verify parses: the final answer, where the format says what final means."""
    if answer_format == "hash":
        answer = response.split("#", 1)[1].strip() if response.count("#") == 1 else ""
        return f"\\boxed{{{answer}}}" if answer.isdigit() else ""
    # Several boxed answers (a model correcting itself): the last one is the final answer.
    # Nested boxes unwrap to the innermost through math-verify.
    boxed = last_boxed(response)
    return f"\\boxed{{{boxed}}}" if boxed is not None and response.count("\\boxed") > 1 else response


def grade_answer(response: str, gold: str, answer_format: str = "boxed") -> bool:
    """Whether ``response``'s final answer equals ``gold`` (math-verify; no timeout: use a pool)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    from math_verify import parse, verify

    pred = _prediction(response or "", answer_format)
    if not pred.strip():
        return False
    parsed_pred = parse(pred, parsing_timeout=None)
    parsed_gold = parse(_gold(gold), parsing_timeout=None)
    if not parsed_pred or not parsed_gold:
        return False
    return bool(verify(parsed_gold, parsed_pred, timeout_seconds=None))


READY = "ready"


def _worker(conn) -> None:  # pragma: no cover - runs in the child process
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout is disabled": this pool is the timeout
    try:  # imported before READY, so that no answer's timeout pays for it
        import math_verify  # noqa: F401
    except ImportError:
        pass  # grade_answer reports it on every answer
    conn.send(READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        rid, response, gold, fmt = task
        try:
            ok, err = grade_answer(response, gold, fmt), None
        except Exception as e:  # noqa: BLE001 - a grading error is a wrong answer, with its reason
            ok, err = False, f"{type(e).__name__}: {e}"[:200]
        conn.send((rid, ok, err))


@dataclass
class Grade:
    correct: bool
    timed_out: bool = False
    error: str | None = None
    seconds: float = 0.0


class GradingPool:
    """``workers`` grading processes; ``grade`` returns one ``Grade`` per (response, gold), in order.

    A worker that exceeds ``timeout`` seconds on an answer is killed and replaced.
    Use as a context manager (or call ``close``, once no ``grade`` call is running).

    Thread-safe: any number of threads may call ``grade`` at once (verl calls a synchronous
    reward function from its event loop's thread pool). A caller checks a worker out,
    sends it one answer, reads the reply and checks the worker back in, so a worker serves
    one caller at a time; every reply carries its request's id and a reply with another id
    is an error, never a score. Nothing waits without a deadline: an answer ``timeout``, a
    worker start ``start_timeout`` (the worker reports ready after its imports; three
    tries), a free worker ``queue_timeout`` (then ``TimeoutError``: loud, not a score).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 10.0,
        start_method: str | None = None,
        *,
        start_timeout: float = 60.0,
        queue_timeout: float = 600.0,
    ):
        self.n = max(1, workers or min(4, os.cpu_count() or 1))
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.queue_timeout = float(queue_timeout)
        self._ctx = mp.get_context(start_method or ("fork" if os.name == "posix" else "spawn"))
        self._procs: list = [None] * self.n
        self._conns: list = [None] * self.n
        self._idle: queue.Queue[int] = queue.Queue()
        for i in range(self.n):
            self._idle.put(i)
        self._ids = itertools.count()
        self._fork_lock = threading.Lock()

    def _start(self, i: int) -> None:
        try:  # forked workers then inherit it (a restart after a timeout costs no import)
            import math_verify  # noqa: F401
        except ImportError:
            pass
        for _ in range(3):
            parent, child = self._ctx.Pipe()
            p = self._ctx.Process(target=_worker, args=(child,), daemon=True)
            with self._fork_lock:  # multiprocessing's child bookkeeping is not meant for concurrent starts
                p.start()
            child.close()
            self._procs[i], self._conns[i] = p, parent
            try:
                if parent.poll(self.start_timeout) and parent.recv() == READY:
                    return
            except (EOFError, OSError):
                pass
            self._kill(i)
        raise RuntimeError(f"grading worker did not start within {self.start_timeout:g} s (3 tries)")

    def _kill(self, i: int) -> None:
        p, c = self._procs[i], self._conns[i]
        if p is not None:
            p.kill()
            p.join(timeout=5)
        if c is not None:
            c.close()
        self._procs[i] = self._conns[i] = None

    def _checkout(self, wait: bool) -> int | None:
        try:
            return self._idle.get(block=wait, timeout=self.queue_timeout if wait else None)
        except queue.Empty:
            if wait:
                raise TimeoutError(f"no grading worker became free within {self.queue_timeout:g} s") from None
            return None

    def _send(self, i: int, task: tuple[str, str, str]) -> int:
        """Send ``task`` to worker ``i`` (started if needed); the request id."""
        rid = next(self._ids)
        for attempt in range(2):
            if self._procs[i] is None or not self._procs[i].is_alive():
                self._start(i)
            try:
                self._conns[i].send((rid, *task))
                return rid
            except OSError:  # died since the check: start a fresh one once
                self._kill(i)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def grade(self, pairs: Iterable[tuple[str, str]], answer_format: str = "boxed") -> list[Grade]:
        from multiprocessing.connection import wait

        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        pairs = list(pairs)
        results: list[Grade | None] = [None] * len(pairs)
        pending = deque(range(len(pairs)))
        busy: dict[int, tuple[int, int, float]] = {}  # worker -> (task index, request id, start time)
        try:
            while pending or busy:
                while pending:  # as many workers as are free; wait for one only when holding none
                    i = self._checkout(wait=not busy)
                    if i is None:
                        break
                    idx = pending[0]
                    try:
                        rid = self._send(i, (pairs[idx][0], pairs[idx][1], answer_format))
                    except BaseException:
                        self._idle.put(i)
                        raise
                    pending.popleft()
                    busy[i] = (idx, rid, time.monotonic())
                deadline = min(start + self.timeout for _, _, start in busy.values())
                ready = wait([self._conns[i] for i in busy], timeout=max(0.0, deadline - time.monotonic()))
                for i in list(busy):
                    idx, rid, start = busy[i]
                    if self._conns[i] in ready:
                        try:
                            got, ok, err = self._conns[i].recv()
                        except (EOFError, OSError):  # the worker died (e.g. out of memory)
                            results[idx] = Grade(False, error="grader process died", seconds=time.monotonic() - start)
                            self._kill(i)
                        else:
                            if got != rid:
                                raise RuntimeError(f"grading worker answered request {got}, expected {rid}")
                            results[idx] = Grade(bool(ok), error=err, seconds=time.monotonic() - start)
                    elif time.monotonic() - start >= self.timeout:
                        results[idx] = Grade(False, timed_out=True, seconds=time.monotonic() - start)
                        self._kill(i)
                    else:
                        continue
                    del busy[i]
                    self._idle.put(i)
        finally:
            for i in busy:  # interrupted with answers in flight: no later caller may read their replies
                self._kill(i)
                self._idle.put(i)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for i in range(self.n):
            if self._conns[i] is not None:
                try:
                    self._conns[i].send(None)
                except OSError:
                    pass
            if self._procs[i] is not None:
                self._procs[i].join(timeout=2)
                if self._procs[i].is_alive():
                    self._procs[i].kill()
                    self._procs[i].join(timeout=5)
            if self._conns[i] is not None:
                self._conns[i].close()
            self._procs[i] = self._conns[i] = None

    def __enter__(self) -> GradingPool:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grade_all(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    answer_format: str = "boxed",
    workers: int | None = None,
    timeout: float = 10.0,
) -> list[Grade]:
    with GradingPool(workers, timeout) as pool:
        return pool.grade(zip(responses, golds), answer_format)
