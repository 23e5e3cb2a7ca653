"""The verl job of every grid run: overrides, verl's own config composition and validation (CPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from workbench.backends.verl.overrides import build_job, load_scale, scale_names
from workbench.config import load_config

RUNS = Path(__file__).resolve().parents[1] / "experiments" / "runs"


def job(run, scale="paper", **kw):
    return build_job(load_config(RUNS / f"{run}.yaml"), load_scale(scale), **kw)


def as_dict(j):
    out = {}
    for o in j.overrides:
        k, _, v = o.partition("=")
        out[k.lstrip("+")] = v
    return out


def test_scales_load_and_reject_unknown_keys(tmp_path):
    assert {"paper", "smoke"} <= set(scale_names())
    paper = load_scale("paper")
    assert (paper.student, paper.teacher, paper.batch.group_size) == ("Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", 8)
    assert paper.teacher_gpus >= 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (Path(__file__).resolve().parents[1] / "workbench/backends/verl/scales/paper.yaml").read_text() + "\nsurprise: 1\n"
    )
    with pytest.raises(Exception, match="surprise"):
        load_scale(bad)
    assert load_scale("paper", ["batch.prompts_per_step=16"]).batch.prompts_per_step == 16


def test_sgopd_overrides():
    d = as_dict(job("sgopd", seed=0))
    dl = "distillation.distillation_loss"
    assert d[f"{dl}._target_"] == "workbench.backends.verl.loss.SGOPDLossConfig"
    assert d[f"{dl}.loss_mode"] == "sgopd"
    assert (d[f"{dl}.use_policy_gradient"], d[f"{dl}.use_task_rewards"], d[f"{dl}.loss_max_clamp"]) == ("true", "false", "null")
    assert (d[f"{dl}.lambda_high"], d[f"{dl}.disagree_mode"], d[f"{dl}.disagree_interp_beta"]) == ("1.8", "interp", "0.5")
    assert (d[f"{dl}.stability_mode"], d[f"{dl}.pts_enabled"], d[f"{dl}.pts_phase2_end_frac"]) == ("phi", "true", "0.35")
    assert d["trainer.v1.trainer_mode"] == "sgopd_sync"
    assert d["actor_rollout_ref.rollout.agent.agent_loop_manager_class"] == "workbench.backends.verl.pts.PTSAgentLoopManager"
    assert d["actor_rollout_ref.actor.use_kl_loss"] == "true" and d["actor_rollout_ref.actor.kl_loss_coef"] == "0"
    assert d["actor_rollout_ref.model.path"] == "Qwen/Qwen3-1.7B"
    assert d["distillation.teacher_models.teacher_model.model_path"] == "Qwen/Qwen3-4B"
    assert d["actor_rollout_ref.rollout.n"] == "8"
    assert d["data.train_batch_size"] == d["actor_rollout_ref.actor.ppo_mini_batch_size"] == "64"
    assert d["algorithm.rollout_correction.rollout_is"] == "token"
    assert d["trainer.save_freq"] == "20"  # divides 200 and the kept 90% checkpoint (180)
    assert d["trainer.logger"] == "[console,mlflow]"
    assert d["trainer.experiment_name"] == "sgopd-seed0"
    assert d["ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES"] == "workbench.backends.verl.register"
    j = job("sgopd")
    assert (j.kind, j.gpus) == ("ppo", 8)


def test_baseline_overrides():
    opd = as_dict(job("opd"))
    assert opd["distillation.distillation_loss.loss_mode"] == "k1"
    assert opd["distillation.distillation_loss.use_policy_gradient"] == "true"
    assert opd["actor_rollout_ref.actor.use_kl_loss"] == "false"  # lambda 1: no reference needed
    assert "trainer.v1.trainer_mode" not in opd
    pts = as_dict(job("pts-30-35"))  # OPD token loss + PTS: the sgopd loss with the gate off at lambda 1
    assert pts["distillation.distillation_loss.loss_mode"] == "sgopd"
    assert (pts["distillation.distillation_loss.sign_gate"], pts["distillation.distillation_loss.lambda_base"]) == (
        "false",
        "1.0",
    )
    assert pts["actor_rollout_ref.actor.use_kl_loss"] == "false"
    gkd = as_dict(job("gkd"))
    assert gkd["distillation.distillation_loss.loss_mode"] == "forward_kl_topk"
    assert gkd["distillation.distillation_loss.use_policy_gradient"] == "false"
    grpo = as_dict(job("grpo"))
    assert "distillation.enabled" not in grpo and job("grpo").gpus == 4
    single = as_dict(job("exopd-1.25-single-source"))
    assert single["data.train_files"] == "[data/verl/deepmath/train.parquet]"
    assert as_dict(job("exopd-1.25"))["data.train_files"].count(",") == 1


def test_sft_family_and_stage_two_init():
    sft = job("timesep-stage1", seed=1)
    assert sft.kind == "sft" and sft.module == "verl.trainer.sft_trainer"
    td = sft.teacher_data
    assert td["filter_correct"] is True and td["decoding"] == "sample"
    import workbench.algo as A

    assert td["max_prompts"] == A.pts_teacher_prompts(
        200, 64, teacher_sampling_ratio=0.125, phase1_end_frac=0.30, phase2_end_frac=0.35
    )
    assert job("seqkd").teacher_data["decoding"] == "greedy"
    stage2 = as_dict(job("timesep-1.5", seed=1))
    assert stage2["actor_rollout_ref.model.path"] == "results/paper/verl-runs/timesep-stage1/seed1/hf"
    assert job("timesep-1.5", seed=1, results="/r").paths.hf == "/r/paper/verl-runs/timesep-1.5/seed1/hf"


def test_run_paths_name_every_file_of_a_run():
    from workbench.backends.verl.overrides import run_paths

    p = run_paths("res/", "paper", "sgopd", 2)
    assert p.run_dir == "res/paper/verl-runs/sgopd/seed2"
    assert (p.checkpoints, p.hf, p.state, p.eval_results, p.done) == tuple(
        f"res/paper/verl-runs/sgopd/seed2/{f}" for f in ("checkpoints", "hf", "verl_run.json", "eval/results.json", "done")
    )
    j = job("sgopd", seed=2, results="res")
    assert j.paths == p and as_dict(j)["trainer.default_local_dir"] == p.checkpoints
    assert job("sft", seed=2, results="res").teacher_data["out"] == run_paths("res", "paper", "sft", 2).teacher_data
    pattern = run_paths("res", "paper", "{run}", "{seed}")  # the Snakemake rules' patterns
    assert pattern.hf.format(run="sgopd", seed=2) == p.hf


def test_a_scale_is_named_after_its_file(tmp_path):
    for name in scale_names():  # the name picks the results folder
        assert load_scale(name).name == name
    with pytest.raises(ValueError, match="differs from the file name"):
        load_scale("paper", ["name=other"])


def test_the_scale_owns_size_fields_and_says_so():
    from workbench.backends.verl.overrides import SCALE_OWNED
    from workbench.config import ConfigError, RunConfig

    with pytest.raises(
        ConfigError,
        match=r"optim.lr=0.01 \(scale 'paper' sets optim.lr=1e-06.*train.steps=50 "
        r"\(scale 'paper' sets train.steps=200",
    ):
        build_job(load_config(RUNS / "sgopd.yaml", ["optim.lr=0.01", "train.steps=50"]), load_scale("paper"))
    with pytest.raises(ConfigError, match=r"optim.lr=0.01 \(scale 'smoke' sets sft.lr=1e-05"):
        build_job(load_config(RUNS / "sft.yaml", ["optim.lr=0.01"]), load_scale("smoke"))
    with pytest.raises(ConfigError, match="train.eval_every=10 .verl has no such setting"):
        build_job(load_config(RUNS / "opd.yaml", ["train.eval_every=10"]), load_scale("paper"))
    # setting a field to its default is no conflict; the scale's value is used
    ok = as_dict(build_job(load_config(RUNS / "sgopd.yaml", ["optim.lr=0.001"]), load_scale("paper")))
    assert ok["actor_rollout_ref.actor.optim.lr"] == "1e-06"
    for name in scale_names():  # no grid run sets a field the scale owns
        for path in RUNS.glob("*.yaml"):
            build_job(load_config(path), load_scale(name))
    # every run-config field is either the scale's on verl or read from the run config: a new
    # field must be placed on one side (RUN_OWNED is what build_job reads from the run config)
    RUN_OWNED = {
        "name",
        "group",
        "method",
        "backend",
        "seed",
        "optim.eps_low",
        "optim.eps_high",
        "optim.clip_ratio_c",
        "optim.loss_agg_mode",
        "train.steps_frac",
        "train.keep_checkpoints_at",
        "train.init_from",
        "train.sources",
    }
    sections = ("gate", "stability", "pts", "sft")

    def leaves(model, prefix=""):
        for k in type(model).model_fields:
            v = getattr(model, k)
            yield from leaves(v, f"{prefix}{k}.") if hasattr(type(v), "model_fields") else [prefix + k]

    fields = set(leaves(RunConfig()))
    assert fields - set(SCALE_OWNED) - RUN_OWNED == {f for f in fields if f.split(".")[0] in sections}
    assert set(SCALE_OWNED) <= fields


def test_paper_parity_switches_map_onto_verls_own_fields():
    """docs/algorithm.md section 11: the dual clip and the aggregation are verl's own
    (``clip_ratio_c``, ``actor.loss_agg_mode``); the neutral reading is a gate field."""
    dl, actor = "distillation.distillation_loss", "actor_rollout_ref.actor"
    gopd = ["optim.clip_ratio_c=3.0", "optim.loss_agg_mode=seq-mean-token-mean"]
    default = as_dict(job("gate-1.5"))
    assert (default[f"{dl}.clip_ratio_c"], default[f"{actor}.clip_ratio_c"]) == ("1000000000.0",) * 2
    assert (default[f"{actor}.loss_agg_mode"], default[f"{dl}.neutral_mode"]) == ("token-mean", "base")
    d = as_dict(build_job(load_config(RUNS / "gate-1.5.yaml", [*gopd, "gate.neutral_mode=opd"]), load_scale("paper")))
    assert (d[f"{dl}.clip_ratio_c"], d[f"{actor}.clip_ratio_c"]) == ("3.0", "3.0")
    assert (d[f"{actor}.loss_agg_mode"], d[f"{dl}.neutral_mode"]) == ("seq-mean-token-mean", "opd")
    # OPD without PTS runs stock k1, which cannot take a clip_ratio_c: with a dual clip it
    # takes the sgopd loss with the gate off at lambda 1 (OPD), still without a reference.
    assert as_dict(build_job(load_config(RUNS / "opd.yaml", gopd[1:]), load_scale("paper")))[f"{dl}.loss_mode"] == "k1"
    opd = as_dict(build_job(load_config(RUNS / "opd.yaml", gopd), load_scale("paper")))
    assert (opd[f"{dl}.loss_mode"], opd[f"{dl}.sign_gate"], opd[f"{dl}.lambda_base"]) == ("sgopd", "false", "1.0")
    assert (opd[f"{dl}.clip_ratio_c"], opd[f"{actor}.loss_agg_mode"], opd[f"{actor}.use_kl_loss"]) == (
        "3.0",
        "seq-mean-token-mean",
        "false",
    )
    grpo = as_dict(build_job(load_config(RUNS / "grpo.yaml", gopd), load_scale("paper")))
    assert (grpo[f"{actor}.clip_ratio_c"], grpo[f"{actor}.loss_agg_mode"]) == ("3.0", "seq-mean-token-mean")
    # SG-OPD with PTS: the actor's aggregation, which the PTS trainer hands to its row scales
    sg = as_dict(build_job(load_config(RUNS / "sgopd.yaml", gopd), load_scale("paper")))
    assert (sg[f"{dl}.clip_ratio_c"], sg[f"{actor}.loss_agg_mode"]) == ("3.0", "seq-mean-token-mean")
    assert as_dict(build_job(load_config(RUNS / "sgopd.yaml", gopd[:1]), load_scale("paper")))[f"{dl}.clip_ratio_c"] == "3.0"


def test_a_run_trains_its_share_of_the_scales_steps():
    paper = load_scale("paper")
    assert job("sgopd").steps == paper.train.steps == 200
    assert as_dict(job("timesep-stage1"))["trainer.total_training_steps"] == "70"  # steps_frac 0.35
    assert as_dict(job("timesep-1.5"))["trainer.total_training_steps"] == "130"  # steps_frac 0.65
    assert job("timesep-1.5").steps + job("timesep-stage1").steps == paper.train.steps


def test_cli_verbs(capsys):
    from workbench.backends.verl.cli import add_verbs

    parser = argparse.ArgumentParser(prog="workbench")
    add_verbs(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["verl-overrides", "--run", "gate-1.5", "--runs-dir", str(RUNS), "--format", "json"])
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == "gate-1.5" and "distillation.distillation_loss.loss_mode=sgopd" in out["overrides"]
    args = parser.parse_args(
        [
            "verl-launch",
            "--run",
            "sgopd",
            "--runs-dir",
            str(RUNS),
            "--dry-run",
            "--mlflow-run-id",
            "abc123",
            "--tracking-uri",
            "sqlite:///x.db",
        ]
    )
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "MLFLOW_RUN_ID=abc123" in text and "+ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_RUN_ID=abc123" in text
    assert "workbench.backends.verl.main" in text and "verl.model_merger" not in text  # merge runs via launch


def test_metrics_are_mapped_to_spec_names():
    from workbench.backends.verl.metrics import canonical_metrics

    m = canonical_metrics(
        {
            "critic/score/mean": 0.25,
            "actor/entropy": 1.5,
            "response_length/mean": 900.0,
            "timing_s/step": 30.0,
            "perf/throughput": 1000.0,
            "actor/grad_norm": 0.5,
            "actor/distillation/pg_clipfrac": 0.1,
            "actor/train/conflict_frac": 0.9,
            "actor/sgopd/n_valid": 100,
            "actor/sgopd/n_neutral": 20,
            "actor/sgopd/n_conflict": 20,
            "actor/sgopd/n_consensus": 60,
            "actor/sgopd/adv_sum": 50.0,
            "actor/sgopd/kl_teacher_sum": 10.0,
        },
        n_gpus=4,
    )
    assert m["train/reward_mean"] == 0.25 and m["perf/tokens_per_second"] == 4000.0
    assert m["train/conflict_frac"] == 0.25 and m["train/consensus_frac"] == 0.75  # exact, from the counts
    assert m["train/neutral_frac"] == 0.2 and m["train/adv_mean"] == 0.5 and m["train/kl_teacher"] == 0.1
    assert m["train/clipfrac"] == 0.1 and m["perf/step_seconds"] == 30.0


def test_pts_plan_follows_the_schedule():
    from workbench.backends.verl import pts_plan

    pts = {
        "enabled": True,
        "teacher_sampling_ratio": 0.125,
        "phase1_end_frac": 0.3,
        "phase2_end_frac": 0.35,
        "alpha0": 1.0,
        "alpha1": 0.1,
    }
    first = pts_plan.step_plan(1, 200, 64, pts)  # verl's step 1 is docs/algorithm.md's step 0
    assert (first.active, first.n_prompts, first.alpha) == (True, 8, 1.0)
    assert pts_plan.prompt_flags(64, first).count(True) == 8
    assert not pts_plan.step_plan(71, 200, 64, pts).active  # f = 70 / 200 = 0.35
    assert pts_plan.step_plan(70, 200, 64, pts).active
    assert not pts_plan.step_plan(1, 200, 64, {**pts, "enabled": False}).active


def test_verl_check_validates_every_grid_run():
    pytest.importorskip("verl")
    from workbench.backends.verl.check import check_grid

    results = check_grid(load_scale("paper"), RUNS)
    assert len(results) == len(list(RUNS.glob("*.yaml")))
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_verl_check_validates_the_smallest_layout():
    """gpu-smoke: 1 student GPU, and verl's own teacher pool of 1 GPU for distillation runs."""
    pytest.importorskip("verl")
    from workbench.backends.verl.check import check_grid, check_job

    scale = load_scale("gpu-smoke")
    kinds = ["sgopd", "opd", "gkd", "grpo", "sft", "timesep-stage1", "timesep-1.5"]  # every kind of verl job
    results = {r.run_id: r for r in check_grid(scale, RUNS, kinds)}
    assert all(r.ok for r in results.values()), "\n".join(r.line() for r in results.values())
    assert {k: results[k].gpus for k in kinds} == {
        "sgopd": 2,
        "opd": 2,
        "gkd": 2,
        "grpo": 1,
        "sft": 1,
        "timesep-stage1": 1,
        "timesep-1.5": 2,
    }
    assert as_dict(job("timesep-stage1", "gpu-smoke"))["trainer.total_training_steps"] == "1"
    # the job's GPU request must be what verl's resource pools take
    bad = build_job(load_config(RUNS / "sgopd.yaml"), load_scale("gpu-smoke", ["verl_extra=[trainer.n_gpus_per_node=2]"]))
    res = check_job(bad)
    assert not res.ok and "resource pools take 3 GPUs but the job requests 2" in " ".join(res.errors)


def test_verl_check_composes_the_overrides_into_verl_config():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    from workbench.backends.verl.check import check_job, compose

    j = job("probe-two-level")
    assert check_job(j).ok
    cfg = compose(j)
    loss = omega_conf_to_dataclass(cfg.distillation).distillation_loss
    assert (loss.gate_levels, loss.cell_lambda_neg_neg, loss.cell_beta_pos_neg) == (4, 1.25, 1.0)
    assert loss.clip_ratio_c == 1e9 and loss.loss_max_clamp is None
    assert OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size") == 64
    gopd = build_job(
        load_config(RUNS / "exopd-1.25.yaml", ["optim.clip_ratio_c=3.0", "optim.loss_agg_mode=seq-mean-token-mean"]),
        load_scale("paper"),
    )
    assert check_job(gopd).ok
    cfg = compose(gopd)
    assert omega_conf_to_dataclass(cfg.distillation).distillation_loss.clip_ratio_c == 3.0
    assert OmegaConf.select(cfg, "actor_rollout_ref.actor.loss_agg_mode") == "seq-mean-token-mean"
    broken = build_job(load_config(RUNS / "gate-1.5.yaml"), load_scale("paper", ["cluster.teacher_gpus_per_node=3"]))
    res = check_job(broken)  # tp 2 does not divide a pool of 3
    assert not res.ok and "divide" in " ".join(res.errors)


def test_verl_gets_the_mini_trainers_adamw_betas():
    """verl's actor and SFT trainer use the betas of the mini trainer (issue #12: one
    optimiser setting everywhere), whatever verl's own default (mini's side:
    test_every_grid_run_trains_and_evaluates)."""
    pytest.importorskip("verl")
    from omegaconf import OmegaConf

    from workbench.backends.verl.check import compose
    from workbench.config import ADAM_BETAS

    for run, key in (("sgopd", "actor_rollout_ref.actor.optim.betas"), ("seqkd", "optim.betas")):
        assert tuple(OmegaConf.select(compose(job(run)), key)) == ADAM_BETAS, run


def test_adding_the_verbs_imports_neither_verl_nor_torch():
    import subprocess
    import sys

    code = (
        "import argparse, sys; from workbench.backends.verl.cli import add_verbs; "
        "p = argparse.ArgumentParser(); add_verbs(p.add_subparsers()); "
        "print(sorted(m for m in ('verl', 'torch', 'ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_loss_target_names_the_loss_config_class():
    """overrides.py cannot import the loss module (it imports verl): its ``_target_`` string
    must still name ``SGOPDLossConfig`` where it lives."""
    pytest.importorskip("verl")  # the verl extra is optional
    from workbench.backends.verl import loss
    from workbench.backends.verl.overrides import LOSS_TARGET

    assert LOSS_TARGET == f"{loss.SGOPDLossConfig.__module__}.{loss.SGOPDLossConfig.__qualname__}"


def test_one_rule_decides_the_reference_model_on_both_backends():
    """``RunConfig.needs_reference``: the mini trainer loads a reference model and the verl job
    asks for a reference policy for exactly the same grid runs (routed PG runs with a lambda != 1
    that the routing reads)."""
    want = {
        "exopd-1.25",
        "exopd-1.25-single-source",
        "exopd-1.8",
        "gate-1.5",
        "gate-1.5-preserve",
        "gate-1.8-pass",
        "gate-1.8-shrink",
        "probe-grpo-fallback",
        "probe-two-level",
        "sgopd",
        "sgopd-1.5",
        "timesep-1.5",
        "timesep-1.8",
    }
    got = {p.stem for p in RUNS.glob("*.yaml") if load_config(p).needs_reference()}
    assert got == want  # exopd-1.25-interp-all: every token gets 0.5 A_OPD, free of lp_ref
    # verl: the reference policy is on (use_kl_loss, at coefficient 0) for exactly those runs
    on_verl = {p.stem for p in RUNS.glob("*.yaml") if as_dict(job(p.stem)).get("actor_rollout_ref.actor.use_kl_loss") == "true"}
    assert on_verl == want
