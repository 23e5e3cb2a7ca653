"""SG-OPD inside verl's own ``distillation_ppo_loss`` equals ``workbench.algo`` (loss and gradients).

Micro-batches are built in the v1 trainer's format (nested jagged response tensors, teacher
log-probs over the full sequence, model log-probs over the full sequence) and go through
verl 0.9.1's real code path with the ``sgopd`` loss registered; the reference is computed
directly with ``workbench.algo`` on padded tensors sliced independently here.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

import functools
import zlib
from pathlib import Path

import workbench.algo as A
from workbench.config import load_config

RUNS = Path(__file__).resolve().parents[1] / "experiments" / "runs"


def _grid_gates():
    out = {}
    for path in sorted(RUNS.glob("*.yaml")):
        cfg = load_config(path)
        if cfg.family == "pg" and cfg.method != "grpo":
            out[cfg.name] = cfg
    return out


GRID = _grid_gates()
EXTRA = {  # variants the grid does not exercise
    "mask-fallback": {"gate": {"disagree_mode": "mask"}, "stability": {"mode": "phi"}},
    "clip-weight": {"gate": {"lambda_high": 1.5}, "stability": {"mode": "clip", "clip": 0.5}},
    "gate-off-lambda-1": {"method": "opd", "stability": {"mode": "none"}},
}


def _loss_config(cfg):
    from workbench.backends.verl.loss import SGOPDLossConfig

    pts = {f"pts_{k}": v for k, v in cfg.pts.model_dump().items()}
    return SGOPDLossConfig(
        **cfg.gate.route_kwargs(),
        stability_mode=cfg.stability.mode,
        stability_clip=cfg.stability.clip,
        clip_ratio_low=cfg.optim.eps_low,
        clip_ratio_high=cfg.optim.eps_high,
        **pts,
    )


def _cases():
    from workbench.config import parse_config

    cases = {name: cfg for name, cfg in GRID.items()}
    for name, data in EXTRA.items():
        cases[name] = parse_config({"method": data.get("method", "sgopd"), **{k: v for k, v in data.items() if k != "method"}})
    return cases


CASES = _cases()


@pytest.mark.parametrize("is_weights", [False, True], ids=["no-IS", "rollout-IS"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_verl_loss_matches_algo(name, is_weights):
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, reference_loss, run_verl

    cfg = CASES[name]
    loss_cfg = _loss_config(cfg)
    batch = make_batch(seed=zlib.crc32(name.encode()) % 1000, n_rows=12, is_weights=is_weights)
    loss, grad, metrics = run_verl(actor_config(), distillation_config(loss_cfg), batch)
    ref_loss, ref_grad, ref_cls = reference_loss(batch, loss_cfg)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    frac = A.gate_fractions(ref_cls, batch.mask)
    for key in ("conflict_frac", "consensus_frac", "neutral_frac"):
        assert metrics[f"train/{key}"] == pytest.approx(frac[key])
    assert metrics["sgopd/n_valid"] == int(batch.mask.sum())
    assert metrics["sgopd/n_conflict"] == int((ref_cls == -1).sum())


def test_microbatches_with_driver_fields_equal_the_whole_batch():
    """verl splits a mini-batch into micro-batches; with the driver's whole-batch weight the
    summed micro-batch losses and gradients are the whole batch's docs/algorithm.md loss."""
    from workbench.backends.verl.adapter import driver_fields
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, reference_loss, run_verl, split

    cfg = CASES["sgopd"]
    loss_cfg = _loss_config(cfg)
    batch = make_batch(seed=7, n_rows=10, is_weights=True)
    fields = driver_fields(
        batch.a_rl,
        batch.lp_old,
        batch.lp_teacher,
        batch.lp_ref,
        batch.mask,
        route_kwargs=loss_cfg.route_kwargs(),
        stability_mode=loss_cfg.stability_mode,
        stability_clip=loss_cfg.stability_clip,
    )
    total_loss, total_grad = 0.0, torch.zeros_like(batch.lp_full)
    for part, extra in split(batch, [0, 4, 7, 10], extra={"sgopd_weight": fields["sgopd_weight"]}):
        loss, grad, _ = run_verl(actor_config(), distillation_config(loss_cfg), part, extra)
        total_loss = total_loss + loss
        total_grad[part.full_slice] += grad
    ref_loss, ref_grad, _ = reference_loss(batch, loss_cfg)
    torch.testing.assert_close(total_loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total_grad, ref_grad, rtol=1e-5, atol=1e-7)

    # Without the driver's weight each micro-batch normalises phi over itself: not the batch's loss.
    alone = sum(run_verl(actor_config(), distillation_config(loss_cfg), p, e)[0] for p, e in split(batch, [0, 4, 7, 10]))
    assert not torch.allclose(alone, ref_loss, rtol=1e-4, atol=1e-6)


def test_pts_step_fields_hand_the_actors_aggregation_to_the_row_scales():
    """The PTS trainer passes verl's ``actor.loss_agg_mode`` through ``step_fields``: the row
    scales are ``adapter.row_scales`` under that mode (student and anchor rows), not token-mean's."""
    from workbench.backends.verl import adapter, pts_plan
    from workbench.backends.verl.testing import make_batch

    loss_cfg = _loss_config(CASES["sgopd"])
    batch = make_batch(seed=5, n_rows=9, n_anchor=3)
    rewards = torch.tensor([float(i % 2) for i in range(9)])
    plan = pts_plan.StepPlan(True, 3, 0.4)
    kw = {
        "rewards": rewards,
        "uids": [f"p{i // 3}" if not batch.anchor[i] else f"a{i}" for i in range(9)],
        "anchor": batch.anchor,
        "mask": batch.mask,
        "lp_old": batch.lp_old,
        "lp_teacher": batch.lp_teacher,
        "lp_ref": batch.lp_ref,
        "loss_cfg": {
            **loss_cfg.route_kwargs(),
            "stability_mode": loss_cfg.stability_mode,
            "stability_clip": loss_cfg.stability_clip,
        },
        "plan": plan,
    }
    scales = {mode: pts_plan.step_fields(**kw, loss_agg_mode=mode)[0]["sgopd_row_scale"] for mode in adapter.LOSS_AGG_MODES}
    kept = pts_plan.kept_anchors(rewards, batch.anchor, True)
    for mode, got in scales.items():
        torch.testing.assert_close(got, adapter.row_scales(batch.mask.bool(), batch.anchor, kept, plan.alpha, mode))
    assert not torch.allclose(scales["token-mean"], scales["seq-mean-token-mean"])


@pytest.mark.parametrize("filter_correct", [True, False])
def test_pts_anchor_rows_add_alpha_times_the_anchor_nll_in_the_same_step(filter_correct):
    """Teacher-anchor rows in the batch: gradient = grad L_tok (student rows) + alpha grad L_PTS
    (kept anchor rows), each with docs/algorithm.md's own token mean; anchors ignore rollout-IS weights."""
    from workbench.backends.verl import pts_plan
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, reference_loss, run_verl

    cfg = CASES["sgopd"]
    loss_cfg = _loss_config(cfg)
    batch = make_batch(seed=3, n_rows=12, is_weights=True, n_anchor=3)
    anchor = batch.anchor
    rewards = torch.tensor([1.0 if i % 2 else 0.0 for i in range(12)])  # anchors 9, 10, 11: kept 9 and 11
    plan = pts_plan.StepPlan(True, 3, 0.7)
    fields, metrics = pts_plan.step_fields(
        rewards=rewards,
        uids=[f"p{i // 3}" if not anchor[i] else f"p{i}" for i in range(12)],
        anchor=anchor,
        mask=batch.mask,
        lp_old=batch.lp_old,
        lp_teacher=batch.lp_teacher,
        lp_ref=batch.lp_ref,
        loss_cfg={
            **loss_cfg.route_kwargs(),
            "stability_mode": loss_cfg.stability_mode,
            "stability_clip": loss_cfg.stability_clip,
            "pts_filter_correct": filter_correct,
        },
        plan=plan,
    )
    batch = batch.replace(a_rl=fields["advantages"])
    _, grad, m = run_verl(
        actor_config(),
        distillation_config(loss_cfg),
        batch,
        extra={"sgopd_weight": fields["sgopd_weight"], "sgopd_row_scale": fields["sgopd_row_scale"], "pts_anchor": anchor.long()},
    )
    kept = pts_plan.kept_anchors(rewards, anchor, filter_correct)
    student = ~anchor
    # reference: docs/algorithm.md's L_tok on the student rows + alpha * L_PTS on kept anchors
    _, ref_tok_grad, _ = reference_loss(batch, loss_cfg, rows=student)
    lp = batch.lp_new.detach().requires_grad_(True)
    pts_loss, _ = A.pts_anchor_loss(lp, batch.mask, kept)
    (plan.alpha * pts_loss).backward()
    ref_grad = ref_tok_grad + batch.scatter_to_full(lp.grad)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert metrics["train/pts_kept"] == float(kept.sum())
    assert metrics["train/pts_teacher_acc"] == pytest.approx(float((rewards[anchor] > 0).float().mean()))
    assert m["sgopd/pts_kept_rows"] == int(kept.sum())
    assert m["train/pts_loss"] == pytest.approx(float(pts_loss.detach()))
    assert m["sgopd/n_valid"] == int((batch.mask & student[:, None]).sum())


# -- paper-parity switches (docs/algorithm.md sections 5, 11) on both backends ------------------
#
# The run config goes through the real mapping (overrides -> verl's composed config); verl's own
# PPO clip, dual clip and aggregation must then equal what the mini trainer computes with the
# same run config (route_advantage, stability_weight, ppo_clip_loss(**cfg.optim.pg_loss_kwargs())).
# clip_ratio_c 1.1 makes the dual clip bind on many tokens of the test batches (ratios e**N(0, .25)).

NO_PTS = {"pts": {"enabled": False}}
PARITY = {
    "dual-clip": {**NO_PTS, "optim": {"clip_ratio_c": 1.1}},
    "seq-mean-token-mean": {**NO_PTS, "optim": {"loss_agg_mode": "seq-mean-token-mean"}},
    "g-opd-loss": {**NO_PTS, "optim": {"clip_ratio_c": 1.1, "loss_agg_mode": "seq-mean-token-mean"}},
    "neutral-consensus": {**NO_PTS, "gate": {"neutral_mode": "consensus"}},
    "neutral-opd": {**NO_PTS, "gate": {"neutral_mode": "opd"}},
    "neutral-mask-four-cells": {**NO_PTS, "gate": {"neutral_mode": "mask", "gate_levels": 4, "cell_beta_neg_pos": 1.0}},
    "opd-dual-clip-seq-mean": {"method": "opd", "optim": {"clip_ratio_c": 1.1, "loss_agg_mode": "seq-mean-token-mean"}},
}


@functools.cache
def _verl_side(name):
    """``(run config, verl actor config, verl distillation config)`` of PARITY[name], composed by verl."""
    from verl.utils.config import omega_conf_to_dataclass

    from workbench.backends.verl.check import compose
    from workbench.backends.verl.overrides import build_job, load_scale
    from workbench.config import parse_config

    cfg = parse_config({"method": "sgopd", **PARITY[name]})
    composed = compose(build_job(cfg, load_scale("paper")))
    return cfg, omega_conf_to_dataclass(composed.actor_rollout_ref.actor), omega_conf_to_dataclass(composed.distillation)


def _mini_side(batch, cfg, rows=None):
    """The mini trainer's token loss on ``batch``: ``(loss, grad over lp_full, metrics)``."""
    m = batch.mask if rows is None else batch.mask & rows[:, None]
    adv, _, _ = A.route_advantage(batch.a_rl, batch.lp_old, batch.lp_teacher, batch.lp_ref, m, **cfg.gate.route_kwargs())
    w = A.stability_weight(adv, batch.lp_old, m, mode=cfg.stability.mode, clip=cfg.stability.clip)
    weight = w * batch.is_w if batch.is_w is not None else w
    lp = batch.lp_new.detach().requires_grad_(True)
    loss, metrics = A.ppo_clip_loss(lp, batch.lp_old, adv, weight, m, **cfg.optim.pg_loss_kwargs())
    loss.backward()
    return loss.detach(), batch.scatter_to_full(lp.grad), metrics


@pytest.mark.parametrize("is_weights", [False, True], ids=["no-IS", "rollout-IS"])
@pytest.mark.parametrize("name", sorted(PARITY))
def test_paper_parity_switches_are_the_same_loss_on_both_backends(name, is_weights):
    from workbench.backends.verl.testing import make_batch, run_verl

    cfg, actor, dist = _verl_side(name)
    assert dist.distillation_loss.loss_mode == "sgopd"  # opd with a dual clip too: stock k1 has no clip_ratio_c
    assert (actor.loss_agg_mode, dist.distillation_loss.neutral_mode) == (cfg.optim.loss_agg_mode, cfg.gate.neutral_mode)
    assert dist.distillation_loss.clip_ratio_c == (cfg.optim.clip_ratio_c or 1e9)
    batch = make_batch(seed=zlib.crc32(name.encode()) % 1000, n_rows=12, is_weights=is_weights)
    loss, grad, metrics = run_verl(actor, dist, batch)
    ref_loss, ref_grad, ref_metrics = _mini_side(batch, cfg)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert metrics["distillation/pg_clipfrac"] == pytest.approx(ref_metrics["clipfrac"])
    assert metrics["distillation/pg_clipfrac_lower"] == pytest.approx(ref_metrics["clipfrac_lower"])
    assert (ref_metrics["clipfrac_lower"] > 0) == (cfg.optim.clip_ratio_c is not None)  # the dual clip binds


def test_paper_parity_switches_change_the_loss():
    """The switches are not no-ops on the test batches (else the parity above proves nothing)."""
    from workbench.backends.verl.testing import make_batch

    batch = make_batch(seed=11, n_rows=12, is_weights=True)
    default = _mini_side(batch, _verl_side("dual-clip")[0].with_overrides({"optim.clip_ratio_c": None}))[1]
    for name in sorted(PARITY):
        if PARITY[name].get("method") != "opd":
            assert not torch.allclose(_mini_side(batch, _verl_side(name)[0])[1], default), name


def test_seq_mean_token_mean_microbatches_with_driver_fields_equal_the_whole_batch():
    """verl divides each micro-batch's row means by the global row count: summed over
    micro-batches (with the driver's whole-batch weight) they are the whole batch's loss."""
    from workbench.backends.verl.adapter import driver_fields
    from workbench.backends.verl.testing import make_batch, run_verl, split

    cfg, actor, dist = _verl_side("g-opd-loss")
    batch = make_batch(seed=8, n_rows=10, is_weights=True)
    fields = driver_fields(
        batch.a_rl,
        batch.lp_old,
        batch.lp_teacher,
        batch.lp_ref,
        batch.mask,
        route_kwargs=cfg.gate.route_kwargs(),
        stability_mode=cfg.stability.mode,
        stability_clip=cfg.stability.clip,
        loss_agg_mode=cfg.optim.loss_agg_mode,
    )
    assert torch.equal(fields["sgopd_row_scale"], torch.ones(10))  # no anchor rows: nothing to rescale
    total_loss, total_grad = 0.0, torch.zeros_like(batch.lp_full)
    for part, extra in split(batch, [0, 3, 7, 10], extra={"sgopd_weight": fields["sgopd_weight"]}):
        loss, grad, _ = run_verl(actor, dist, part, extra)
        total_loss = total_loss + loss
        total_grad[part.full_slice] += grad
    ref_loss, ref_grad, _ = _mini_side(batch, cfg)
    torch.testing.assert_close(total_loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total_grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_pts_anchor_rows_under_either_aggregation(mode):
    """Anchor rows in the batch (row scales from ``driver_fields`` for verl's aggregation): the
    gradient is the mini trainer's L_tok (aggregated over the student rows as ``mode`` says) plus
    alpha * L_PTS (token mean over the kept anchor tokens, docs/algorithm.md section 6)."""
    from workbench.backends.verl.adapter import driver_fields
    from workbench.backends.verl.testing import make_batch, run_verl

    cfg, actor, dist = _verl_side("g-opd-loss" if mode != "token-mean" else "dual-clip")
    batch = make_batch(seed=9, n_rows=12, is_weights=True, n_anchor=3)
    anchor = batch.anchor
    kept = anchor & torch.tensor([i % 2 == 1 for i in range(12)])  # anchors 9, 10, 11: kept 9 and 11
    a_rl = torch.where(anchor[:, None], torch.zeros(()), batch.a_rl)
    batch = batch.replace(a_rl=a_rl)
    alpha = 0.7
    fields = driver_fields(
        a_rl,
        batch.lp_old,
        batch.lp_teacher,
        batch.lp_ref,
        batch.mask,
        route_kwargs=cfg.gate.route_kwargs(),
        stability_mode=cfg.stability.mode,
        stability_clip=cfg.stability.clip,
        anchor=anchor,
        kept=kept,
        alpha=alpha,
        loss_agg_mode=mode,
    )
    extra = {"sgopd_weight": fields["sgopd_weight"], "sgopd_row_scale": fields["sgopd_row_scale"], "pts_anchor": anchor.long()}
    _, grad, _ = run_verl(actor, dist, batch, extra)
    _, ref_tok_grad, _ = _mini_side(batch, cfg, rows=~anchor)
    lp = batch.lp_new.detach().requires_grad_(True)
    pts_loss, _ = A.pts_anchor_loss(lp, batch.mask, kept)
    (alpha * pts_loss).backward()
    torch.testing.assert_close(grad, ref_tok_grad + batch.scatter_to_full(lp.grad), rtol=1e-5, atol=1e-7)


def test_the_loss_config_declares_the_run_configs_fields_once():
    """``SGOPDLossConfig``'s gate, stability and PTS fields are the run config's (finding: one
    declaration): same names and defaults (a loss config alone starts no PTS trainer)."""
    from workbench.backends.verl.adapter import ROUTE_KEYS
    from workbench.backends.verl.loss import SGOPDLossConfig
    from workbench.config import GateConfig, PTSConfig, StabilityConfig

    loss = SGOPDLossConfig()
    assert loss.route_kwargs() == GateConfig().model_dump() and ROUTE_KEYS == tuple(GateConfig.model_fields)
    assert loss.section("stability") == StabilityConfig().model_dump()
    assert loss.pts_kwargs() == {**PTSConfig().model_dump(), "enabled": False}
    assert (loss.stability_mode, loss.pts_phase2_end_frac, loss.neutral_mode) == ("phi", 0.35, "base")


def test_stock_k1_crashes_on_nested_rollout_is_weights_and_sgopd_does_not():
    """The trap the sgopd loss works around (verl 0.9.1): nested IS weights in the distillation path."""
    from verl.workers.config import DistillationLossConfig

    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, run_verl

    batch = make_batch(seed=1, n_rows=6, is_weights=True)
    stock = DistillationLossConfig(loss_mode="k1", use_policy_gradient=True, use_task_rewards=False, loss_max_clamp=None)
    with pytest.raises(ValueError, match="NestedTensor"):
        run_verl(actor_config(), distillation_config(stock), batch)
    run_verl(actor_config(), distillation_config(_loss_config(CASES["sgopd"])), batch)  # no exception


def test_stock_k1_is_opd_at_ratio_one():
    """The opd run uses verl's own k1 + policy gradient: at the update's ratio 1 (one step per
    batch) its gradient is docs/algorithm.md's OPD (A_OPD = lp_T - lp_old, no weight)."""
    from verl.workers.config import DistillationLossConfig

    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, run_verl

    batch = make_batch(seed=2, n_rows=8, is_weights=False, ratio_one=True)
    stock = DistillationLossConfig(loss_mode="k1", use_policy_gradient=True, use_task_rewards=False, loss_max_clamp=None)
    _, grad, _ = run_verl(actor_config(), distillation_config(stock), batch)
    lp = batch.lp_new.detach().requires_grad_(True)
    adv = A.opd_advantage(batch.lp_old, batch.lp_teacher)
    loss, _ = A.ppo_clip_loss(lp, batch.lp_old, adv, batch.mask.float(), batch.mask)
    loss.backward()
    torch.testing.assert_close(grad, batch.scatter_to_full(lp.grad), rtol=1e-5, atol=1e-7)


def test_loss_config_rejects_what_would_change_sgopd():
    from workbench.backends.verl.loss import SGOPDLossConfig

    with pytest.raises(ValueError, match="loss_max_clamp"):
        SGOPDLossConfig(loss_max_clamp=10.0)
    with pytest.raises(ValueError, match="use_task_rewards"):
        SGOPDLossConfig(use_task_rewards=True)
    with pytest.raises(ValueError, match="gate.disagree_mode"):
        SGOPDLossConfig(disagree_mode="nope")
    with pytest.raises(ValueError, match="pts"):
        SGOPDLossConfig(pts_phase1_end_frac=0.5, pts_phase2_end_frac=0.4)
    with pytest.raises(ValueError, match="gate.neutral_mode"):
        SGOPDLossConfig(neutral_mode="zero")
    with pytest.raises(ValueError, match="neutral_mode 'opd' only applies with the gate on"):
        SGOPDLossConfig(sign_gate=False, neutral_mode="opd")
    assert SGOPDLossConfig().loss_max_clamp is None  # the dataclass default of verl's parent is 10


def test_missing_reference_is_a_clear_error():
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, run_verl

    batch = make_batch(seed=4, n_rows=4, is_weights=False, with_ref=False)
    with pytest.raises(KeyError, match="use_kl_loss"):
        run_verl(actor_config(), distillation_config(_loss_config(CASES["sgopd"])), batch)
    run_verl(
        actor_config(), distillation_config(_loss_config(CASES["opd"] if "opd" in CASES else CASES["gate-off-lambda-1"])), batch
    )


@pytest.mark.parametrize("filter_correct", [True, False])
def test_padding_rows_copying_an_anchor_change_nothing(filter_correct):
    """verl pads the batch with copies of its first row (``upsample_batch_to_divisible_size``):
    no valid tokens, reward 0, a fresh uid, and the first row's ``pts_anchor``. With row 0 an
    anchor the copies must still be neither anchors nor students: every field and metric of
    the real rows is what it is without them, and the copies get zero advantage and weight."""
    from workbench.backends.verl import pts_plan
    from workbench.backends.verl.testing import make_batch

    b = make_batch(seed=7, n_rows=9, n_anchor=3)
    order = torch.tensor([6, 0, 1, 2, 3, 4, 5, 7, 8])  # an anchor first: the row verl's padding copies
    anchor, mask = b.anchor[order], b.mask[order]
    lp_old, lp_t, lp_ref = b.lp_old[order], b.lp_teacher[order], b.lp_ref[order]
    rewards = torch.tensor([1.0, 0, 1, 1, 0, 1, 0, 1, 0])
    uids = ["a0", "p0", "p0", "p0", "p1", "p1", "p1", "a1", "a2"]
    entropy = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))
    cfg = {
        "sign_gate": True,
        "lambda_high": 1.5,
        "stability_mode": "phi",
        "stability_clip": 2.0,
        "pts_filter_correct": filter_correct,
    }
    plan = pts_plan.StepPlan(True, 3, 0.7)
    real_f, real_m = pts_plan.step_fields(
        rewards=rewards,
        uids=uids,
        anchor=anchor,
        mask=mask,
        lp_old=lp_old,
        lp_teacher=lp_t,
        lp_ref=lp_ref,
        loss_cfg=cfg,
        plan=plan,
        entropy=entropy,
    )

    n_pad = 3

    def padded(x, fill):
        return torch.cat([x, torch.full((n_pad, *x.shape[1:]), fill, dtype=x.dtype)])

    tags = [{}] * 9 + [{"is_padding": True}] * n_pad
    pad_f, pad_m = pts_plan.step_fields(
        rewards=padded(rewards, 0.0),
        uids=uids + ["padx"] * n_pad,
        anchor=torch.cat([anchor, anchor[:1].repeat(n_pad)]),
        mask=padded(mask, False),
        lp_old=padded(lp_old, 0.0),
        lp_teacher=padded(lp_t, 0.0),
        lp_ref=padded(lp_ref, 0.0),
        loss_cfg=cfg,
        plan=plan,
        padding=pts_plan.padding_rows(tags),
        entropy=padded(entropy, 1.0),
    )
    assert pad_m == real_m
    for k, v in real_f.items():
        torch.testing.assert_close(pad_f[k][:9], v)
        assert not pad_f[k][9:].any(), k  # zero advantage, weight and row scale
    assert real_m["train/pts_kept"] == (2.0 if filter_correct else 3.0)
    assert real_m["train/entropy"] == pytest.approx(float(entropy[mask & ~anchor[:, None]].mean()))
