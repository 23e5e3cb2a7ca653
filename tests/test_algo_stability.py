"""docs/algorithm.md section 4: the detached stability weight applied after routing."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workbench.algo import stability_weight
from workbench.registry import UnknownNameError

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}
NAN, INF = math.nan, math.inf

# A 2x3 batch with one padded slot (r1 t2).
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
VALID = MASK.bool()
# p = exp(lp_old) = [[.5, .1, .2], [.5, .9, pad]]  ->  phi = p (1 - p) = [[.25, .09, .16], [.25, .09]]
P = [[0.5, 0.1, 0.2], [0.5, 0.9, 0.7]]


def t64(values):
    return torch.tensor(values, dtype=F64)


def padded(values, pad_value):
    return torch.where(VALID, t64(values), torch.tensor(pad_value, dtype=F64))


def lp_old(pad_value=0.0):
    return padded(np.log(P).tolist(), pad_value)


ADV = [[0.5, -4.0, 1.0], [0.0, 8.0, 0.0]]


def test_phi_hand_case_default_clip_does_not_bind():
    # phi sum .84 over 5 tokens, mean .168; phi / mean = [250, 90, 160, 250, 90] / 168,
    # all below the default clip 2.0, so the second normalisation changes nothing.
    w = stability_weight(t64(ADV), lp_old(), MASK, mode="phi")
    expected = t64([[250, 90, 160], [250, 90, 0]]) / 168
    torch.testing.assert_close(w[VALID], expected[VALID], **TOL)


def test_phi_hand_case_with_binding_clip():
    # clip 1.2: phi/mean = [125/84, 45/84, 80/84, 125/84, 45/84] -> [6/5, 45/84, 80/84, 6/5, 45/84];
    # sum 929/210, mean 929/1050; divided by the mean: [1260, 562.5, 1000, 1260, 562.5] / 929.
    w = stability_weight(t64(ADV), lp_old(), MASK, mode="phi", clip=1.2)
    expected = t64([[1260, 562.5, 1000], [1260, 562.5, 0]]) / 929
    torch.testing.assert_close(w[VALID], expected[VALID], **TOL)


def test_phi_is_the_default_mode():
    torch.testing.assert_close(
        stability_weight(t64(ADV), lp_old(), MASK), stability_weight(t64(ADV), lp_old(), MASK, mode="phi"), **TOL
    )


def test_clip_hand_case():
    # clip 2: min(1, 2/|A|) over A = [.5, -4, 1, 0, 8] -> [1, .5, 1, 1, .25] (|A| = 0 -> 1),
    # mean .75 -> [4/3, 2/3, 4/3, 4/3, 1/3].
    w = stability_weight(t64(ADV), lp_old(), MASK, mode="clip", clip=2.0)
    expected = t64([[4, 2, 4], [4, 1, 0]]) / 3
    torch.testing.assert_close(w[VALID], expected[VALID], **TOL)


def test_none_is_one():
    w = stability_weight(t64(ADV), lp_old(), MASK, mode="none")
    assert torch.equal(w[VALID], torch.ones(5, dtype=F64))


@pytest.mark.parametrize("mode", ["phi", "clip", "none"])
@pytest.mark.parametrize("pad_value", [NAN, INF, -INF, 1e30])
def test_padding_garbage_does_not_leak(mode, pad_value):
    clean = stability_weight(padded(ADV, 0.0), lp_old(0.0), MASK, mode=mode, clip=1.2)
    dirty = stability_weight(padded(ADV, pad_value), lp_old(pad_value), MASK, mode=mode, clip=1.2)
    assert torch.isfinite(dirty[VALID]).all()
    torch.testing.assert_close(dirty[VALID], clean[VALID], **TOL)


@pytest.mark.parametrize("mode", ["bogus", "PHI", ""])
def test_unknown_mode_lists_valid_names(mode):
    with pytest.raises(UnknownNameError) as info:
        stability_weight(t64(ADV), lp_old(), MASK, mode=mode)
    for name in ("phi", "clip", "none"):
        assert name in str(info.value)


# ---------------------------------------------------------------- properties


@st.composite
def weighted_batches(draw):
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    shape = (b, t)
    adv = draw(hnp.arrays(np.float64, shape, elements=st.one_of(st.just(0.0), st.floats(-10.0, 10.0))))
    lp = draw(hnp.arrays(np.float64, shape, elements=st.floats(-6.0, -1e-3)))
    mask = draw(hnp.arrays(np.bool_, shape))
    mask[0, 0] = True  # at least one valid token
    return torch.from_numpy(adv), torch.from_numpy(lp), torch.from_numpy(mask)


@settings(max_examples=60, deadline=None)
@given(batch=weighted_batches(), mode=st.sampled_from(["phi", "clip", "none"]), clip=st.floats(0.5, 4.0))
def test_weight_is_detached_nonnegative_unit_mean_and_keeps_signs(batch, mode, clip):
    adv, lp, mask = batch
    adv.requires_grad_(True)
    lp.requires_grad_(True)
    w = stability_weight(adv, lp, mask, mode=mode, clip=clip)
    assert not w.requires_grad
    assert w.shape == adv.shape
    wv = w[mask]
    assert torch.isfinite(wv).all()
    assert (wv >= 0).all()
    assert float(wv.mean()) == pytest.approx(1.0, abs=1e-9)
    # Weighting never flips a token's sign, i.e. its class.
    a = adv.detach()[mask]
    positive = wv > 0
    assert torch.equal(torch.sign(wv * a)[positive], torch.sign(a)[positive])
