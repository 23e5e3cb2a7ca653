"""docs/algorithm.md section 9: avg@k, the unbiased pass@k estimator and per-benchmark scores."""

from itertools import combinations
from math import comb

import pytest

from workbench.algo import avg_at_k, benchmark_scores, pass_at_k

TOL = 1e-12


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (8, 3, 2, 1 - 10 / 28),  # 1 - C(5,2)/C(8,2)
        (6, 0, 3, 0.0),  # no correct sample
        (6, 4, 3, 1.0),  # n - c < k: every k-subset holds a correct sample
        (6, 6, 6, 1.0),
        (5, 2, 1, 0.4),
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=TOL)


def brute_force_pass_at_k(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_for_all_small_n():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = brute_force_pass_at_k(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=TOL), (n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=TOL)


def test_pass_at_1_is_fraction_correct():
    for n in range(1, 20):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=TOL)


@pytest.mark.parametrize(
    "n, c, k",
    [(4, 1, 0), (4, 1, -1), (4, 1, 5), (0, 0, 1), (4, 5, 2), (4, -1, 2)],
)
def test_pass_at_k_invalid_arguments_raise(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("n, c, expected", [(8, 3, 0.375), (4, 0, 0.0), (4, 4, 1.0), (1, 1, 1.0)])
def test_avg_at_k_hand_cases(n, c, expected):
    assert avg_at_k(n, c) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("n, c", [(0, 0), (4, 5), (4, -1)])
def test_avg_at_k_invalid_arguments_raise(n, c):
    with pytest.raises(ValueError):
        avg_at_k(n, c)


def test_benchmark_scores_n_equals_k():
    # avg@4: (0 + 1/4 + 2/4 + 4/4) / 4; pass@4: (0 + 1 + 1 + 1) / 4
    scores = benchmark_scores([0, 1, 2, 4], n=4, k=4)
    assert scores["avg_at_k"] == pytest.approx(0.4375, abs=TOL)
    assert scores["pass_at_k"] == pytest.approx(0.75, abs=TOL)


def test_benchmark_scores_n_greater_than_k():
    # pass@2 from n = 4: [0, 1 - 3/6, 1 - 1/6, 1]; avg is the fraction of correct samples.
    scores = benchmark_scores([0, 1, 2, 4], n=4, k=2)
    assert scores["pass_at_k"] == pytest.approx((0 + 0.5 + 5 / 6 + 1) / 4, abs=TOL)
    assert scores["avg_at_k"] == pytest.approx(0.4375, abs=TOL)


def test_benchmark_scores_rejects_empty_and_invalid():
    with pytest.raises(ValueError):
        benchmark_scores([], n=4, k=4)
    with pytest.raises(ValueError):
        benchmark_scores([1, 5], n=4, k=4)
    with pytest.raises(ValueError):
        benchmark_scores([1, 2], n=4, k=5)
