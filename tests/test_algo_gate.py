"""docs/algorithm.md section 3: the token-level sign-consistency gate (``route_advantage``)."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workbench.algo import gopd_advantage, grpo_advantage, opd_advantage, route_advantage
from workbench.registry import UnknownNameError

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}
LB, LH = 1.25, 1.75  # lambda_base, lambda_high of the hand case
NAN, INF = math.nan, math.inf


def t64(values):
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------- the hand case
#
# Three rollouts, A_RL = +1, -0.5, 0; four token slots, padding marked "pad".
#
#  tok     lp_old  lp_T  lp_ref | A_OPD  lp_T-ref  old-ref | A_lam            class
#  r0 t0   -1      -0.5  -1.5   |  0.5    1        0.5     | lam - 0.5        consensus (+,+)
#  r0 t1   -0.5    -1    -0.75  | -0.5   -0.25     0.25    | -0.25 lam - .25  conflict  (+,-)
#  r0 t2   -2      -2    -1     |  0     -1       -1       | -lam + 1         neutral (A_OPD = 0)
#  r0 t3   pad
#  r1 t0   -1      -2    -1     | -1     -1        0       | -lam             consensus (-,-)
#  r1 t1   -2      -1    -3     |  1      2        1       | 2 lam - 1        conflict  (-,+)
#  r1 t2   -0.25   -0.5  -0.5   | -0.25   0        0.25    | -0.25            consensus (-,-)
#  r1 t3   -1      -1.5  -0.5   | -0.5   -1       -0.5     | -lam + 0.5       consensus (-,-)
#  r2 t0   -1      -0.5  -1     |  0.5    0.5      0       | 0.5 lam          neutral (A_RL = 0)
#  r2 t1..t3 pad
#
# 8 valid tokens; 6 of them have A_RL != 0 and A_OPD != 0 (4 consensus, 2 conflict);
# 2 neutral. kl_teacher = mean(lp_old - lp_T) = -(sum A_OPD) / 8 = 0.25 / 8.

A_RL = [1.0, -0.5, 0.0]
MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
LP_OLD = [[-1.0, -0.5, -2.0, 0.0], [-1.0, -2.0, -0.25, -1.0], [-1.0, 0.0, 0.0, 0.0]]
LP_T = [[-0.5, -1.0, -2.0, 0.0], [-2.0, -1.0, -0.5, -1.5], [-0.5, 0.0, 0.0, 0.0]]
LP_REF = [[-1.5, -0.75, -1.0, 0.0], [-1.0, -3.0, -0.5, -0.5], [-1.0, 0.0, 0.0, 0.0]]

CLASSES = [[1, -1, 0, 0], [1, -1, 1, 1], [0, 0, 0, 0]]
CONFLICT_FRAC, CONSENSUS_FRAC, NEUTRAL_FRAC = 2 / 6, 4 / 6, 2 / 8
KL_TEACHER = 0.25 / 8


def a_lam(lam):
    """The G-OPD advantage of every hand-case token (0 on padding)."""
    return [
        [lam - 0.5, -0.25 * lam - 0.25, -lam + 1.0, 0.0],
        [-lam, 2 * lam - 1.0, -0.25, -lam + 0.5],
        [0.5 * lam, 0.0, 0.0, 0.0],
    ]


A_OPD = [[0.5, -0.5, 0.0, 0.0], [-1.0, 1.0, -0.25, -0.5], [0.5, 0.0, 0.0, 0.0]]


def with_conflict(values):
    """Gate-on routing of the hand case, conflict tokens (r0 t1, r1 t1) given explicitly."""
    high, base = a_lam(LH), a_lam(LB)
    return [
        [high[0][0], values[0], base[0][2], 0.0],
        [high[1][0], values[1], high[1][2], high[1][3]],
        [base[2][0], 0.0, 0.0, 0.0],
    ]


@dataclass
class Batch:
    a_rl: torch.Tensor
    lp_old: torch.Tensor
    lp_teacher: torch.Tensor
    lp_ref: torch.Tensor
    mask: torch.Tensor

    def args(self):
        return self.a_rl, self.lp_old, self.lp_teacher, self.lp_ref, self.mask


def hand_batch(pad_value=0.0):
    mask = torch.tensor(MASK)
    lps = [torch.where(mask.bool(), t64(x), torch.tensor(pad_value, dtype=F64)) for x in (LP_OLD, LP_T, LP_REF)]
    return Batch(t64(A_RL), *lps, mask)


def route(batch=None, **kw):
    kw = {"lambda_base": LB, "lambda_high": LH, **kw}
    return route_advantage(*(batch or hand_batch()).args(), **kw)


def test_hand_case_default_interp():
    adv, cls, _ = route(disagree_interp_beta=0.5)
    # interp: beta * A_OPD on conflict tokens -> 0.5 * -0.5 and 0.5 * 1
    torch.testing.assert_close(adv, t64(with_conflict([-0.25, 0.5])), **TOL)
    assert cls.tolist() == CLASSES


def test_hand_case_numbers_written_out():
    # The same routing with every number computed by hand (lb 1.25, lh 1.75, beta .5).
    adv, _, _ = route(disagree_interp_beta=0.5)
    expected = [[1.25, -0.25, -0.25, 0.0], [-1.75, 0.5, -0.25, -1.25], [0.625, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(adv, t64(expected), **TOL)


def test_defaults_are_interp():
    adv_default, _, _ = route(disagree_interp_beta=0.5)
    adv_interp, _, _ = route(disagree_mode="interp", disagree_interp_beta=0.5)
    assert torch.equal(adv_default, adv_interp)


@pytest.mark.parametrize(
    "mode, conflict_values",
    [
        ("preserve", [-0.25 * LB - 0.25, 2 * LB - 1.0]),  # A_{lambda_base}: -0.5625, 1.5
        ("grpo", [1.0, -0.5]),  # A_RL of the rollout
        ("mask", [0.0, 0.0]),
    ],
)
def test_hand_case_fallbacks(mode, conflict_values):
    adv, cls, _ = route(disagree_mode=mode)
    torch.testing.assert_close(adv, t64(with_conflict(conflict_values)), **TOL)
    assert cls.tolist() == CLASSES


@pytest.mark.parametrize("beta, conflict_values", [(1.0, [-0.5, 1.0]), (0.25, [-0.125, 0.25]), (0.0, [0.0, 0.0])])
def test_hand_case_interp_beta(beta, conflict_values):
    adv, _, _ = route(disagree_mode="interp", disagree_interp_beta=beta)
    torch.testing.assert_close(adv, t64(with_conflict(conflict_values)), **TOL)


def test_hand_case_metrics():
    _, _, metrics = route()
    assert metrics["conflict_frac"] == pytest.approx(CONFLICT_FRAC, abs=1e-12)
    assert metrics["consensus_frac"] == pytest.approx(CONSENSUS_FRAC, abs=1e-12)
    assert metrics["neutral_frac"] == pytest.approx(NEUTRAL_FRAC, abs=1e-12)
    assert metrics["kl_teacher"] == pytest.approx(KL_TEACHER, abs=1e-12)


@pytest.mark.parametrize("variant", [{"sign_gate": False}, {"gate_all_tokens_as": "conflict"}, {"gate_levels": 4}])
def test_metrics_and_classes_do_not_depend_on_routing(variant):
    # The class is the sign classification whatever the routing (OPD runs log it too).
    _, cls, metrics = route(**variant)
    assert cls.tolist() == CLASSES
    assert metrics["conflict_frac"] == pytest.approx(CONFLICT_FRAC, abs=1e-12)
    assert metrics["consensus_frac"] == pytest.approx(CONSENSUS_FRAC, abs=1e-12)
    assert metrics["neutral_frac"] == pytest.approx(NEUTRAL_FRAC, abs=1e-12)


def test_gate_off_is_uniform_gopd():
    adv, _, _ = route(sign_gate=False, disagree_mode="mask")
    torch.testing.assert_close(adv, t64(a_lam(LB)), **TOL)


def test_gate_off_with_lambda_base_1_is_opd():
    adv, _, _ = route(sign_gate=False, lambda_base=1.0)
    torch.testing.assert_close(adv, t64(A_OPD), **TOL)


def test_gate_all_tokens_as_conflict_interp():
    # Every valid token, whatever its class, gets beta * A_OPD.
    adv, _, _ = route(gate_all_tokens_as="conflict", disagree_mode="interp", disagree_interp_beta=0.5)
    torch.testing.assert_close(adv, 0.5 * t64(A_OPD), **TOL)


def test_gate_all_tokens_as_conflict_grpo():
    adv, _, _ = route(gate_all_tokens_as="conflict", disagree_mode="grpo")
    expected = torch.where(torch.tensor(MASK).bool(), t64(A_RL)[:, None].expand(3, 4), torch.zeros((), dtype=F64))
    torch.testing.assert_close(adv, expected, **TOL)


def test_gate_levels_4_distinct_cell_factors():
    # (+,+) lam 1.5, (-,-) lam 2.0, (+,-) beta 0.25, (-,+) beta 0.75; neutral stays A_lb.
    adv, cls, _ = route(
        gate_levels=4,
        cell_lambda_pos_pos=1.5,
        cell_lambda_neg_neg=2.0,
        cell_beta_pos_neg=0.25,
        cell_beta_neg_pos=0.75,
    )
    expected = [
        [1.5 - 0.5, 0.25 * -0.5, -LB + 1.0, 0.0],  # (+,+), (+,-), neutral
        [-2.0, 0.75 * 1.0, -0.25, -2.0 + 0.5],  # (-,-), (-,+), (-,-), (-,-)
        [0.5 * LB, 0.0, 0.0, 0.0],  # neutral
    ]
    torch.testing.assert_close(adv, t64(expected), **TOL)
    assert cls.tolist() == CLASSES


# ---------------------------------------------------------------- neutral routing
#
# docs/algorithm.md section 11: neutral tokens (r0 t2: A_OPD = 0; r2 t0: A_RL = 0) get
# A_{lambda_base} by default; the other readings give them A_{lambda_high}, A_OPD or 0.
# Nothing else moves.

NEUTRAL_TOKENS = ((0, 2), (2, 0))


@pytest.mark.parametrize(
    "mode, neutral_values",
    [
        ("base", [-LB + 1.0, 0.5 * LB]),
        ("consensus", [-LH + 1.0, 0.5 * LH]),
        ("opd", [0.0, 0.5]),
        ("mask", [0.0, 0.0]),
    ],
)
@pytest.mark.parametrize("levels", [2, 4])
def test_hand_case_neutral_modes(mode, neutral_values, levels):
    adv, cls, metrics = route(disagree_interp_beta=0.5, neutral_mode=mode, gate_levels=levels)
    expected = with_conflict([-0.25, 0.5])  # the four-cell probe with unset cells is the binary gate
    for (i, j), v in zip(NEUTRAL_TOKENS, neutral_values):
        expected[i][j] = v
    torch.testing.assert_close(adv, t64(expected), **TOL)
    assert cls.tolist() == CLASSES
    assert metrics["neutral_frac"] == pytest.approx(NEUTRAL_FRAC, abs=1e-12)


def test_neutral_mode_base_is_the_default_bit_for_bit():
    assert torch.equal(route()[0], route(neutral_mode="base")[0])


@pytest.mark.parametrize("variant", [{"sign_gate": False}, {"gate_all_tokens_as": "conflict"}])
def test_neutral_mode_is_unused_with_the_gate_off(variant):
    assert torch.equal(route(**variant)[0], route(**variant, neutral_mode="mask")[0])


def test_unknown_neutral_mode_lists_valid_names():
    with pytest.raises(ValueError) as info:
        route(neutral_mode="zero")
    for name in ("base", "consensus", "opd", "mask"):
        assert name in str(info.value)


def test_token_class_values():
    _, cls, _ = route()
    assert set(torch.unique(cls).tolist()) <= {-1, 0, 1}
    assert not cls.is_floating_point()


def test_outputs_are_detached():
    b = hand_batch()
    b = Batch(*(x.requires_grad_(True) if x.is_floating_point() else x for x in b.args()))
    adv, _, _ = route(b)
    assert not adv.requires_grad


@pytest.mark.parametrize("pad_value", [NAN, INF, -INF, 1e30])
@pytest.mark.parametrize("variant", [{}, {"disagree_mode": "grpo"}, {"sign_gate": False}, {"gate_levels": 4}])
def test_padding_garbage_does_not_leak(pad_value, variant):
    clean_adv, clean_cls, clean_metrics = route(hand_batch(0.0), **variant)
    adv, cls, metrics = route(hand_batch(pad_value), **variant)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv, clean_adv)
    assert torch.equal(cls, clean_cls)
    assert metrics == pytest.approx(clean_metrics, abs=1e-12)
    pad = ~torch.tensor(MASK).bool()
    assert torch.equal(adv[pad], torch.zeros_like(adv[pad]))


def test_fully_padded_rollout_with_nan_reward_signal():
    # A fourth rollout that is all padding, with NaN everywhere, including its A_RL.
    b = hand_batch(NAN)

    def add_row(x, value):
        return torch.cat([x, torch.full((1, *x.shape[1:]), value, dtype=x.dtype)])

    b = Batch(add_row(b.a_rl, NAN), *(add_row(x, NAN) for x in (b.lp_old, b.lp_teacher, b.lp_ref)), add_row(b.mask, 0))
    adv, cls, metrics = route(b, disagree_mode="grpo")
    clean_adv, clean_cls, clean_metrics = route(disagree_mode="grpo")
    assert torch.equal(adv[:3], clean_adv)
    assert torch.equal(adv[3], torch.zeros(4, dtype=F64))
    assert torch.equal(cls[:3], clean_cls)
    assert set(torch.unique(cls).tolist()) <= {-1, 0, 1}
    assert metrics == pytest.approx(clean_metrics, abs=1e-12)


def test_equal_reward_group_routes_as_neutral():
    # End to end with docs/algorithm.md section 2: a group whose rewards are all equal has no verifier signal,
    # so all its tokens are neutral and get A_{lambda_base}.
    rewards = torch.full((7,), 0.1, dtype=torch.float32)
    a_rl = grpo_advantage(rewards, torch.zeros(7, dtype=torch.long))
    lp_old = torch.full((7, 2), -1.0)
    lp_teacher = torch.tensor([[-0.5, -2.0]]).expand(7, 2)
    adv, cls, metrics = route_advantage(a_rl, lp_old, lp_teacher, lp_old, torch.ones(7, 2), lambda_base=LB, lambda_high=LH)
    assert torch.equal(cls, torch.zeros(7, 2, dtype=cls.dtype)), cls
    torch.testing.assert_close(adv, gopd_advantage(lp_old, lp_teacher, lp_old, LB))
    assert metrics["neutral_frac"] == 1.0


@pytest.mark.parametrize("mode", ["bogus", "Interp", ""])
def test_unknown_fallback_lists_valid_names(mode):
    with pytest.raises(UnknownNameError) as info:
        route(disagree_mode=mode)
    for name in ("interp", "preserve", "grpo", "mask"):
        assert name in str(info.value)


# ---------------------------------------------------------------- properties

LP = st.one_of(st.sampled_from([-2.0, -1.0, -0.5, 0.0]), st.floats(-4.0, 0.0))
ARL = st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), st.floats(-2.0, 2.0))


@st.composite
def batches(draw):
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 4))

    def arr(elements, shape):
        return torch.from_numpy(draw(hnp.arrays(np.float64, shape, elements=elements)))

    return Batch(
        arr(ARL, (b,)),
        arr(LP, (b, t)),
        arr(LP, (b, t)),
        arr(LP, (b, t)),
        torch.from_numpy(draw(hnp.arrays(np.bool_, (b, t)))),
    )


def signals(batch):
    a_opd = opd_advantage(batch.lp_old, batch.lp_teacher)
    s = torch.sign(batch.a_rl)[:, None] * torch.sign(a_opd)
    return a_opd, s, batch.mask


PROPERTY = settings(max_examples=50, deadline=None)
LAMS = st.floats(0.5, 2.5)


@PROPERTY
@given(batch=batches(), lb=LAMS, lh=LAMS, beta=st.floats(0.0, 1.0), mode=st.sampled_from(["interp", "preserve", "grpo", "mask"]))
def test_routing_by_class(batch, lb, lh, beta, mode):
    adv, cls, metrics = route_advantage(
        *batch.args(), lambda_base=lb, lambda_high=lh, disagree_mode=mode, disagree_interp_beta=beta
    )
    a_opd, s, m = signals(batch)
    a_base = gopd_advantage(batch.lp_old, batch.lp_teacher, batch.lp_ref, lb)
    a_high = gopd_advantage(batch.lp_old, batch.lp_teacher, batch.lp_ref, lh)
    consensus, conflict, neutral = m & (s > 0), m & (s < 0), m & (s == 0)
    torch.testing.assert_close(adv[consensus], a_high[consensus], **TOL)
    torch.testing.assert_close(adv[neutral], a_base[neutral], **TOL)
    fallback = {
        "interp": beta * a_opd,
        "preserve": a_base,
        "grpo": batch.a_rl[:, None].expand_as(a_opd),
        "mask": torch.zeros_like(a_opd),
    }[mode]
    torch.testing.assert_close(adv[conflict], fallback[conflict], **TOL)
    assert torch.equal(cls[m].to(torch.int64), s[m].to(torch.int64))

    signed = m & (batch.a_rl[:, None] != 0) & (a_opd != 0)
    n_signed, n_valid = int(signed.sum()), int(m.sum())
    if n_signed:
        assert metrics["conflict_frac"] == pytest.approx(int(conflict.sum()) / n_signed, abs=1e-12)
        assert metrics["consensus_frac"] == pytest.approx(int(consensus.sum()) / n_signed, abs=1e-12)
    if n_valid:
        assert metrics["neutral_frac"] == pytest.approx(int(neutral.sum()) / n_valid, abs=1e-12)
        kl = float((batch.lp_old - batch.lp_teacher)[m].mean())
        assert metrics["kl_teacher"] == pytest.approx(kl, abs=1e-12)


@PROPERTY
@given(
    batch=batches(),
    lb=LAMS,
    lh=LAMS,
    mode=st.sampled_from(["interp", "preserve", "grpo", "mask"]),
    neutral=st.sampled_from(["consensus", "opd", "mask"]),
    levels=st.sampled_from([2, 4]),
)
def test_neutral_mode_changes_only_neutral_tokens(batch, lb, lh, mode, neutral, levels):
    kw = {"lambda_base": lb, "lambda_high": lh, "disagree_mode": mode, "gate_levels": levels}
    base, cls, metrics = route_advantage(*batch.args(), **kw)
    adv, cls_n, metrics_n = route_advantage(*batch.args(), **kw, neutral_mode=neutral)
    a_opd, s, m = signals(batch)
    expected = {
        "consensus": gopd_advantage(batch.lp_old, batch.lp_teacher, batch.lp_ref, lh),
        "opd": a_opd,
        "mask": torch.zeros_like(a_opd),
    }[neutral]
    neutral_tokens = m & (s == 0)
    torch.testing.assert_close(adv[neutral_tokens], expected[neutral_tokens], **TOL)
    assert torch.equal(adv[~neutral_tokens], base[~neutral_tokens])  # padding stays 0 too
    assert torch.equal(cls_n, cls)
    assert {k: metrics_n[k] for k in ("conflict_frac", "consensus_frac", "neutral_frac", "kl_teacher")} == {
        k: metrics[k] for k in ("conflict_frac", "consensus_frac", "neutral_frac", "kl_teacher")
    }


@PROPERTY
@given(batch=batches(), lb=LAMS, lh=LAMS)
def test_gate_off_equals_uniform_gopd_property(batch, lb, lh):
    adv, _, _ = route_advantage(*batch.args(), sign_gate=False, lambda_base=lb, lambda_high=lh)
    a_base = gopd_advantage(batch.lp_old, batch.lp_teacher, batch.lp_ref, lb)
    m = batch.mask
    torch.testing.assert_close(adv[m], a_base[m], **TOL)


@PROPERTY
@given(batch=batches(), lb=LAMS, lh=LAMS)
def test_interp_beta_1_keeps_opd_and_beta_0_masks_conflict(batch, lb, lh):
    a_opd, s, m = signals(batch)
    conflict = m & (s < 0)
    keep, _, _ = route_advantage(*batch.args(), lambda_base=lb, lambda_high=lh, disagree_interp_beta=1.0)
    drop, _, _ = route_advantage(*batch.args(), lambda_base=lb, lambda_high=lh, disagree_interp_beta=0.0)
    torch.testing.assert_close(keep[conflict], a_opd[conflict], **TOL)
    assert torch.equal(drop[conflict], torch.zeros_like(drop[conflict]))
    # Outside conflict tokens beta changes nothing.
    torch.testing.assert_close(keep[m & (s >= 0)], drop[m & (s >= 0)], **TOL)
