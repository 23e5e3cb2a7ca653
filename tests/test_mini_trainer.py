"""End-to-end runs of the mini trainer: every grid method, resume after SIGKILL, NaN stop,
and which advantage and weights reach each method's loss.

Smoke scale (tiny models, a few steps): these check plumbing, bookkeeping and the
contract of the logged metrics, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from workbench.config import ADAM_BETAS, load_config
from workbench.methods import METHODS
from workbench.mini.runs import train_run
from workbench.tracking import load_history

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "experiments" / "runs"
SMOKE = [
    "train.steps=3",
    "train.checkpoint_every=2",
    "rollout.prompts_per_step=2",
    "rollout.group_size=3",
    "eval.n_samples=2",
    "eval.k=2",
    "eval.benchmarks=[bench1, bench4]",
]
CANONICAL_TRAIN = {
    "train/loss",
    "train/grad_norm",
    "train/entropy",
    "train/response_length",
    "perf/step_seconds",
    "perf/tokens_per_second",
}
ON_POLICY = {"train/reward_mean", "train/kl_teacher", "train/conflict_frac", "train/consensus_frac", "train/neutral_frac"}
PTS = {"train/pts_alpha", "train/pts_kept", "train/pts_loss"}


def _order(name: str) -> int:
    return 1 if load_config(RUNS / f"{name}.yaml").train.init_from else 0  # stage 2 after stage 1


# One run per code path in the default suite; the rest of the grid is marked slow.
FAST = {"sft", "gkd", "sgopd", "probe-two-level", "timesep-1.5", "exopd-1.25-single-source", "grpo"}
GRID = [
    pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
    for n in sorted((p.stem for p in RUNS.glob("*.yaml")), key=lambda n: (_order(n), n))
]


@pytest.mark.parametrize("run", GRID)
def test_every_grid_run_trains_and_evaluates(run, smoke_world, tmp_path_factory, store):
    runs_root = tmp_path_factory.getbasetemp() / "grid-runs"
    overrides = list(SMOKE)
    cfg = load_config(RUNS / f"{run}.yaml")
    if cfg.sft.filter_correct:
        # The smoke teacher is untrained and never correct: keep its answers so the loop runs.
        overrides.append("sft.filter_correct=false")
    if cfg.train.init_from:
        stage1 = runs_root / cfg.train.init_from / "seed0"
        if not (stage1 / "final").exists():
            train_run(
                RUNS / f"{cfg.train.init_from}.yaml",
                run_dir=stage1,
                world=smoke_world,
                overrides=SMOKE + ["sft.filter_correct=false"],
                evaluate_final=False,
            )
    run_dir = runs_root / run / "seed0"
    steps = list(range(1, load_config(RUNS / f"{run}.yaml", overrides).train.total_steps + 1))
    result = train_run(RUNS / f"{run}.yaml", run_dir=run_dir, world=smoke_world, overrides=overrides)

    assert set(result["benchmarks"]) == {"bench1", "bench4"} and 0 <= result["avg_at_k"] <= 1
    hist = load_history(run_dir)
    assert [r["step"] for r in hist if "train/loss" in r] == steps
    keys = set().union(*hist)
    assert CANONICAL_TRAIN <= keys
    if cfg.family != "sft":
        assert ON_POLICY <= keys
    if cfg.pts.enabled:
        assert PTS <= keys
    assert {"eval/avg_at_k", "eval/pass_at_k", "eval/bench1/avg_at_k"} <= keys
    # MLflow has the same points, once each, and the run finished.
    state = json.loads((run_dir / "tracking.json").read_text())
    client = mlflow.tracking.MlflowClient()
    mrun = client.get_run(state["run_id"])
    assert mrun.info.status == "FINISHED"
    assert mrun.data.tags["method"] == cfg.method and mrun.data.tags["run"] == run
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "train/loss")] == steps
    assert (run_dir / "final" / "config.json").exists()
    # One optimiser setting for every method (verl's side: test_verl_config).
    [ckpt, *_] = sorted((run_dir / "checkpoints").glob("step-*"), reverse=True)
    groups = torch.load(ckpt / "optimizer.pt", weights_only=True)["param_groups"]
    assert {tuple(g["betas"]) for g in groups} == {ADAM_BETAS}
    # A rerun of a finished run changes nothing.
    assert train_run(RUNS / f"{run}.yaml", run_dir=run_dir, world=smoke_world, overrides=overrides) == result


def test_intermediate_evaluations_are_logged(smoke_world, tmp_path, store):
    run_dir = tmp_path / "sgopd"
    train_run(RUNS / "sgopd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE + ["train.steps=4", "train.eval_every=2"])
    evals = [r["step"] for r in load_history(run_dir) if "eval/avg_at_k" in r]
    assert evals == [2, 4]  # step 2 from the trainer, step 4 the final evaluation
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    hist = mlflow.tracking.MlflowClient().get_metric_history(run_id, "eval/bench1/avg_at_k")
    assert [m.step for m in hist] == [2, 4]


def test_single_source_trains_on_its_source_only(smoke_world):
    from workbench.mini.world import World

    pool = World.open(smoke_world).train_pool(load_config(RUNS / "exopd-1.25-single-source.yaml").train.sources)
    assert pool and {p.source for p in pool} == {"A"}
    with pytest.raises(ValueError, match="unknown source"):
        World.open(smoke_world).train_pool(["Z"])


def _train_cmd(run_dir: Path, world: Path, steps: int) -> list[str]:
    sets = [f"train.steps={steps}", "train.checkpoint_every=2", "rollout.prompts_per_step=2", "rollout.group_size=3"]
    return [
        sys.executable,
        "-m",
        "workbench",
        "train",
        str(RUNS / "sgopd.yaml"),
        "--run-dir",
        str(run_dir),
        "--world",
        str(world),
        "--no-eval",
        *[a for s in sets for a in ("--set", s)],
    ]


def test_resume_after_sigkill_matches_an_uninterrupted_run(smoke_world, tmp_path, store):
    steps = 12
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    subprocess.run(_train_cmd(ref_dir, smoke_world, steps), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(crash_dir, smoke_world, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    # Kill once a checkpoint exists and a later step has been logged but not checkpointed.
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((crash_dir / "checkpoints").glob("step-*/state.json"))
        lines = (crash_dir / "metrics.jsonl").read_text().count("\n") if (crash_dir / "metrics.jsonl").exists() else 0
        if ckpts and lines >= 5 and lines % 2 == 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_history(crash_dir)[-1]["step"]
    assert killed_at < steps

    subprocess.run(_train_cmd(crash_dir, smoke_world, steps), check=True, env=env, capture_output=True)

    ref, resumed = load_history(ref_dir), load_history(crash_dir)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    # Same prompts, same sampling seeds, same weights and optimizer state: same numbers.
    for a, b in zip(ref, resumed):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7), a["step"]
    client = mlflow.tracking.MlflowClient()
    run_id = json.loads((crash_dir / "tracking.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, steps + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 2  # ref + one resumed run


def test_nan_loss_stops_the_run_and_marks_it_failed(smoke_world, tmp_path, store, monkeypatch):
    import workbench.algo as A
    from workbench.tracking import NonFiniteLossError

    real = A.ppo_clip_loss

    def poisoned(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(A, "ppo_clip_loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="nan at step 1"):
        train_run(RUNS / "opd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE)
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    run = mlflow.tracking.MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and "nan" in run.data.tags["failure"]
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("step-*"))


def test_eval_cli_on_world_models(smoke_world, tmp_path):
    out = tmp_path / "teacher.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "eval",
            "teacher",
            "--world",
            str(smoke_world),
            "--out",
            str(out),
            "--set",
            "eval.n_samples=3",
            "--set",
            "eval.k=2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.read_text())
    assert res["label"] == "teacher" and res["n_samples"] == 3 and res["k"] == 2
    assert set(res["benchmarks"]) == {"bench1", "bench2", "bench3", "bench4"}
    for b in res["benchmarks"].values():
        assert len(b["correct"]) > 0 and all(0 <= c <= 3 for c in b["correct"])
    assert "AVG" in r.stdout


def test_a_changed_config_is_refused_and_restart_starts_afresh(smoke_world, tmp_path, store):
    from workbench.errors import UserError

    run_dir = tmp_path / "opd"
    first = train_run(RUNS / "opd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE)
    first_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    # Same config: nothing is redone.
    assert train_run(RUNS / "opd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE) == first
    # A different learning rate is a different run: refused, the finished run kept as it was.
    with pytest.raises(UserError, match="another config.*--restart"):
        train_run(RUNS / "opd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE + ["optim.lr=0.01"])
    assert json.loads((run_dir / "eval.json").read_text()) == first
    # Starting afresh on purpose: a new MLflow run, a fresh history.
    train_run(RUNS / "opd.yaml", run_dir=run_dir, world=smoke_world, overrides=SMOKE + ["optim.lr=0.01"], restart=True)
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["run_id"] != first_id
    assert [r["step"] for r in load_history(run_dir) if "train/loss" in r] == [1, 2, 3]
    assert load_config(run_dir / "config.yaml").optim.lr == 0.01


def test_bucketed_forward_equals_one_padded_batch(smoke_world):
    """Length buckets are a speed-up only: same log-probs, logits and gradients as one batch."""
    from workbench.mini.models import load_model
    from workbench.mini.trainer import forward_logprobs, pack

    model = load_model(Path(smoke_world) / "student")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (13,), generator=g)]
    responses = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in torch.randint(1, 30, (13,), generator=g)]
    ids, mask = pack(prompts, responses, "cpu")
    results = []
    for buckets in (1, 4):
        model.zero_grad()
        logp, logits = forward_logprobs(model, ids, 0.7, buckets=buckets)
        (logp * mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((logp.detach(), logits.detach(), grads))
    (lp1, lg1, g1), (lp4, lg4, g4) = results
    m = mask
    assert torch.allclose(lp1[m], lp4[m], atol=1e-5)
    assert torch.allclose(lg1[m], lg4[m], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g4))


# -- which advantage and weights reach the loss, per method ---------------------------------

# The run config each method of the registry is checked with (its own file where there is one).
RUN_OF = {"exopd": "exopd-1.25"}
WIRING_STEPS = 2  # step 1: the student is the reference; step 2: it has moved away from it


def _grpo_reference(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` per prompt group, unbiased std; 0 for an all-equal group."""
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for g in group_ids.unique():
        idx = (group_ids == g).nonzero().flatten()
        r = rewards[idx].double()
        if bool((r != r[0]).any()):
            out[idx] = (r - r.mean()) / (r.std(unbiased=True) + eps)
    return out


def _expected_advantage(cfg, route: dict) -> torch.Tensor:
    """What the method's token loss should receive, from the inputs of the step (docs/algorithm.md
    sections 2-3), written out here rather than through ``workbench.algo``."""
    a_rl, lp_old, lp_t, lp_ref, mask = (route[k] for k in ("a_rl", "lp_old", "lp_teacher", "lp_ref", "mask"))
    a_rl = a_rl.double()[:, None].expand_as(lp_old)
    lp_old, lp_t, lp_ref = lp_old.double(), lp_t.double(), lp_ref.double()
    a_opd = lp_t - lp_old

    def a_lam(lam):
        return lam * (lp_t - lp_ref) - (lp_old - lp_ref)

    g = cfg.gate
    if cfg.method == "grpo":
        adv = a_rl
    elif cfg.method == "opd":
        adv = a_opd
    elif cfg.method == "exopd":
        assert g.gate_all_tokens_as is None
        adv = a_lam(g.lambda_base)
    elif cfg.method == "sgopd":
        assert (g.gate_levels, g.disagree_mode, g.neutral_mode, g.gate_all_tokens_as) == (2, "interp", "base", None)
        s = torch.sign(a_rl) * torch.sign(a_opd)
        adv = torch.where(s > 0, a_lam(g.lambda_high), torch.where(s < 0, g.disagree_interp_beta * a_opd, a_lam(g.lambda_base)))
    else:
        raise AssertionError(f"no expected advantage written for method {cfg.method!r}")
    return torch.where(mask, adv, torch.zeros_like(adv))


def _expected_weight(cfg, lp_old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The stability weight of docs/algorithm.md section 4 for the run's mode."""
    m = mask.double()
    if cfg.stability.mode == "none":
        return m
    assert cfg.stability.mode == "phi", cfg.stability.mode
    p = lp_old.double().exp()
    phi = p * (1 - p) * m
    n = m.sum()
    w = torch.minimum(phi, cfg.stability.clip * phi.sum() / n) * m
    return w / (w.sum() / n)


@pytest.mark.parametrize("run", [*[RUN_OF.get(name, name) for name in METHODS], "pts-30-35-nofilter"])
def test_each_method_feeds_its_own_advantage_and_weights_to_its_loss(run, smoke_world, tmp_path, monkeypatch):
    """Record what reaches workbench.algo's losses in the mini trainer and recompute it here:
    a method wired to another's advantage, weight or loss fails."""
    import shutil

    import workbench.algo as A
    import workbench.mini.trainer as T

    assert set(METHODS) == {"sft", "seqkd", "gkd", "opd", "exopd", "sgopd", "grpo"}, "a new method needs its check here"
    world = tmp_path / "world"
    shutil.copytree(smoke_world, world, ignore=shutil.ignore_patterns("teacher_data"))  # a private teacher cache
    calls: dict[str, list[dict]] = {k: [] for k in ("grpo", "route", "ppo", "nll", "jsd", "pts")}

    def record(name, real, keys):
        def wrapper(*args, **kwargs):
            calls[name].append(
                {
                    **{k: (a.detach().clone() if isinstance(a, torch.Tensor) else a) for k, a in zip(keys, args)},
                    **kwargs,
                }
            )
            return real(*args, **kwargs)

        monkeypatch.setattr(A, real.__name__, wrapper)

    record("grpo", A.grpo_advantage, ("rewards", "group_ids"))
    record("route", A.route_advantage, ("a_rl", "lp_old", "lp_teacher", "lp_ref", "mask"))
    record("ppo", A.ppo_clip_loss, ("lp_new", "lp_old", "adv", "weight", "mask"))
    record("nll", A.nll_loss, ("logp", "mask"))
    record("jsd", A.generalized_jsd_loss, ("logits", "t_logits", "mask"))
    record("pts", A.pts_anchor_loss, ("logp", "mask", "kept"))
    # The smoke models are never right: a reward from the response's length gives every
    # group a contrast, so that the gate has consensus and conflict tokens to route.
    monkeypatch.setattr(T, "verify", lambda problem, text: len(text) % 2 == 0)

    P, G = 4, 4
    cfg = load_config(
        RUNS / f"{run}.yaml",
        [f"train.steps={WIRING_STEPS}", f"rollout.prompts_per_step={P}", f"rollout.group_size={G}", "sft.filter_correct=false"],
    )
    method = METHODS.get(cfg.method)
    T.train(cfg, tmp_path / "run", world, device="cpu")

    per_step = {k: len(v) for k, v in calls.items()}
    n = WIRING_STEPS
    if method.family == "sft":
        assert per_step == {"grpo": 0, "route": 0, "ppo": 0, "nll": n, "jsd": 0, "pts": 0}
        assert all(c["logp"].shape[0] == P * G for c in calls["nll"])
        return
    # The PTS anchor only while the teacher samples: 2 steps of a 30/35 schedule, the first.
    pts_calls = 1 if cfg.pts.enabled else 0
    if method.family == "gkd":
        assert per_step == {"grpo": n, "route": 0, "ppo": 0, "nll": 0, "jsd": n, "pts": pts_calls}
        assert all(c["beta"] == cfg.gkd.beta for c in calls["jsd"])
        assert not torch.equal(calls["jsd"][0]["logits"], calls["jsd"][0]["t_logits"])
        return
    assert per_step == {"grpo": n, "route": n, "ppo": n, "nll": 0, "jsd": 0, "pts": pts_calls}
    if cfg.pts.enabled and not cfg.pts.filter_correct:
        assert bool(calls["pts"][0]["kept"].all())

    contrast = False
    for step, (grpo, route, ppo) in enumerate(zip(calls["grpo"], calls["route"], calls["ppo"])):
        mask = route["mask"]
        # the outcome advantage from the step's rewards, per prompt group of G rollouts
        assert torch.equal(grpo["group_ids"], torch.arange(P * G) // G)
        assert torch.allclose(route["a_rl"].double(), _grpo_reference(grpo["rewards"], grpo["group_ids"]), atol=1e-5)
        contrast |= bool((route["a_rl"] != 0).any())
        # one PPO epoch on fresh samples; the teacher and the reference scored the same tokens
        assert torch.equal(ppo["lp_old"], route["lp_old"]) and torch.equal(ppo["mask"], mask)
        assert torch.equal(ppo["lp_new"], ppo["lp_old"])
        assert not torch.equal(route["lp_teacher"][mask], route["lp_old"][mask])
        if cfg.needs_reference() and step > 0:
            assert not torch.equal(route["lp_ref"][mask], route["lp_old"][mask])  # the frozen start, not the student
        expected = _expected_advantage(cfg, route)
        assert torch.allclose(ppo["adv"].double(), expected, atol=1e-5), f"step {step + 1}: wrong advantage"
        weight = _expected_weight(cfg, route["lp_old"], mask)
        assert torch.allclose(ppo["weight"].double(), weight, atol=1e-5), f"step {step + 1}: wrong weights"
        assert (ppo["eps_low"], ppo["eps_high"]) == (cfg.optim.eps_low, cfg.optim.eps_high)
        if cfg.method == "sgopd":
            # the gate had both kinds of token to tell apart, so another method's advantage differs
            s = torch.sign(route["a_rl"])[:, None] * torch.sign(route["lp_teacher"] - route["lp_old"])
            assert bool((s[mask] > 0).any()) and bool((s[mask] < 0).any())
            assert cfg.stability.mode == "phi"
    assert contrast, "the fake verifier gave no group a contrast: the check would be weak"


@pytest.mark.parametrize("run", ["timesep-stage1", "sft"])
def test_time_separated_stage1_uses_pts_teacher_data_as_pts_does(run, smoke_world, monkeypatch):
    """Stage 1 takes its responses in order, as many a step as an active PTS step anchors on
    (about one pass over PTS's teacher data, issue #12); the pool budget draws P * G a step."""
    import workbench.algo as A
    from workbench.methods import METHODS
    from workbench.mini import trainer
    from workbench.mini.models import load_model

    cfg = load_config(RUNS / f"{run}.yaml", ["rollout.prompts_per_step=16", "rollout.group_size=4"])
    data = [([1, 2], [4 + i % 10, 2]) for i in range(9)]
    model = load_model(Path(smoke_world) / "student")
    setup = trainer.Setup(cfg, METHODS.get(cfg.method), "cpu", model, model, None, [], data, 8)
    batches = []
    real_pack = trainer.pack
    monkeypatch.setattr(trainer, "pack", lambda p, r, d: batches.append(r) or real_pack(p, r, d))
    for step in range(4):
        trainer.sft_step(setup, step, torch.Generator())
    if run == "timesep-stage1":
        b = A.pts_prompts_per_step(16, cfg.pts.teacher_sampling_ratio)
        assert b == 2 and [len(x) for x in batches] == [b] * 4
        assert [r for x in batches for r in x] == [data[i % 9][1] for i in range(4 * b)]  # in order, each once per pass
    else:
        assert [len(x) for x in batches] == [64] * 4
