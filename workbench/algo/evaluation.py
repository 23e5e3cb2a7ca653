"""Evaluation estimators (docs/algorithm.md section 9)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n - c, k) / C(n, k)``.

    ``n`` samples of which ``c`` are correct, ``1 <= k <= n``. Computed as the stable
    product ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (Chen et al., 2021).
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k must be integers")
    if k < 1 or n < k or not 0 <= c <= n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(n: int, c: int) -> float:
    """avg@k for one problem: the fraction of its ``n`` samples that are correct."""
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    return c / n


def benchmark_scores(correct_counts: Sequence[int], n: int, k: int) -> dict[str, float]:
    """Mean avg@k and pass@k (both in [0, 1]) over problems, each with ``n`` samples."""
    if not correct_counts:
        raise ValueError("no problems to score")
    m = len(correct_counts)
    return {
        "avg_at_k": sum(avg_at_k(n, c) for c in correct_counts) / m,
        "pass_at_k": sum(pass_at_k(n, c, k) for c in correct_counts) / m,
    }


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (AVG over benchmarks)."""
    vals = list(values)
    if not vals:
        raise ValueError("mean of nothing")
    return sum(vals) / len(vals)


def eval_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """docs/algorithm.md section 10's ``eval/...`` names, in percent, of an evaluation result
    (``{"benchmarks": {name: {"avg_at_k", "pass_at_k", ...}}, "avg_at_k", "pass_at_k"}``,
    fractions): the one mapping both backends log."""
    m = {f"eval/{b}/{key}": 100 * r[key] for b, r in result["benchmarks"].items() for key in ("avg_at_k", "pass_at_k")}
    m.update({"eval/avg_at_k": 100 * result["avg_at_k"], "eval/pass_at_k": 100 * result["pass_at_k"]})
    return m
