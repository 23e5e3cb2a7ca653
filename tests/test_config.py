"""Run-config validation: every documented error names its field; valid configs round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from workbench.algo import FALLBACKS, STABILITY_WEIGHTS
from workbench.config import ConfigError, RunConfig, load_config, parse_config
from workbench.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
GRID = sorted((REPO / "experiments" / "runs").glob("*.yaml"))

SPEC_GRID = {
    "sft",
    "seqkd",
    "gkd",
    "opd",
    "exopd-1.25",
    "exopd-1.25-single-source",
    "exopd-1.8",
    "exopd-1.25-interp-all",
    "gate-1.8-pass",
    "gate-1.5",
    "gate-1.8-shrink",
    "gate-1.5-preserve",
    "pts-30-35",
    "pts-50-70",
    "pts-40-45",
    "pts-60-65",
    "pts-60-80",
    "pts-50-70-ratio2",
    "sgopd",
    "sgopd-1.5",
    "timesep-stage1",
    "timesep-1.5",
    "timesep-1.8",
    "probe-two-level",
    "probe-grpo-fallback",
}


def err(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


def test_defaults_are_the_sgopd_recipe():
    c = parse_config({})
    assert c.method == "sgopd" and c.gate.sign_gate and c.pts.enabled
    assert (c.gate.lambda_base, c.gate.lambda_high, c.gate.disagree_mode, c.gate.disagree_interp_beta) == (
        1.25,
        1.8,
        "interp",
        0.5,
    )
    assert (c.stability.mode, c.stability.clip) == ("phi", 2.0)
    assert (c.pts.teacher_sampling_ratio, c.pts.phase1_end_frac, c.pts.phase2_end_frac) == (0.125, 0.30, 0.35)
    assert (c.pts.alpha0, c.pts.alpha1, c.pts.filter_correct) == (1.0, 0.1, True)
    assert (c.optim.eps_low, c.optim.eps_high, c.rollout.group_size) == (0.2, 0.2, 8)


def test_config_is_frozen():
    c = parse_config({})
    with pytest.raises(ValidationError):
        c.gate.lambda_high = 3.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        c.method = "opd"  # type: ignore[misc]


@pytest.mark.parametrize(
    "method, expect",
    [
        ("opd", {"gate.sign_gate": False, "gate.lambda_base": 1.0, "stability.mode": "none", "pts.enabled": False}),
        ("exopd", {"gate.sign_gate": False, "gate.lambda_base": 1.25, "stability.mode": "none"}),
        ("sgopd", {"gate.sign_gate": True, "stability.mode": "phi", "pts.enabled": True}),
        ("sft", {"pts.enabled": False, "sft.teacher_decoding": "sample"}),
        ("seqkd", {"sft.teacher_decoding": "greedy"}),
    ],
)
def test_method_defaults(method, expect):
    c = parse_config({"method": method})
    for dotted, value in expect.items():
        assert c.get(dotted) == value, dotted


def test_file_values_override_method_defaults():
    c = parse_config({"method": "opd", "pts": {"enabled": True}, "stability": {"mode": "phi"}})
    assert c.pts.enabled and c.stability.mode == "phi" and not c.gate.sign_gate


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"method": "nope"}, "method", ["sgopd", "opd", "gkd"]),
        ({"gate": {"disagree_mode": "nope"}}, "gate.disagree_mode", list(FALLBACKS.names())),
        ({"stability": {"mode": "nope"}}, "stability.mode", list(STABILITY_WEIGHTS.names())),
        ({"backend": "nope"}, "backend", ["mini", "verl"]),
        ({"pts": {"phase1_end_frac": 0.5, "phase2_end_frac": 0.4}}, "phase1_end_frac", ["phase2_end_frac"]),
        ({"pts": {"phase1_end_frac": 0.35, "phase2_end_frac": 0.35}}, "phase1_end_frac", []),
        ({"pts": {"phase2_end_frac": 1.2}}, "pts.phase2_end_frac", []),
        ({"pts": {"teacher_sampling_ratio": 0}}, "pts.teacher_sampling_ratio", []),
        ({"gate": {"disagree_interp_beta": -0.1}}, "gate.disagree_interp_beta", []),
        ({"gate": {"lambda_high": 0}}, "gate.lambda_high", []),
        ({"gate": {"lambda_base": -1.0}}, "gate.lambda_base", []),
        ({"eval": {"k": 0}}, "eval.k", []),
        ({"eval": {"k": 16, "n_samples": 8}}, "k (16) must be <= n_samples (8)", []),
        ({"gate": {"typo": 1}}, "gate.typo", ["unknown key", "lambda_high"]),
        ({"typo": 1}, "typo", ["unknown key", "gate"]),
        ({"method": "opd", "gate": {"sign_gate": True}}, "gate.sign_gate", ["opd"]),
        ({"method": "opd", "gate": {"lambda_base": 1.25}}, "gate.lambda_base", ["opd"]),
        ({"method": "exopd", "gate": {"lambda_base": 1.0}}, "gate.lambda_base", ["exopd"]),
        ({"method": "sft", "pts": {"enabled": True}}, "pts.enabled", ["sft"]),
        ({"gate": {"cell_beta_pos_neg": 0.5}}, "cell_beta_pos_neg", ["gate_levels"]),
        ({"gate": {"gate_levels": 3}}, "gate.gate_levels", []),
        ({"optim": {"warmup_steps": 500}, "train": {"steps": 100}}, "optim.warmup_steps", []),
        ({"rollout": {"group_size": 0}}, "rollout.group_size", []),
        ({"optim": {"clip_ratio_c": 1.0}}, "optim.clip_ratio_c", ["greater than 1"]),
        ({"optim": {"loss_agg_mode": "seq-mean"}}, "optim.loss_agg_mode", ["'token-mean'", "'seq-mean-token-mean'"]),
        ({"gate": {"neutral_mode": "zero"}}, "gate.neutral_mode", ["'base'", "'consensus'", "'opd'", "'mask'"]),
        ({"method": "exopd", "gate": {"neutral_mode": "opd"}}, "neutral_mode", ["sign_gate"]),
        ({"gate": {"neutral_mode": "mask", "gate_all_tokens_as": "conflict"}}, "neutral_mode", ["gate_all_tokens_as"]),
        ({"method": "sft", "optim": {"clip_ratio_c": 3.0}}, "optim.clip_ratio_c", ["sft"]),
        ({"method": "gkd", "optim": {"loss_agg_mode": "seq-mean-token-mean"}}, "optim.loss_agg_mode", ["gkd"]),
    ],
)
def test_bad_configs_name_the_field(data, field, words):
    msg = err(data)
    assert field in msg
    for w in words:
        assert w in msg


def test_load_config_from_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("method: exopd\ngate: {lambda_base: 1.5}\n")
    c = load_config(p, ["gate.lambda_base=1.8", "seed=3"])
    assert (c.method, c.gate.lambda_base, c.seed) == ("exopd", 1.8, 3)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    p.write_text("gate: {lambda_high: [\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(p)
    p.write_text("{}\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, ["novalue"])


def test_grid_configs_cover_spec_and_validate():
    names = {p.stem for p in GRID}
    assert SPEC_GRID <= names, SPEC_GRID - names
    assert "pts-30-35-nofilter" in names
    for p in GRID:
        c = load_config(p)
        assert c.name == p.stem
        # YAML lists only differences from the defaults: resolving its own diff is identity.
        assert parse_config(c.diff_from_defaults() | {"name": c.name, "group": c.group}) == c


def test_grid_semantics():
    g = {p.stem: load_config(p) for p in GRID}
    assert g["opd"].gate.lambda_base == 1.0 and not g["opd"].gate.sign_gate
    assert g["exopd-1.8"].gate.lambda_base == 1.8 and g["exopd-1.8"].stability.mode == "none"
    assert g["exopd-1.25-interp-all"].gate.gate_all_tokens_as == "conflict"
    assert g["gate-1.8-pass"].gate.disagree_interp_beta == 1.0 and not g["gate-1.8-pass"].pts.enabled
    assert g["gate-1.5-preserve"].gate.disagree_mode == "preserve"
    assert g["pts-30-35"].method == "opd" and g["pts-30-35"].pts.enabled and g["pts-30-35"].stability.mode == "none"
    assert g["pts-50-70-ratio2"].pts.teacher_sampling_ratio == 2 * parse_config({}).pts.teacher_sampling_ratio
    assert not g["pts-30-35-nofilter"].pts.filter_correct
    s = g["sgopd"]
    assert s.gate.sign_gate and s.pts.enabled and s.stability.mode == "phi" and s.gate.lambda_high == 1.8
    assert 0.9 in s.train.keep_checkpoints_at
    assert g["timesep-1.5"].train.init_from == "timesep-stage1"
    # The two stages split the common step budget.
    assert g["timesep-stage1"].train.steps_frac + g["timesep-1.5"].train.steps_frac == pytest.approx(1.0)
    assert g["timesep-stage1"].sft.filter_correct and g["timesep-stage1"].sft.teacher_budget == "pts"
    assert g["probe-two-level"].gate.gate_levels == 4
    assert g["probe-grpo-fallback"].gate.disagree_mode == "grpo"
    assert g["exopd-1.25-single-source"].train.sources == ("A",)


def test_paper_parity_switches_reach_the_algo_functions_unchanged():
    """docs/algorithm.md section 11: the G-OPD fork's loss and the neutral readings are run-config
    options whose defaults are the project's reading, passed to the pure functions as keywords."""
    import inspect

    from workbench.algo import ppo_clip_loss
    from workbench.algo.gate import NEUTRAL_MODES
    from workbench.algo.losses import LOSS_AGG_MODES
    from workbench.config import GateConfig, OptimConfig

    c = parse_config({})
    assert c.optim.pg_loss_kwargs() == {"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": None, "loss_agg_mode": "token-mean"}
    assert c.gate.route_kwargs()["neutral_mode"] == "base"
    keywords = {n for n, p in inspect.signature(ppo_clip_loss).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(c.optim.pg_loss_kwargs()) == keywords
    assert OptimConfig.model_fields["loss_agg_mode"].annotation.__args__ == LOSS_AGG_MODES
    assert GateConfig.model_fields["neutral_mode"].annotation.__args__ == NEUTRAL_MODES
    gopd = parse_config({"optim": {"clip_ratio_c": 3.0, "loss_agg_mode": "seq-mean-token-mean"}, "gate": {"neutral_mode": "opd"}})
    assert gopd.optim.pg_loss_kwargs()["clip_ratio_c"] == 3.0 and gopd.gate.route_kwargs()["neutral_mode"] == "opd"
    assert parse_config({"method": "grpo", "optim": {"clip_ratio_c": 3}}).optim.clip_ratio_c == 3.0


def test_options_added_later_keep_the_hash_of_runs_recorded_before_them():
    # Pinned: these configs' hashes before gate.neutral_mode, optim.clip_ratio_c and
    # optim.loss_agg_mode existed (a run recorded then must still resume).
    assert parse_config({}).config_hash() == "7dc155cea63adb41"
    assert parse_config({"method": "opd"}).config_hash() == "b7a9208416f61553"
    for option in (
        {"gate": {"neutral_mode": "mask"}},
        {"optim": {"clip_ratio_c": 3.0}},
        {"optim": {"loss_agg_mode": "seq-mean-token-mean"}},
    ):
        assert parse_config(option).config_hash() != "7dc155cea63adb41", option


def test_hash_and_overrides():
    a = parse_config({"method": "opd"})
    assert a.config_hash() == parse_config({"method": "opd", "name": "other"}).config_hash()
    b = a.with_overrides({"seed": 1})
    assert b.seed == 1 and b.config_hash() != a.config_hash()
    with pytest.raises(ConfigError, match="gate.sign_gate"):
        a.with_overrides(["gate.sign_gate=true"])


# -- fuzzing -----------------------------------------------------------------------------

fractions = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
method_names = st.sampled_from(list(METHODS.names()) + ["bogus"])


@settings(max_examples=300, deadline=None)
@given(
    method=method_names,
    p1=fractions,
    p2=fractions,
    ratio=fractions,
    beta=fractions,
    lam_base=st.floats(min_value=-1, max_value=3, allow_nan=False),
    lam_high=st.floats(min_value=-1, max_value=3, allow_nan=False),
    k=st.integers(min_value=-2, max_value=20),
    n=st.integers(min_value=-2, max_value=20),
    mode=st.sampled_from(list(FALLBACKS.names()) + ["bogus"]),
)
def test_fuzz_validation_accepts_exactly_the_valid_configs(method, p1, p2, ratio, beta, lam_base, lam_high, k, n, mode):
    data = {
        "method": method,
        "pts": {"phase1_end_frac": p1, "phase2_end_frac": p2, "teacher_sampling_ratio": ratio},
        "gate": {"disagree_interp_beta": beta, "lambda_high": lam_high, "disagree_mode": mode},
        "eval": {"k": k, "n_samples": n},
    }
    if method not in ("opd",):  # opd fixes lambda_base to 1
        data["gate"]["lambda_base"] = lam_base
    reasons = []
    if method == "bogus":
        reasons.append("method")
    if mode == "bogus":
        reasons.append("gate.disagree_mode")
    if not (0 <= p1 <= 1):
        reasons.append("pts.phase1_end_frac")
    if not (0 <= p2 <= 1):
        reasons.append("pts.phase2_end_frac")
    if 0 <= p1 <= 1 and 0 <= p2 <= 1 and p1 >= p2:
        reasons.append("phase1_end_frac")
    if not (0 < ratio <= 1):
        reasons.append("pts.teacher_sampling_ratio")
    if not (0 <= beta <= 1):
        reasons.append("gate.disagree_interp_beta")
    if lam_high <= 0:
        reasons.append("gate.lambda_high")
    if method != "opd" and lam_base <= 0:
        reasons.append("gate.lambda_base")
    if k <= 0:
        reasons.append("eval.k")
    if n <= 0:
        reasons.append("eval.n_samples")
    if k > 0 and n > 0 and k > n:
        reasons.append("k (")
    if method == "exopd" and 0 < lam_base <= 1:
        reasons.append("gate.lambda_base")
    if reasons:
        with pytest.raises(ConfigError) as e:
            parse_config(data)
        msg = str(e.value)
        # Field-level errors are all reported; model-level ones only once fields are valid.
        assert any(r in msg for r in reasons), (reasons, msg)
    else:
        c = parse_config(data)
        assert isinstance(c, RunConfig)
        assert c.pts.phase1_end_frac < c.pts.phase2_end_frac and c.eval.k <= c.eval.n_samples
        # The resolved config survives a YAML round trip unchanged.
        assert parse_config(yaml.safe_load(c.to_yaml())) == c


def test_the_pure_functions_defaults_are_the_run_configs():
    """One source of truth for hyperparameter defaults: the run config (workbench/config.py).
    The pure functions of workbench.algo keep keyword defaults for direct callers; each must
    equal the config field it is fed from, so a changed default cannot split the two."""
    import inspect

    import workbench.algo as A
    from workbench.config import GateConfig, GKDConfig, OptimConfig, PTSConfig, StabilityConfig

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}

    pairs = [
        (A.route_advantage, GateConfig().route_kwargs()),
        (A.ppo_clip_loss, OptimConfig().pg_loss_kwargs()),
        (A.pts_alpha, PTSConfig().schedule_kwargs()),
        (A.stability_weight, {"mode": StabilityConfig().mode, "clip": StabilityConfig().clip}),
        (A.generalized_jsd_loss, {"beta": GKDConfig().beta}),
    ]
    for fn, config_values in pairs:
        fn_defaults = defaults(fn)
        for key, value in config_values.items():
            assert key in fn_defaults, f"{fn.__name__} has no default for {key}"
            assert fn_defaults[key] == value, f"{fn.__name__}({key}={fn_defaults[key]!r}) but the config's default is {value!r}"


def test_a_scale_sets_the_learning_rate_once_per_method_family(tmp_path):
    """experiments/scales/mini.yaml calibrates lr per family (docs/mini-world.md); --set wins,
    and a family the registry does not know is refused, naming the valid ones."""
    from workbench import grid as G

    runs = {
        "opd": "pg",
        "sgopd": "pg",
        "grpo": "pg",
        "timesep-1.5": "pg",
        "gkd": "gkd",
        "seqkd": "sft",
        "sft-equal-compute": "sft",
    }
    mini = G.load_scale("mini")
    for run, family in runs.items():
        assert METHODS.get(load_config(G.run_file(run)).method).family == family
        cfg = G.resolve_config(G.run_file(run), scale="mini")
        assert cfg.optim.lr == mini.family_overrides[family]["optim"]["lr"], run
        assert G.resolve_config(G.run_file(run), scale="mini", overrides=["optim.lr=0.02"]).optim.lr == 0.02
        assert G.resolve_config(G.run_file(run), scale="smoke").optim.lr == RunConfig().optim.lr  # smoke sets none
    assert (
        G.resolve_config(G.run_file("seqkd"), scale="mini", overrides=["method=opd"]).optim.lr
        == mini.family_overrides["pg"]["optim"]["lr"]
    )
    (tmp_path / "scales").mkdir()
    (tmp_path / "scales" / "bad.yaml").write_text("family_overrides: {imitation: {optim: {lr: 0.1}}}\n")
    with pytest.raises(ConfigError, match="gkd, pg, sft"):
        G.load_scale("bad", experiments=tmp_path)


def test_timesep_stage1_takes_the_imitation_rate_scaled_to_its_batch(tmp_path):
    """timesep-stage1 steps on PTS's anchor batch (rho * P sequences), where the imitation
    family's rate was calibrated on seqkd's P * G: the mini scale gives it the family's rate
    times sqrt(batch ratio) (square-root rule for Adam), after the family's; --set still
    wins; no other run is touched; a run_overrides key that is not a run is refused,
    naming the valid runs."""
    from workbench import grid as G
    from workbench.algo.schedule import pts_prompts_per_step

    mini = G.load_scale("mini")
    cfg = G.resolve_config(G.run_file("timesep-stage1"), scale="mini")
    seqkd = G.resolve_config(G.run_file("seqkd"), scale="mini")
    assert cfg.sft.teacher_budget == "pts" and seqkd.sft.teacher_budget == "pool"
    b = pts_prompts_per_step(cfg.rollout.prompts_per_step, cfg.pts.teacher_sampling_ratio)
    family_batch = seqkd.rollout.prompts_per_step * seqkd.rollout.group_size
    assert (b, family_batch) == (4, 256)
    assert cfg.optim.lr == pytest.approx(mini.family_overrides["sft"]["optim"]["lr"] * (b / family_batch) ** 0.5)
    assert G.resolve_config(G.run_file("timesep-stage1"), scale="mini", overrides=["optim.lr=0.02"]).optim.lr == 0.02
    assert set(mini.run_overrides) == {"timesep-stage1"}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "opd.yaml").write_text("name: opd\nmethod: opd\n")
    (tmp_path / "scales").mkdir()
    (tmp_path / "scales" / "bad.yaml").write_text("run_overrides: {timesep: {optim: {lr: 0.1}}}\n")
    with pytest.raises(ConfigError, match=r"run_overrides must map runs \(opd\)"):
        G.load_scale("bad", experiments=tmp_path)
