"""Offline staging (``workbench verl-stage``) and the checks ``verl-launch`` / ``realscale-eval``
make before any compute: missing inputs, a CPU torch, flash-attn missing (SDPA)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("datasets")
pytest.importorskip("verl")

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.backends.verl import stage
from workbench.backends.verl.overrides import SCALES_DIR, build_job, load_scale
from workbench.config import load_config
from workbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "experiments" / "runs"
TEMPLATE = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def verbs():
    from workbench.backends.verl.cli import add_verbs

    parser = argparse.ArgumentParser(prog="workbench")
    add_verbs(parser.add_subparsers(dest="verb", required=True))
    return parser


def run_verb(*argv: str) -> int:
    args = verbs().parse_args(list(argv))
    return args.handler(args)


def write_scale(tmp: Path, **paths) -> Path:
    """scales/gpu-smoke.yaml with its files moved under ``tmp`` (paper's folder-per-set layout)."""
    data = yaml.safe_load((SCALES_DIR / "gpu-smoke.yaml").read_text())
    data["name"] = "gpu-smoke"
    data["student"], data["teacher"] = str(tmp / "models/student"), str(tmp / "models/teacher")
    data["data"]["sources"] = {"A": str(tmp / "verl/deepmath/train.parquet"), "B": str(tmp / "verl/extra-math/train.parquet")}
    data["data"]["val_files"] = [str(tmp / "verl/aime24/test.parquet")]
    data["eval"]["benchmarks"] = {
        "aime24": str(tmp / "verl/bench/aime24.parquet"),
        "hmmt25-feb": str(tmp / "verl/bench/hmmt25-feb.parquet"),
    }
    data.update(paths)
    path = tmp / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_raw(raw: Path) -> dict:
    """Raw sets as a cluster user downloads them: DeepMath's schema in an `hf download`-style
    tree (split files under data/, a hidden cache folder), JSONL, JSON, parquet."""
    deep = raw / "deepmath" / "data"
    deep.mkdir(parents=True)
    rows = [{"question": f"What is {i} + {i}?", "final_answer": str(2 * i), "difficulty": 5.0} for i in range(1, 6)]
    pq.write_table(pa.Table.from_pylist(rows), deep / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "test split", "final_answer": "0"}]), deep / "test-00000.parquet")
    (raw / "deepmath" / ".cache").mkdir()
    pq.write_table(pa.Table.from_pylist([{"question": "cached", "final_answer": "9"}]), raw / "deepmath/.cache/x.parquet")
    (raw / "extra-math").mkdir()
    (raw / "extra-math" / "math.jsonl").write_text(
        "".join(json.dumps({"problem": f"Solve x = {i}.", "answer": str(i)}) + "\n" for i in range(3))
    )
    (raw / "aime24").mkdir()
    (raw / "aime24" / "aime.json").write_text(
        json.dumps([{"id": 60 + i, "problem": f"AIME {i}", "answer": str(100 + i)} for i in range(4)])
    )
    (raw / "hmmt25-feb").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"problem_idx": 1, "problem": "HMMT", "answer": "\\frac{1}{2}"}]),
        raw / "hmmt25-feb" / "train.parquet",
    )
    return {"deepmath": rows}


def toy_tokenizer():
    from workbench.backends.verl.testing import toy_tokenizer

    return toy_tokenizer()


def test_staging_writes_what_verls_dataset_and_reward_read(tmp_path, capsys):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from workbench.backends.verl import realscale as R
    from workbench.backends.verl.reward import compute_score

    raw = tmp_path / "raw"
    deepmath = write_raw(raw)["deepmath"]
    scale_file = write_scale(tmp_path)
    assert run_verb("verl-stage", "--scale", str(scale_file), "--from", str(raw)) == 0
    out = capsys.readouterr().out
    scale = load_scale(scale_file)
    for f in [*scale.data.sources.values(), *scale.data.val_files, *scale.eval.benchmarks.values()]:
        assert f in out and Path(f).is_file()

    # training parquet: exactly verl's RL columns; the split filter and the hidden folder held
    train = pq.read_table(scale.data.sources["A"])
    assert train.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    rows = train.to_pylist()
    assert [r["reward_model"]["ground_truth"] for r in rows] == [r["final_answer"] for r in deepmath]
    assert rows[0]["prompt"] == [{"role": "user", "content": deepmath[0]["question"] + TEMPLATE}]
    assert {r["data_source"] for r in rows} == {"deepmath"} and rows[2]["extra_info"]["index"] == 2

    # verl's own RL dataset reads it (chat template, length filter) and the reward grades it
    cfg = OmegaConf.create(
        {
            "cache_dir": str(tmp_path / "cache"),
            "prompt_key": "prompt",
            "max_prompt_length": 256,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "truncation": "error",
            "return_raw_chat": True,
        }
    )
    ds = RLHFDataset([*scale.data.sources.values()], toy_tokenizer(), cfg)
    assert len(ds) == len(deepmath) + 3
    item = ds[0]
    assert item["raw_prompt"] == rows[0]["prompt"] and item["data_source"] == "deepmath" and item["index"] == 0
    truth = item["reward_model"]["ground_truth"]
    assert compute_score(item["data_source"], f"so \\boxed{{{truth}}}", truth, item["extra_info"]) == 1.0
    assert compute_score(item["data_source"], "\\boxed{7}", truth, item["extra_info"]) == 0.0
    val = RLHFDataset(scale.data.val_files, toy_tokenizer(), cfg)
    assert len(val) == 4 and val[1]["extra_info"]["split"] == "test"

    # benchmark parquet: what realscale-eval reads, ids and answers kept
    aime = R.load_benchmark("aime24", scale.eval.benchmarks["aime24"])
    assert [(p.id, p.problem, p.answer) for p in aime] == [(str(60 + i), f"AIME {i}", str(100 + i)) for i in range(4)]
    hmmt = R.load_benchmark("hmmt25-feb", scale.eval.benchmarks["hmmt25-feb"])
    assert hmmt[0].answer == "\\frac{1}{2}" and hmmt[0].prompt == "HMMT" + TEMPLATE


def test_a_missing_raw_set_names_the_download_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw)
    (raw / "hmmt25-feb" / "train.parquet").unlink()
    (raw / "hmmt25-feb").rmdir()
    scale_file = write_scale(tmp_path)
    with pytest.raises(UserError) as e:
        run_verb("verl-stage", "--scale", str(scale_file), "--from", str(raw))
    msg = str(e.value)
    assert str(raw / "hmmt25-feb") in msg and "hf download MathArena/hmmt_feb_2025 --repo-type dataset" in msg
    assert "workbench verl-stage" in msg and "\n" not in msg
    assert not (tmp_path / "verl").exists()  # checked before anything is written
    # a set given elsewhere with --source; an unknown set is refused
    other = tmp_path / "elsewhere.jsonl"
    other.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    assert run_verb("verl-stage", "--scale", str(scale_file), "--from", str(raw), "--source", f"hmmt25-feb={other}") == 0
    with pytest.raises(UserError, match="no such set"):
        run_verb("verl-stage", "--scale", str(scale_file), "--from", str(raw), "--source", f"nope={other}")


def test_a_raw_file_without_the_columns_is_a_user_error(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw)
    (raw / "extra-math" / "math.jsonl").write_text(json.dumps({"text": "no problem column"}) + "\n")
    with pytest.raises(UserError, match="extra-math: .*no problem column"):
        run_verb("verl-stage", "--scale", str(write_scale(tmp_path)), "--from", str(raw))


def test_set_names_and_the_shipped_scales_plans():
    assert stage.set_names(["d/verl/deepmath/train.parquet", "d/verl/aime24/test.parquet"]) == {
        "d/verl/deepmath/train.parquet": "deepmath",
        "d/verl/aime24/test.parquet": "aime24",
    }
    assert stage.set_names(["r/data/train-a.parquet", "r/data/val.parquet"]) == {
        "r/data/train-a.parquet": "train-a",
        "r/data/val.parquet": "val",
    }
    paper = {(i.kind, i.name): i for i in stage.plan(load_scale("paper"))}
    assert set(paper) == {
        ("train", "deepmath"),
        ("train", "extra-math"),
        ("val", "aime24"),
        ("bench", "aime24"),
        ("bench", "aime25"),
        ("bench", "hmmt25-feb"),
        ("bench", "hmmt25-nov"),
    }
    assert paper[("train", "deepmath")].source == "data/raw/deepmath"
    assert paper[("val", "aime24")].out == "data/verl/aime24/test.parquet"  # what verl's validation loader reads
    assert stage.RAW_SETS["deepmath"].hub_id == "zwhe99/DeepMath-103K"


def staged_job(tmp_path, run="sgopd", **paths):
    scale = load_scale(write_scale(tmp_path, **paths))
    return build_job(load_config(RUNS / f"{run}.yaml"), scale, results=tmp_path / "results"), scale


def make_inputs(scale, models=True):
    from workbench.backends.verl.testing import save_toy_model

    for f in [*scale.data.sources.values(), *scale.data.val_files]:
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        Path(f).write_bytes(b"x")
    if models:
        for role in ("student", "teacher"):
            save_toy_model(getattr(scale, role), role, steps=0)


def test_job_inputs_are_checked_with_the_command_that_makes_each(tmp_path, monkeypatch):
    job, scale = staged_job(tmp_path)
    problems = stage.check_job_inputs(job)
    assert len(problems) == 3
    assert scale.data.sources["A"] in problems[0] and scale.data.val_files[0] in problems[0]
    assert "workbench verl-stage --scale gpu-smoke --from data/raw" in problems[0]
    assert scale.student in problems[1] and "--scale-set student=DIR" in problems[1]
    assert scale.teacher in problems[2] and "--scale-set teacher=DIR" in problems[2]
    make_inputs(scale)
    assert stage.check_job_inputs(job) == []

    # a hub id is left to the hub, unless the hub is off and the model is not cached
    hub, _ = staged_job(tmp_path, student="Qwen/Qwen3-1.7B")
    assert stage.check_job_inputs(hub) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (problem,) = stage.check_job_inputs(hub)
    assert "HF_HUB_OFFLINE" in problem and "hf download Qwen/Qwen3-1.7B --local-dir data/raw/models/Qwen3-1.7B" in problem

    # stage 2 waits for its stage 1's exported model
    two, _ = staged_job(tmp_path, run="timesep-1.8")
    (problem,) = stage.check_job_inputs(two)
    init = load_config(RUNS / "timesep-1.8.yaml").train.init_from
    assert f"workbench verl-launch --run {init} --scale gpu-smoke" in problem and two.paths.results in problem


def test_verl_launch_refuses_before_any_compute(tmp_path, monkeypatch, capsys):
    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch: the CPU refusal cannot be shown here")
    monkeypatch.chdir(tmp_path)
    job, scale = staged_job(tmp_path)
    argv = [
        "verl-launch",
        "--run",
        "sgopd",
        "--runs-dir",
        str(RUNS),
        "--scale",
        str(tmp_path / "scale.yaml"),
        "--results",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]
    with pytest.raises(UserError) as e:  # inputs first
        run_verb(*argv)
    assert "missing staged data" in str(e.value) and "missing student model" in str(e.value)
    make_inputs(scale)
    with pytest.raises(UserError, match="CPU build .*make setup-gpu"):  # then the torch build
        run_verb(*argv)
    assert not Path(job.paths.state).exists() and not (tmp_path / "mlflow.db").exists()  # no MLflow run yet
    # a dry run prints the commands and only notes what is missing
    (tmp_path / "models" / "student" / "config.json").unlink()
    capsys.readouterr()
    assert run_verb(*argv, "--dry-run") == 0
    cap = capsys.readouterr()
    assert "workbench.backends.verl.main" in cap.out and "missing student model" in cap.err


def test_without_flash_attn_the_fsdp_model_uses_sdpa(tmp_path):
    from workbench.backends.verl.check import compose

    for run, node in (("sgopd", "actor_rollout_ref.model"), ("sft", "model")):
        job, _ = staged_job(tmp_path, run=run)
        assert stage.attention_overrides(job, flash_attn=True) == []
        extra = stage.attention_overrides(job, flash_attn=False)
        assert extra == [f"+{node}.override_config.attn_implementation=sdpa"]
        job = type(job)(**{**job.__dict__, "overrides": job.overrides + extra})
        cfg = compose(job)
        model = cfg.actor_rollout_ref.model if job.kind == "ppo" else cfg.model
        assert model.override_config.attn_implementation == "sdpa" and model.use_remove_padding
        assert stage.attention_overrides(job, flash_attn=False) == []  # chosen already: left alone


def test_sdpa_on_packed_sequences_equals_each_sequence_alone():
    """verl's remove-padding packs a micro-batch into one row with restarting position ids and
    no attention mask; transformers' SDPA path must keep the sequences apart (no flash-attn)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from workbench.backends.verl.testing import _toy_config

    tok = toy_tokenizer()
    cfg = _toy_config("student", tok)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    seqs = [torch.randint(0, 256, (n,)) for n in (7, 12, 5)]
    with torch.no_grad():
        alone = [model(input_ids=s[None], use_cache=False).logits[0] for s in seqs]
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
        packed = model(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).logits[0]
    assert torch.allclose(packed, torch.cat(alone), atol=1e-5)


def test_realscale_eval_checks_its_inputs_before_the_engine(tmp_path):
    from workbench.backends.verl import realscale as R

    with pytest.raises(UserError, match="does not exist; stage the benchmarks"):
        run_verb(
            "realscale-eval",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "transformers",
            "--benchmark",
            "aime24",
            "--source",
            f"aime24={tmp_path}/missing.parquet",
        )
    bench = tmp_path / "aime24.jsonl"
    bench.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    with pytest.raises(UserError, match="no config.json"):
        run_verb(
            "realscale-eval",
            str(tmp_path / "no-model"),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "transformers",
            "--benchmark",
            "aime24",
            "--source",
            f"aime24={bench}",
        )
    assert R.looks_local("data/verl/bench/aime24.parquet") and not R.looks_local("HuggingFaceH4/aime_2024")


def test_data_files_pick_the_split_and_skip_hidden_folders(tmp_path):
    from workbench.backends.verl.realscale import data_files

    for name in ("data/train-0.parquet", "data/test-0.parquet", ".cache/train-x.parquet", "README.md", "x.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert data_files(tmp_path, "train") == [tmp_path / "data/train-0.parquet"]  # parquet before JSON
    assert data_files(tmp_path, "test") == [tmp_path / "data/test-0.parquet"]
    assert data_files(tmp_path, "validation") == [tmp_path / "data/test-0.parquet", tmp_path / "data/train-0.parquet"]
    assert data_files(tmp_path / "x.jsonl") == [tmp_path / "x.jsonl"]
