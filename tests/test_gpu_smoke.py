"""The GPU install pins and ``make gpu-smoke``: everything of it a CPU can run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

pytest.importorskip("verl")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from workbench.backends.verl import stage
from workbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "benchmarks" / "gpu_smoke.py")
gpu_smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_smoke)


def pins(reqs) -> dict[str, str]:
    """name -> exact version of the ``==`` requirements."""
    out = {}
    for r in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^;\s]+)\s*(;.*)?", r)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def verl_extra(name: str) -> dict[str, str]:
    return pins(r.split(";")[0] for r in requires("verl") if re.search(rf'extra == "{name}"', r))


def test_the_gpu_install_pins_what_verl_was_tested_with():
    tested = verl_extra("vllm")  # verl 0.9.1's own vllm extra: torch, vllm, transformers, ...
    assert {"torch", "vllm", "transformers"} <= set(tested)
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    ours = pins(gpu)
    assert set(ours) == {"torch", "vllm", "transformers"} and len(ours) == len(gpu)  # every entry an exact pin
    assert {k: tested[k] for k in ours} == ours
    assert stage.GPU_STACK == ours  # what check-gpu-env and gpu-smoke compare against
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^GPU_TORCH_VERSION \?= (\S+)$", make, re.MULTILINE).group(1) == tested["torch"]
    flash = verl_extra("flash-attn-cu130torch211")["flash-attn"]
    assert re.search(r"^FLASH_ATTN_VERSION \?= (\S+)$", make, re.MULTILINE).group(1) == flash


def test_a_cpu_torch_is_refused():
    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch")
    with pytest.raises(UserError, match=r"CPU build \(torch.version.cuda is None\).*make setup-gpu"):
        stage.require_cuda_torch("gpu-smoke")
    r = subprocess.run(
        [sys.executable, "-m", "workbench.backends.verl.stage", "check-gpu-env"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 1 and "error: setup-gpu: torch" in r.stderr and "CPU build" in r.stderr


def test_sgopd_needs_two_gpus_and_one_gpu_runs_grpo():
    assert gpu_smoke.pick_run("auto", 2, dry_run=False) == ("sgopd", None)
    run, why = gpu_smoke.pick_run("auto", 1, dry_run=False)
    assert run == "grpo" and "sgopd needs 2 GPUs" in why and "has 1" in why
    assert gpu_smoke.pick_run("auto", 0, dry_run=True) == ("sgopd", None)
    assert gpu_smoke.pick_run("opd", 1, dry_run=False) == ("opd", None)


def test_the_toy_tokenizer_and_models_load_like_hub_snapshots(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from workbench.backends.verl.testing import save_toy_model, toy_tokenizer

    out = save_toy_model(tmp_path / "student", "student", steps=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    text = "Ünïcode ∫ x² \\boxed{7}"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    cfg = AutoConfig.from_pretrained(tmp_path / "student")
    assert cfg.vocab_size == len(toy_tokenizer()) and cfg.head_dim == 64 and cfg.eos_token_id == tok.eos_token_id
    assert out["parameters"] > 0


def test_the_assertions_catch_missing_outputs(tmp_path, monkeypatch):
    """Nothing trained, no evaluation, an MLflow run with only eval metrics: every check fails,
    naming what is missing."""
    from mlflow.tracking import MlflowClient

    from workbench.backends.verl.overrides import run_paths

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder lands here, not in the checkout
    paths = run_paths(tmp_path / "runs", "gpu-smoke", "sgopd", 0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))
    for k in gpu_smoke.EVAL:
        client.log_metric(run.info.run_id, k, 50.0, step=3)
    state = tmp_path / "verl_run.json"
    state.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))
    smoke = gpu_smoke.Smoke(tmp_path / "out", dry_run=False)
    got = gpu_smoke.assertions(smoke, paths, "sgopd", 3, uri, state, trained=True, eval_dir=tmp_path / "eval", n_samples=2)
    assert not any(a["ok"] for a in got.values())
    assert "no global_step_" in got["checkpoint"]["error"] and "no merged model" in got["merged_model"]["error"]
    assert "results.json" in got["eval_results"]["error"]
    missing = got["mlflow_history"]["error"]
    assert all(k in missing for k in (*gpu_smoke.GATE, *gpu_smoke.PTS)) and "eval/" not in missing
    # untrained (the dry run): the eval metrics alone pass
    got = gpu_smoke.assertions(smoke, paths, "sgopd", 3, uri, state, trained=False, eval_dir=tmp_path / "eval", n_samples=2)
    assert got["mlflow_history"]["ok"] and "not_run" in got["checkpoint"]


def test_make_gpu_smoke_dry_run_is_the_scripts_dry_run():
    if shutil.which("make") is None:
        pytest.skip("no make")
    # Under `make test` (CI) the parent make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def make_n(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "--no-print-directory", "gpu-smoke", *args],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
        ).stdout

    out = make_n("DRY_RUN=1")
    assert out.strip().splitlines()[-1] == ".venv/bin/python benchmarks/gpu_smoke.py --dry-run"
    out = make_n("GPU_PYTHON=/gpu/python")
    assert out.strip() == "/gpu/python benchmarks/gpu_smoke.py"


def test_the_dry_run_runs_every_cpu_part(tmp_path):
    """`make gpu-smoke DRY_RUN=1`: toy models, staging, verl-check, the launch commands, a real
    evaluation logged to MLflow, the assertions on it; about 35 s on 2 cores."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--dry-run", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "report.dry-run.json").read_text())
    assert report["ok"] and report["dry_run"] and report["run"] == "sgopd"
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["ok"] for s in steps.values()) and "models" in steps and "verl-check" in steps
    assert len(steps["data"]["result"]["staged"]) == 4
    assert steps["data"]["result"]["longest_prompt_tokens"] <= 256
    assert steps["verl-check"]["result"][-1] == "1/1 runs valid for verl at scale gpu-smoke"
    commands = "\n".join(report["launch_commands"])
    assert "workbench.backends.verl.main" in commands and "trainer.v1.trainer_mode=sgopd_sync" in commands
    assert f"merge {tmp_path}/runs/gpu-smoke/verl-runs/sgopd/seed0/checkpoints" in commands
    if not stage.has_flash_attn():
        assert "+actor_rollout_ref.model.override_config.attn_implementation=sdpa" in commands
    a = report["assertions"]
    assert a["eval_results"]["ok"] and a["eval_results"]["n_problems"] == 6
    assert set(a["mlflow_history"]["metrics"]) == set(gpu_smoke.EVAL)
    assert "not_run" in a["checkpoint"] and "not_run" in a["merged_model"]
    if report["env"]["versions"]["torch.version.cuda"] is None:
        assert report["env"]["cuda_torch"].startswith("a real run refuses this environment")
