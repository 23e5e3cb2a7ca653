"""docs/algorithm.md section 2: the outcome (GRPO), OPD and G-OPD advantage signals.

Expected numbers are worked out by hand in the comments; comparisons are float64 with
an explicit tolerance.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workbench.algo import gopd_advantage, grpo_advantage, opd_advantage

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}
EPS = 1e-6  # docs/algorithm.md default


def t64(values):
    return torch.tensor(values, dtype=F64)


def groups(values):
    return torch.tensor(values, dtype=torch.long)


# ---------------------------------------------------------------- grpo_advantage

# Interleaved, non-contiguous labels and unequal group sizes:
#   label 5: rewards 1,0,0,0 -> mean 0.25, devs .75,-.25,-.25,-.25, sum sq .75,
#            unbiased var .75/3 = .25, std .5 (the biased std would be sqrt(.1875))
#   label 2: rewards 1,0     -> mean .5, devs +-.5, unbiased var .5, std sqrt(.5)
#   label 9: rewards 1,1,1   -> all equal -> exactly 0
#   label 0: reward 1 alone  -> single rollout -> 0
MIXED_IDS = [5, 2, 5, 9, 5, 2, 0, 5, 9, 9]
MIXED_REWARDS = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def mixed_expected(eps):
    s5, s2 = 0.5 + eps, math.sqrt(0.5) + eps
    return [0.75 / s5, 0.5 / s2, -0.25 / s5, 0.0, -0.25 / s5, -0.5 / s2, 0.0, -0.25 / s5, 0.0, 0.0]


def test_grpo_hand_case_unbiased_std_default_eps():
    adv = grpo_advantage(t64(MIXED_REWARDS), groups(MIXED_IDS))
    torch.testing.assert_close(adv, t64(mixed_expected(EPS)), **TOL)


def test_grpo_default_eps_is_1e_minus_6():
    # eps = 0 would differ by about 2e-6 relative on label 5; the tolerance sees it.
    adv = grpo_advantage(t64(MIXED_REWARDS), groups(MIXED_IDS))
    assert not torch.allclose(adv, t64(mixed_expected(0.0)), rtol=0.0, atol=1e-9)


def test_grpo_explicit_eps():
    adv = grpo_advantage(t64(MIXED_REWARDS), groups(MIXED_IDS), eps=0.5)
    torch.testing.assert_close(adv, t64(mixed_expected(0.5)), **TOL)


def test_grpo_real_valued_rewards():
    # rewards 2, 4, 9: mean 5, devs -3,-1,4, sum sq 26, unbiased var 13.
    adv = grpo_advantage(t64([2.0, 4.0, 9.0]), groups([3, 3, 3]))
    s = math.sqrt(13.0) + EPS
    torch.testing.assert_close(adv, t64([-3 / s, -1 / s, 4 / s]), **TOL)


def test_grpo_labels_are_names_not_positions():
    # Relabelling the groups (any integers, any order) changes nothing.
    a = grpo_advantage(t64(MIXED_REWARDS), groups(MIXED_IDS))
    relabel = {5: 0, 2: 1, 9: 2, 0: 3}
    b = grpo_advantage(t64(MIXED_REWARDS), groups([relabel[g] for g in MIXED_IDS]))
    torch.testing.assert_close(a, b, **TOL)


def test_grpo_single_rollout_group_is_zero():
    adv = grpo_advantage(t64([1.0, 0.0, 1.0]), groups([0, 1, 2]))
    assert torch.equal(adv, torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("size", [2, 3, 5, 7])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 0.7])
def test_grpo_all_equal_group_is_exactly_zero(value, size, dtype):
    # docs/algorithm.md section 2: "A group whose rewards are all equal gives A_RL = 0 (no verifier signal)".
    # A tiny rounding residue in the group mean must not be amplified into a signal
    # (it would also flip the token classes of the gate from neutral to signed).
    rewards = torch.full((size,), value, dtype=dtype)
    adv = grpo_advantage(rewards, groups([4] * size))
    assert torch.equal(adv, torch.zeros(size, dtype=dtype)), adv


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(-10.0, 10.0, allow_nan=False),
    size=st.integers(1, 8),
    other=hnp.arrays(np.float64, st.integers(0, 4), elements=st.sampled_from([0.0, 1.0])),
)
def test_grpo_all_equal_group_is_zero_property(value, size, other):
    rewards = torch.cat([torch.full((size,), value, dtype=F64), torch.from_numpy(other)])
    ids = groups([7] * size + [1] * len(other))
    adv = grpo_advantage(rewards, ids)
    assert torch.equal(adv[:size], torch.zeros(size, dtype=F64)), adv


@settings(max_examples=60, deadline=None)
@given(rewards=hnp.arrays(np.float64, st.integers(2, 8), elements=st.sampled_from([0.0, 1.0])))
def test_grpo_binary_group_is_standardised(rewards):
    r = torch.from_numpy(rewards)
    adv = grpo_advantage(r, groups([0] * len(r)))
    if r.min() == r.max():
        assert torch.equal(adv, torch.zeros_like(r))
    else:
        expected = (r - r.mean()) / (r.std(unbiased=True) + EPS)
        torch.testing.assert_close(adv, expected, rtol=0.0, atol=1e-12)
        # Correct rollouts get positive advantage, incorrect ones negative.
        assert torch.equal(torch.sign(adv), torch.where(r > r.mean(), 1.0, -1.0).to(F64))


def test_grpo_is_detached():
    r = t64([1.0, 0.0, 1.0]).requires_grad_(True)
    assert not grpo_advantage(r, groups([0, 0, 0])).requires_grad


# ---------------------------------------------------------------- opd / gopd

LP_OLD = [[-1.0, -0.5, -2.0], [-0.25, -3.0, 0.0]]
LP_T = [[-0.5, -1.0, -2.0], [-0.5, -1.0, -0.5]]
LP_REF = [[-1.5, -0.75, -1.0], [-0.5, -2.0, -0.25]]


def test_opd_hand_case():
    # A_OPD = lp_T - lp_old
    adv = opd_advantage(t64(LP_OLD), t64(LP_T))
    torch.testing.assert_close(adv, t64([[0.5, -0.5, 0.0], [-0.25, 2.0, -0.5]]), **TOL)


def test_gopd_hand_case():
    # A_lam = lam (lp_T - lp_ref) - (lp_old - lp_ref), lam = 1.5
    #   lp_T - lp_ref  = [[1, -.25, -1], [0, 1, -.25]]
    #   lp_old - lp_ref = [[.5, .25, -1], [.25, -1, .25]]
    adv = gopd_advantage(t64(LP_OLD), t64(LP_T), t64(LP_REF), 1.5)
    expected = [[1.5 - 0.5, -0.375 - 0.25, -1.5 + 1.0], [0.0 - 0.25, 1.5 + 1.0, -0.375 - 0.25]]
    torch.testing.assert_close(adv, t64(expected), **TOL)


def test_advantages_are_detached():
    old, t, ref = (t64(x).requires_grad_(True) for x in (LP_OLD, LP_T, LP_REF))
    assert not opd_advantage(old, t).requires_grad
    assert not gopd_advantage(old, t, ref, 1.25).requires_grad


LOGPROBS = hnp.arrays(np.float64, (3, 4), elements=st.floats(-8.0, 0.0))


@settings(max_examples=60, deadline=None)
@given(old=LOGPROBS, teacher=LOGPROBS, ref=LOGPROBS)
def test_gopd_with_lam_1_is_opd(old, teacher, ref):
    old, teacher, ref = (torch.from_numpy(x) for x in (old, teacher, ref))
    torch.testing.assert_close(gopd_advantage(old, teacher, ref, 1.0), opd_advantage(old, teacher), rtol=0.0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(old=LOGPROBS, teacher=LOGPROBS, ref=LOGPROBS, lam=st.floats(0.0, 3.0))
def test_gopd_extrapolates_linearly_in_lam(old, teacher, ref, lam):
    # A_lam - A_1 = (lam - 1) (lp_T - lp_ref): ExOPD moves past the teacher by that much.
    old, teacher, ref = (torch.from_numpy(x) for x in (old, teacher, ref))
    diff = gopd_advantage(old, teacher, ref, lam) - opd_advantage(old, teacher)
    torch.testing.assert_close(diff, (lam - 1.0) * (teacher - ref), rtol=0.0, atol=1e-11)
