"""docs/algorithm.md sections 5-7: PPO-clip token loss, NLL / PTS anchor loss, generalized JSD."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workbench.algo import generalized_jsd_loss, nll_loss, ppo_clip_loss, pts_anchor_loss

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}
NAN, INF = math.nan, math.inf
GARBAGE = [NAN, INF, -INF, 1e30]


def t64(values):
    return torch.tensor(values, dtype=F64)


def padded(values, mask, pad_value):
    return torch.where(mask.bool(), t64(values), torch.tensor(pad_value, dtype=F64))


# ---------------------------------------------------------------- ppo_clip_loss
#
# 2x3 batch, 4 valid tokens (r1 t1, r1 t2 padded), lp_old = 0 so ratio = exp(lp_new):
#   tok    ratio  A   w    unclipped  clipped(0.8..1.2)  min    w*min  active   d(w*min)/d lp_new
#   r0 t0  1.1    2   1    2.2        2.2                2.2    2.2    -        w ratio A = 2.2
#   r0 t1  1.5    1   2    1.5        1.2                1.2    2.4    clipped  0
#   r0 t2  0.5   -1   .5  -0.5       -0.8               -0.8   -0.4    clipped  0
#   r1 t0  1.5   -1   1   -1.5       -1.2               -1.5   -1.5    -        w ratio A = -1.5
# L = -(2.2 + 2.4 - 0.4 - 1.5) / 4 = -0.675; dL/dlp_new = -[2.2, 0, 0, -1.5] / 4; clipfrac 2/4.

PPO_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
RATIO = [[1.1, 1.5, 0.5], [1.5, 1.0, 1.0]]
PPO_ADV = [[2.0, 1.0, -1.0], [-1.0, 0.0, 0.0]]
PPO_W = [[1.0, 2.0, 0.5], [1.0, 0.0, 0.0]]
PPO_LOSS = -0.675
PPO_GRAD = [[-0.55, 0.0, 0.0], [0.375, 0.0, 0.0]]


def ppo_inputs(pad_value=0.0):
    lp_new = padded(np.log(RATIO).tolist(), PPO_MASK, pad_value).requires_grad_(True)
    lp_old = padded([[0.0] * 3] * 2, PPO_MASK, pad_value)
    return lp_new, lp_old, padded(PPO_ADV, PPO_MASK, pad_value), padded(PPO_W, PPO_MASK, pad_value)


def test_ppo_hand_case_value_gradient_clipfrac():
    lp_new, lp_old, adv, w = ppo_inputs()
    loss, metrics = ppo_clip_loss(lp_new, lp_old, adv, w, PPO_MASK)
    loss.backward()
    assert loss.item() == pytest.approx(PPO_LOSS, abs=1e-12)
    torch.testing.assert_close(lp_new.grad, t64(PPO_GRAD), **TOL)
    assert metrics["clipfrac"] == pytest.approx(0.5, abs=1e-12)


def test_ppo_default_eps_is_0_2():
    # ratio 1.15 with A > 0 is inside 1 + 0.2; ratio 1.25 is outside.
    mask = torch.ones(1, 2)
    lp_new = torch.log(t64([[1.15, 1.25]])).requires_grad_(True)
    loss, _ = ppo_clip_loss(lp_new, torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64), mask)
    loss.backward()
    torch.testing.assert_close(lp_new.grad, t64([[-1.15 / 2, 0.0]]), **TOL)


@pytest.mark.parametrize("pad_value", GARBAGE)
def test_ppo_padding_contributes_nothing(pad_value):
    lp_new, lp_old, adv, w = ppo_inputs(pad_value)
    loss, metrics = ppo_clip_loss(lp_new, lp_old, adv, w, PPO_MASK)
    loss.backward()
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(PPO_LOSS, abs=1e-12)
    assert torch.isfinite(lp_new.grad).all()
    torch.testing.assert_close(lp_new.grad, t64(PPO_GRAD), **TOL)
    pad = ~PPO_MASK.bool()
    assert torch.equal(lp_new.grad[pad], torch.zeros_like(lp_new.grad[pad]))
    assert metrics["clipfrac"] == pytest.approx(0.5, abs=1e-12)


# Asymmetric bounds: a ratio of 1.25 is inside [0.9, 1.3] but would be clipped by 1.1,
# a ratio of 0.85 is outside it but would be inside 0.7.
EPS_LOW, EPS_HIGH = 0.1, 0.3
D = 1e-6
HI, LO = 1.0 + EPS_HIGH, 1.0 - EPS_LOW


@pytest.mark.parametrize(
    "ratio, adv, clipped",
    [
        (HI + D, 1.0, True),  # above 1 + eps_high, A > 0: clipped
        (HI - D, 1.0, False),
        (LO - D, 1.0, False),  # below 1 - eps_low, A > 0: the unclipped term is the min
        (LO + D, 1.0, False),
        (LO - D, -1.0, True),  # below 1 - eps_low, A < 0: clipped
        (LO + D, -1.0, False),
        (HI + D, -1.0, False),  # above 1 + eps_high, A < 0: the unclipped term is the min
        (HI - D, -1.0, False),
        (1.25, 1.0, False),
        (0.85, -1.0, True),
    ],
)
def test_ppo_clips_exactly_at_asymmetric_bounds(ratio, adv, clipped):
    lp_new = torch.log(t64([[ratio]])).requires_grad_(True)
    ones = torch.ones(1, 1, dtype=F64)
    loss, metrics = ppo_clip_loss(
        lp_new, torch.zeros(1, 1, dtype=F64), adv * ones, ones, ones, eps_low=EPS_LOW, eps_high=EPS_HIGH
    )
    loss.backward()
    if clipped:
        bound = HI if adv > 0 else LO
        assert loss.item() == pytest.approx(-bound * adv, abs=1e-12)
        assert float(lp_new.grad) == 0.0
        assert metrics["clipfrac"] == 1.0
    else:
        assert loss.item() == pytest.approx(-ratio * adv, abs=1e-12)
        assert float(lp_new.grad) == pytest.approx(-ratio * adv, abs=1e-12)
        assert float(lp_new.grad) != 0.0
        assert metrics["clipfrac"] == 0.0


@st.composite
def ppo_batches(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))

    def arr(lo, hi):
        return draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi)))

    mask = draw(hnp.arrays(np.bool_, shape))
    return arr(-3.0, 0.0), arr(-3.0, 0.0), arr(-2.0, 2.0), arr(0.0, 2.0), mask


@settings(max_examples=60, deadline=None)
@given(batch=ppo_batches(), eps_low=st.floats(0.05, 0.5), eps_high=st.floats(0.05, 0.5))
def test_ppo_matches_a_token_by_token_reference(batch, eps_low, eps_high):
    lp_new, lp_old, adv, w, mask = batch
    # Reference, one token at a time in plain Python.
    terms, grads, clipped = [], np.zeros_like(lp_new), 0
    valid = list(zip(*np.nonzero(mask)))
    for i in valid:
        r = math.exp(lp_new[i] - lp_old[i])
        unclipped, clip_term = r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i]
        terms.append(w[i] * min(unclipped, clip_term))
        clipped += clip_term < unclipped
        if unclipped <= clip_term:
            grads[i] = -w[i] * r * adv[i]
    n = max(len(valid), 1)
    lp_new_t = torch.from_numpy(lp_new).requires_grad_(True)
    loss, metrics = ppo_clip_loss(
        lp_new_t, *(torch.from_numpy(x) for x in (lp_old, adv, w, mask)), eps_low=eps_low, eps_high=eps_high
    )
    loss.backward()
    assert loss.item() == pytest.approx(-sum(terms) / n, abs=1e-12)
    torch.testing.assert_close(lp_new_t.grad, torch.from_numpy(grads / n), rtol=0.0, atol=1e-12)
    assert metrics["clipfrac"] == pytest.approx(clipped / n, abs=1e-12)


def test_ppo_gradient_only_through_lp_new():
    lp_new, lp_old, adv, w = ppo_inputs()
    for x in (lp_old, adv, w):
        x.requires_grad_(True)
    loss, _ = ppo_clip_loss(lp_new, lp_old, adv, w, PPO_MASK)
    loss.backward()
    for x in (lp_old, adv, w):
        assert x.grad is None or torch.equal(x.grad, torch.zeros_like(x.grad))


# ---------------------------------------------------------------- paper-parity switches
#
# docs/algorithm.md sections 5 and 11: the G-OPD fork's loss is dual-clip PPO (clip_ratio_c 3)
# with seq-mean-token-mean aggregation; the defaults (no dual clip, token mean) must be the
# loss as it was before the switches existed, bit for bit.


def _ppo_before_the_switches(lp_new, lp_old, adv, weight, mask, *, eps_low=0.2, eps_high=0.2):
    """A verbatim copy of ppo_clip_loss before clip_ratio_c and loss_agg_mode existed."""
    from workbench.algo.masked import safe, token_mean, valid

    m = valid(mask)
    lp_new = safe(lp_new, m)
    lp_old, adv, weight = (safe(x.detach(), m) for x in (lp_old, adv, weight))
    log_ratio = lp_new - lp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -token_mean(weight * torch.minimum(unclipped, clipped), m)
    with torch.no_grad():
        metrics = {
            "clipfrac": float(token_mean((clipped < unclipped).to(adv.dtype), m)),
            "ratio_mean": float(token_mean(ratio, m)),
            "approx_kl": float(token_mean(-log_ratio, m)),
        }
    return loss, metrics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("explicit", [False, True])
def test_ppo_defaults_are_bit_identical_to_the_loss_before_the_switches(seed, dtype, explicit):
    g = torch.Generator().manual_seed(seed)
    shape = (6, 11)
    lp_old = -torch.rand(shape, generator=g, dtype=dtype) * 3
    lp_new0 = lp_old + torch.randn(shape, generator=g, dtype=dtype) * 0.5  # ratios well past both clips
    adv = torch.randn(shape, generator=g, dtype=dtype)
    w = torch.rand(shape, generator=g, dtype=dtype) * 2
    mask = torch.rand(shape, generator=g) < 0.8
    kw = {"clip_ratio_c": None, "loss_agg_mode": "token-mean"} if explicit else {}
    runs = []
    for fn, extra in ((ppo_clip_loss, kw), (_ppo_before_the_switches, {})):
        lp_new = lp_new0.clone().requires_grad_(True)
        loss, metrics = fn(lp_new, lp_old, adv, w, mask, eps_low=0.15, eps_high=0.25, **extra)
        loss.backward()
        runs.append((loss.detach(), lp_new.grad, metrics))
    (loss, grad, metrics), (old_loss, old_grad, old_metrics) = runs
    assert torch.equal(loss, old_loss) and torch.equal(grad, old_grad)
    assert {k: metrics[k] for k in old_metrics} == old_metrics
    assert metrics["clipfrac_lower"] == 0.0


def one_token(ratio, adv, **kw):
    lp_new = torch.log(t64([[ratio]])).requires_grad_(True)
    loss, metrics = ppo_clip_loss(lp_new, t64([[0.0]]), t64([[adv]]), t64([[1.0]]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), float(lp_new.grad), metrics


@pytest.mark.parametrize("adv", [-1.0, -0.5, -2.0])
def test_dual_clip_caps_a_negative_advantage_token_at_c(adv):
    # ratio 5, A < 0: the plain clip's loss is -A * 5 (the unclipped term is the minimum);
    # the dual clip caps it at -A * 3, where the gradient is 0.
    assert one_token(5.0, adv)[:2] == pytest.approx((-adv * 5.0, -adv * 5.0), abs=1e-12)
    loss, grad, metrics = one_token(5.0, adv, clip_ratio_c=3.0)
    assert loss == pytest.approx(-adv * 3.0, abs=1e-12)
    assert grad == 0.0
    assert (metrics["clipfrac"], metrics["clipfrac_lower"]) == (0.0, 1.0)


@pytest.mark.parametrize("ratio, adv", [(5.0, 1.0), (0.5, 1.0), (2.0, -1.0), (1.0, -1.0), (0.1, -1.0), (5.0, 0.0)])
def test_dual_clip_leaves_every_other_token_alone(ratio, adv):
    # A >= 0 at any ratio, and A < 0 at a ratio below c: the plain clip's value and gradient.
    assert one_token(ratio, adv, clip_ratio_c=3.0) == one_token(ratio, adv)


def test_dual_clip_hand_case():
    # The 2x3 hand case with c = 1.3: only r1 t0 (ratio 1.5, A = -1) changes, from -1.5 to
    # max(-1.5, 1.3 * -1) = -1.3 (w 1), with gradient 0 there. L = -(2.2 + 2.4 - 0.4 - 1.3) / 4.
    # clipfrac keeps its meaning (the plain clip: r0 t1, r0 t2); clipfrac_lower counts r1 t0.
    lp_new, lp_old, adv, w = ppo_inputs()
    loss, metrics = ppo_clip_loss(lp_new, lp_old, adv, w, PPO_MASK, clip_ratio_c=1.3)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.2 + 2.4 - 0.4 - 1.3) / 4, abs=1e-12)
    torch.testing.assert_close(lp_new.grad, t64([[-0.55, 0.0, 0.0], [0.0, 0.0, 0.0]]), **TOL)
    assert (metrics["clipfrac"], metrics["clipfrac_lower"]) == (0.5, 0.25)


# Two sequences of 1 and 3 tokens and one without a valid token (garbage there), ratio 1, w 1:
# the objective is A. token-mean: (2 + 1 + 1 + 1) / 4 = 1.25; seq-mean-token-mean:
# (2 / 1 + 3 / 3) / 2 = 1.5 (the empty row counts in neither). Gradients at ratio 1:
# token-mean -A / 4 per token; seq-mean-token-mean -A / (2 n_i).
SEQ_MASK = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
SEQ_ADV = [[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("pad_value", [0.0, *GARBAGE])
@pytest.mark.parametrize(
    "mode, value, grad",
    [
        ("token-mean", -1.25, [[-0.5, 0, 0], [-0.25, -0.25, -0.25], [0, 0, 0]]),
        ("seq-mean-token-mean", -1.5, [[-1.0, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [0, 0, 0]]),
    ],
)
def test_loss_aggregation_hand_case(mode, value, grad, pad_value):
    lp_new = padded([[-1.0] * 3] * 3, SEQ_MASK, pad_value).requires_grad_(True)
    lp_old = padded([[-1.0] * 3] * 3, SEQ_MASK, pad_value)
    adv, w = padded(SEQ_ADV, SEQ_MASK, pad_value), padded([[1.0] * 3] * 3, SEQ_MASK, pad_value)
    loss, metrics = ppo_clip_loss(lp_new, lp_old, adv, w, SEQ_MASK, loss_agg_mode=mode)
    loss.backward()
    assert loss.item() == pytest.approx(value, abs=1e-12)
    torch.testing.assert_close(lp_new.grad, t64(grad), **TOL)
    assert (metrics["clipfrac"], metrics["ratio_mean"]) == (0.0, 1.0)  # token means whatever the aggregation


def test_seq_mean_token_mean_of_nothing_is_zero():
    lp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    loss, _ = ppo_clip_loss(
        lp, lp.detach(), lp.detach() + 1, lp.detach() + 1, torch.zeros(2, 3), loss_agg_mode="seq-mean-token-mean"
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros_like(lp))


@settings(max_examples=60, deadline=None)
@given(
    batch=ppo_batches(),
    c=st.one_of(st.none(), st.floats(1.01, 4.0)),
    mode=st.sampled_from(["token-mean", "seq-mean-token-mean"]),
)
def test_ppo_switches_match_a_token_by_token_reference(batch, c, mode):
    lp_new, lp_old, adv, w, mask = batch
    eps = 0.2
    # Reference in plain Python: per-token objective and its derivative, then the aggregation's weights.
    obj, dobj, lower = np.zeros_like(lp_new), np.zeros_like(lp_new), 0
    for i in zip(*np.nonzero(mask)):
        r = math.exp(lp_new[i] - lp_old[i])
        unclipped, clip_term = r * adv[i], min(max(r, 1 - eps), 1 + eps) * adv[i]
        o, d = (unclipped, r * adv[i]) if unclipped <= clip_term else (clip_term, 0.0)
        if c is not None and adv[i] < 0 and o < c * adv[i]:
            o, d, lower = c * adv[i], 0.0, lower + 1
        obj[i], dobj[i] = w[i] * o, w[i] * d
    n_tok = mask.sum(-1)
    if mode == "token-mean":
        per = np.where(mask, 1.0 / max(mask.sum(), 1), 0.0)
    else:
        per = np.where(mask, 1.0 / np.maximum(n_tok, 1)[:, None] / max(int((n_tok > 0).sum()), 1), 0.0)
    lp_new_t = torch.from_numpy(lp_new).requires_grad_(True)
    loss, metrics = ppo_clip_loss(
        lp_new_t, *(torch.from_numpy(x) for x in (lp_old, adv, w, mask)), clip_ratio_c=c, loss_agg_mode=mode
    )
    loss.backward()
    assert loss.item() == pytest.approx(-(obj * per).sum(), abs=1e-12)
    torch.testing.assert_close(lp_new_t.grad, torch.from_numpy(-dobj * per), rtol=0.0, atol=1e-12)
    assert metrics["clipfrac_lower"] == pytest.approx(lower / max(mask.sum(), 1), abs=1e-12)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"loss_agg_mode": "seq-mean"}, ["loss_agg_mode", "token-mean", "seq-mean-token-mean"]),
        ({"clip_ratio_c": 1.0}, ["clip_ratio_c", "> 1"]),
    ],
)
def test_ppo_switches_reject_bad_values(kw, words):
    lp_new, lp_old, adv, w = ppo_inputs()
    with pytest.raises(ValueError) as e:
        ppo_clip_loss(lp_new, lp_old, adv, w, PPO_MASK, **kw)
    for word in words:
        assert word in str(e.value)


# ---------------------------------------------------------------- nll / PTS anchor

NLL_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
NLL_LOGP = [[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]]  # valid: -1, -2, -3 -> NLL 2


@pytest.mark.parametrize("pad_value", [0.0, *GARBAGE])
def test_nll_hand_case_and_padding(pad_value):
    logp = padded(NLL_LOGP, NLL_MASK, pad_value).requires_grad_(True)
    loss, _ = nll_loss(logp, NLL_MASK)
    loss.backward()
    assert loss.item() == pytest.approx(2.0, abs=1e-12)
    expected_grad = t64([[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected_grad, **TOL)


# Three teacher responses; the middle one is rejected by the verifier.
PTS_MASK = torch.tensor([[1, 1], [1, 1], [1, 0]])
PTS_LOGP = [[-1.0, -2.0], [-10.0, -10.0], [-3.0, 0.0]]


@pytest.mark.parametrize("garbage", [-10.0, *GARBAGE])
def test_pts_anchor_keeps_only_kept_responses(garbage):
    # Kept tokens -1, -2, -3 -> L_PTS = 2; the rejected row and the padding hold `garbage`.
    logp = padded(PTS_LOGP, PTS_MASK, garbage)
    logp[1] = garbage
    logp.requires_grad_(True)
    kept = torch.tensor([True, False, True])
    loss, metrics = pts_anchor_loss(logp, PTS_MASK, kept)
    loss.backward()
    assert loss.item() == pytest.approx(2.0, abs=1e-12)
    assert metrics["pts_kept"] == 2
    expected_grad = t64([[-1 / 3, -1 / 3], [0.0, 0.0], [-1 / 3, 0.0]])
    torch.testing.assert_close(logp.grad, expected_grad, **TOL)


def test_pts_anchor_keep_all_is_plain_nll():
    logp = t64(PTS_LOGP)
    loss, metrics = pts_anchor_loss(logp, PTS_MASK, torch.ones(3, dtype=torch.bool))
    assert loss.item() == pytest.approx(float(nll_loss(logp, PTS_MASK)[0]), abs=1e-12)
    assert loss.item() == pytest.approx(26.0 / 5, abs=1e-12)  # (1 + 2 + 10 + 10 + 3) / 5
    assert metrics["pts_kept"] == 3


@pytest.mark.parametrize("pad_value", [-10.0, *GARBAGE])
def test_pts_anchor_all_rejected_is_exactly_zero(pad_value):
    logp = torch.full((3, 2), pad_value, dtype=F64).requires_grad_(True)
    loss, metrics = pts_anchor_loss(logp, PTS_MASK, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    assert metrics["pts_kept"] == 0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


# ---------------------------------------------------------------- generalized JSD
#
# The implementation may compute in float32; comparisons use JSD_TOL.

JSD_TOL = {"rtol": 1e-5, "atol": 1e-6}


def independent_kl(logits_a, logits_b):
    """KL(A || B) per token, in float64, from logits [B, T, V]."""
    log_a = torch.log_softmax(logits_a.double(), -1)
    log_b = torch.log_softmax(logits_b.double(), -1)
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def masked_mean(x, mask):
    return x[mask.bool()].mean()


def test_jsd_hand_case_two_point():
    # P = teacher = (1/2, 1/2), Q = student = (1/4, 3/4), beta 1/2 -> M = (3/8, 5/8)
    # JSD = 1/2 [1/2 ln(4/3) + 1/2 ln(4/5)] + 1/2 [1/4 ln(2/3) + 3/4 ln(6/5)]
    teacher = torch.log(t64([[[0.5, 0.5]]]))
    student = torch.log(t64([[[0.25, 0.75]]]))
    expected = 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)) + 0.5 * (0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))
    loss, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1), beta=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    default, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1))
    assert default.item() == pytest.approx(expected, rel=1e-6)


def test_jsd_hand_case_limits_two_point():
    # beta 0: KL(P || Q) = 1/2 ln 2 + 1/2 ln(2/3); beta 1: KL(Q || P) = 1/4 ln(1/2) + 3/4 ln(3/2)
    teacher = torch.log(t64([[[0.5, 0.5]]]))
    student = torch.log(t64([[[0.25, 0.75]]]))
    fwd, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1), beta=0.0)
    rev, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1), beta=1.0)
    assert fwd.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    assert rev.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)


def random_logits(seed, shape=(2, 3, 5), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=F64)


JSD_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_jsd_beta_0_is_forward_kl_and_beta_1_reverse_kl(seed):
    student, teacher = random_logits(2 * seed), random_logits(2 * seed + 1)
    fwd, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=0.0)
    rev, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=1.0)
    torch.testing.assert_close(fwd.double(), masked_mean(independent_kl(teacher, student), JSD_MASK), **JSD_TOL)
    torch.testing.assert_close(rev.double(), masked_mean(independent_kl(student, teacher), JSD_MASK), **JSD_TOL)


def test_jsd_over_beta_tends_to_forward_kl():
    # JSD_beta / beta = KL(P || Q) + O(beta): the error shrinks about tenfold per step.
    student, teacher = random_logits(10, scale=1.0), random_logits(11, scale=1.0)
    kl = float(masked_mean(independent_kl(teacher, student), JSD_MASK))
    errors = []
    for beta in (1e-1, 1e-2, 1e-3, 1e-4):
        jsd, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=beta)
        errors.append(abs(jsd.item() / beta - kl))
    assert all(later < 0.5 * earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3 * kl


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_jsd_of_identical_distributions_is_zero(beta):
    logits = random_logits(3)
    loss, _ = generalized_jsd_loss(logits, logits.clone(), JSD_MASK, beta=beta)
    assert abs(loss.item()) < 1e-6


@settings(max_examples=30, deadline=None)
@given(
    a=hnp.arrays(np.float64, (2, 2, 4), elements=st.floats(-20.0, 20.0)),
    b=hnp.arrays(np.float64, (2, 2, 4), elements=st.floats(-20.0, 20.0)),
)
def test_jsd_half_is_symmetric_and_bounded_by_log2(a, b):
    a, b, mask = torch.from_numpy(a), torch.from_numpy(b), torch.ones(2, 2)
    ab, _ = generalized_jsd_loss(a, b, mask, beta=0.5)
    ba, _ = generalized_jsd_loss(b, a, mask, beta=0.5)
    assert ab.item() == pytest.approx(ba.item(), abs=1e-6)
    assert -1e-6 <= ab.item() <= math.log(2) + 1e-6


def test_jsd_half_reaches_log2_for_disjoint_distributions():
    student = t64([[[30.0, -30.0]]])
    teacher = t64([[[-30.0, 30.0]]])
    loss, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("zero_in", ["teacher", "student"])
def test_jsd_half_with_a_zero_probability_entry_is_finite(zero_in):
    # A -inf logit is a probability of exactly 0; with 0 log 0 = 0 the JSD is
    # P = (1/2, 1/2, 0), Q = (1/4, 1/4, 1/2), M = (3/8, 3/8, 1/4):
    # 1/2 KL(P || M) + 1/2 KL(Q || M) = 1/2 ln(4/3) + 1/2 [1/2 ln(2/3) + 1/2 ln 2].
    expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    with_zero = t64([[[0.0, 0.0, -INF]]])
    full = torch.log(t64([[[0.25, 0.25, 0.5]]]))
    student, teacher = (full, with_zero) if zero_in == "teacher" else (with_zero, full)
    loss, _ = generalized_jsd_loss(student, teacher, torch.ones(1, 1), beta=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_gradient_flows_to_student_only(beta):
    student = random_logits(4).requires_grad_(True)
    teacher = random_logits(5).requires_grad_(True)
    loss, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=beta)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None or torch.equal(teacher.grad, torch.zeros_like(teacher))


def test_jsd_beta_0_gradient_matches_forward_kl_gradient():
    student = random_logits(6).requires_grad_(True)
    teacher = random_logits(7)
    loss, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=0.0)
    loss.backward()
    ref_student = student.detach().clone().requires_grad_(True)
    masked_mean(independent_kl(teacher, ref_student), JSD_MASK).backward()
    torch.testing.assert_close(student.grad.double(), ref_student.grad, **JSD_TOL)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_jsd_rejects_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError):
        generalized_jsd_loss(random_logits(0), random_logits(1), JSD_MASK, beta=beta)


def jsd_padding_check(pad_value, beta):
    student_clean, teacher_clean = random_logits(8), random_logits(9)
    pad = ~JSD_MASK.bool()

    def run(pad_value):
        student, teacher = student_clean.clone(), teacher_clean.clone()
        if pad_value is not None:
            student[pad] = pad_value
            teacher[pad] = pad_value
        student.requires_grad_(True)
        loss, _ = generalized_jsd_loss(student, teacher, JSD_MASK, beta=beta)
        loss.backward()
        return loss, student.grad

    clean_loss, clean_grad = run(None)
    loss, grad = run(pad_value)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(clean_loss.item(), abs=1e-6)
    assert torch.isfinite(grad).all(), grad[pad]
    torch.testing.assert_close(grad[~pad], clean_grad[~pad], **JSD_TOL)
    assert torch.equal(grad[pad], torch.zeros_like(grad[pad]))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("pad_value", [1e30, -1e30])
def test_jsd_padding_with_huge_logits_contributes_nothing(pad_value, beta):
    jsd_padding_check(pad_value, beta)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("pad_value", [NAN, INF])
def test_jsd_padding_with_nan_or_inf_logits_contributes_nothing(pad_value, beta):
    # Masked positions must reach neither the value nor the gradient, as for every
    # other token-mean loss (padding logits may be garbage).
    jsd_padding_check(pad_value, beta)
