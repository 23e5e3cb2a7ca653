"""docs/algorithm.md section 6: the phased teacher sampling (PTS) schedule."""

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.algo import pts_active, pts_alpha, pts_teacher_prompts

TOL = 1e-12


@pytest.mark.parametrize(
    "step, total, expected",
    [
        (0, 100, 1.0),  # f < p1: alpha0
        (29, 100, 1.0),
        (30, 100, 1.0),  # f = p1: cos(0) = 1 -> alpha0
        # f = .32: x = .02/.05 = .4, cos(.4 pi) = (sqrt 5 - 1)/4
        (32, 100, 0.1 + 0.9 * (1 + (math.sqrt(5) - 1) / 4) / 2),
        (325, 1000, 0.1 + 0.9 * 0.5),  # x = .5: halfway between alpha0 and alpha1
        (35, 100, 0.0),  # f = p2: no more anchor loss
        (99, 100, 0.0),
    ],
)
def test_alpha_hand_cases_defaults(step, total, expected):
    assert pts_alpha(step, total) == pytest.approx(expected, abs=TOL)


def test_alpha_hand_case_custom_phases_and_levels():
    # p1 .5, p2 .7, alpha0 2, alpha1 .5; f = .6 -> x = .5 -> .5 + 1.5 * .5
    kw = {"phase1_end_frac": 0.5, "phase2_end_frac": 0.7, "alpha0": 2.0, "alpha1": 0.5}
    assert pts_alpha(60, 100, **kw) == pytest.approx(1.25, abs=TOL)
    assert pts_alpha(49, 100, **kw) == pytest.approx(2.0, abs=TOL)
    assert pts_alpha(70, 100, **kw) == 0.0


N = 10**6  # fine progress steps for the limits


def test_alpha_is_continuous_at_phase1_end():
    assert pts_alpha(300_000 - 1, N) == pytest.approx(1.0, abs=TOL)  # left limit
    assert pts_alpha(300_000, N) == pytest.approx(1.0, abs=TOL)
    assert pts_alpha(300_000 + 1, N) == pytest.approx(1.0, abs=1e-8)  # right limit


def test_alpha_tends_to_alpha1_before_phase2_end_then_drops_to_zero():
    assert pts_alpha(350_000 - 1, N) == pytest.approx(0.1, abs=1e-8)
    assert pts_alpha(350_000 - 1, N) >= 0.1
    assert pts_alpha(350_000, N) == 0.0
    assert pts_alpha(N - 1, N) == 0.0


@st.composite
def phases(draw, min_alpha1=0.0):
    p1 = draw(st.floats(0.0, 0.95))
    p2 = draw(st.floats(p1 + 0.01, 1.0))
    alpha1 = draw(st.floats(min_alpha1, 1.0))
    alpha0 = draw(st.floats(alpha1, 2.0))
    return {"phase1_end_frac": p1, "phase2_end_frac": p2, "alpha0": alpha0, "alpha1": alpha1}


@settings(max_examples=60, deadline=None)
@given(kw=phases(), total=st.integers(1, 300))
def test_alpha_is_monotone_non_increasing_and_bounded(kw, total):
    alphas = [pts_alpha(s, total, **kw) for s in range(total)]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(alphas))
    assert all(a == 0.0 or kw["alpha1"] - 1e-12 <= a <= kw["alpha0"] + 1e-12 for a in alphas)
    for s, a in enumerate(alphas):
        f = s / total
        if f < kw["phase1_end_frac"]:
            assert a == kw["alpha0"]
        if f >= kw["phase2_end_frac"]:
            assert a == 0.0


@pytest.mark.parametrize(
    "p1, p2",
    [(0.35, 0.30), (0.3, 0.3), (-0.1, 0.3), (0.3, 1.5), (1.2, 1.5)],
)
def test_invalid_phase_fractions_raise(p1, p2):
    with pytest.raises(ValueError):
        pts_alpha(0, 100, phase1_end_frac=p1, phase2_end_frac=p2)
    with pytest.raises(ValueError):
        pts_active(0, 100, phase1_end_frac=p1, phase2_end_frac=p2)
    with pytest.raises(ValueError):
        pts_teacher_prompts(100, 64, phase1_end_frac=p1, phase2_end_frac=p2)


@pytest.mark.parametrize("step, active", [(0, True), (30, True), (34, True), (35, False), (99, False)])
def test_active_only_before_phase2_end(step, active):
    assert pts_active(step, 100) is active


def test_active_custom_phases():
    kw = {"phase1_end_frac": 0.5, "phase2_end_frac": 0.7}
    assert pts_active(69, 100, **kw)
    assert not pts_active(70, 100, **kw)


@settings(max_examples=40, deadline=None)
@given(kw=phases(min_alpha1=0.01), total=st.integers(1, 200))
def test_no_teacher_sampling_exactly_when_alpha_is_zero(kw, total):
    active = {k: kw[k] for k in ("phase1_end_frac", "phase2_end_frac")}
    for s in range(total):
        assert pts_active(s, total, **active) == (pts_alpha(s, total, **kw) > 0)


def test_teacher_prompts_budget_defaults():
    # rho .125 of 64 prompts = 8 per step, active on steps 0..34 of 100 (f < .35) -> 280.
    assert pts_teacher_prompts(100, 64) == 280


def test_teacher_prompts_budget_custom():
    # rho .25 of 16 = 4 per step, active on steps 0..6 of 10 (f < .7) -> 28.
    assert pts_teacher_prompts(10, 16, teacher_sampling_ratio=0.25, phase1_end_frac=0.5, phase2_end_frac=0.7) == 28
    # doubling rho doubles the budget (pts-50-70-ratio2)
    assert pts_teacher_prompts(100, 64, teacher_sampling_ratio=0.25) == 2 * pts_teacher_prompts(100, 64)
