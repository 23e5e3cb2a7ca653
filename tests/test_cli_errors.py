"""Every user error is one line on stderr (``error: ...``) and exit 2, with no traceback and
nothing left behind: no file, no directory, no MLflow store or run.

The fuzz feeds a few hundred generated mistakes (bad YAML, unknown or misspelled fields and
methods, wrong types, non-finite numbers, bad ``--set``, unknown ``--scale``, bad numbers on
the command line, missing inputs for every verb, outputs where something else is in the way)
to ``workbench.cli.main`` in-process; a handful of real processes then prove the same end to
end, including a closed stdout pipe, SIGTERM and Ctrl-C. Nothing is trained: bad inputs must
fail before any compute.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "experiments" / "runs" / "sgopd.yaml")
RUNS = str(REPO / "experiments" / "runs")
SPACE = str(REPO / "experiments" / "search" / "smoke.yaml")
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict[str, str | bytes | None] = field(default_factory=dict)  # None: a directory
    rc: int = 2
    says: str | None = None  # a word the error line must contain


# -- the sandbox every case runs in ---------------------------------------------------------

# A stand-in world: enough for the checks that come before compute, nothing to train on.
BASE = {
    "world/manifest.json": "{}\n",
    "run.yaml": "method: opd\n",
    "afile": "not a directory\n",
    "adir": None,
    "grid.json": '{"experiment": "e", "parent_run_id": "0123"}\n',
}


def _tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), 0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A scratch directory as cwd (every default output path lands in it) and an MLflow
    store that must never come to exist."""
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    yield work
    assert not store.exists(), "an MLflow store was created for a bad input"
    assert not (tmp_path / "mlruns").exists()


def _write(root: Path, files: dict[str, str | bytes | None]) -> None:
    for rel, content in files.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors exit while parsing
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc: int, out: str, err: str, want_rc: int, says: str | None) -> None:
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err!r}"
    assert rc == want_rc, (rc, err)
    assert out == "", f"a failing command printed to stdout: {out!r}"
    if says is not None:
        assert says in lines[0], (says, lines[0])


# -- the mistakes ---------------------------------------------------------------------------


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(len(word))
    return rng.choice(
        [word[:i] + word[i + 1 :], word[:i] + word[i] * 2 + word[i + 1 :], word[:i] + "x" + word[i + 1 :], word.upper()]
    )


INT_FIELDS = [
    "seed",
    "train.steps",
    "train.checkpoint_every",
    "train.eval_every",
    "optim.warmup_steps",
    "rollout.prompts_per_step",
    "rollout.group_size",
    "eval.n_samples",
    "eval.k",
]
FLOAT_FIELDS = [
    "gate.lambda_base",
    "gate.lambda_high",
    "gate.disagree_interp_beta",
    "stability.clip",
    "optim.lr",
    "optim.weight_decay",
    "optim.eps_high",
    "pts.alpha0",
    "pts.alpha1",
    "rollout.temperature",
    "eval.temperature",
    "pts.teacher_sampling_ratio",
    "train.steps_frac",
]
BOOL_FIELDS = ["pts.filter_correct", "sft.filter_correct"]  # free under every method
BAD_INTS = ["true", "false", "'8'", "1.5", "2.0", "[8]", "{a: 1}", ".inf", "'eight'", "null"]
BAD_FLOATS = ["true", "'1.5'", "[1.5]", "{a: 1}", ".inf", "-.inf", ".nan", "1e400", "-1e400", "inf", "nan", "null"]
BAD_BOOLS = ["1", "0", "'true'", "[true]", "2.5", "null"]
FIELDS = {
    "gate": ["lambda_high", "lambda_base", "disagree_mode", "sign_gate"],
    "optim": ["lr", "grad_clip"],
    "train": ["steps", "checkpoint_every"],
    "pts": ["phase1_end_frac", "enabled"],
    "eval": ["n_samples", "k"],
}


def _yaml_at(dotted: str, raw: str) -> str:
    *parents, leaf = dotted.split(".")
    text = f"{leaf}: {raw}"
    for p in reversed(parents):
        text = f"{p}: {{{text}}}"
    return text + "\n"


def bad_configs(rng: random.Random) -> list[tuple[str, str | bytes, str | None]]:
    """(id, file content, a word the error must contain)."""
    out: list[tuple[str, str | bytes, str | None]] = [
        ("yaml-unclosed-flow", "gate: {lambda_high: [\n", "YAML"),
        ("yaml-mapping-in-scalar", "gate: lambda_high: 1.5\n", "YAML"),
        ("yaml-tab-indent", "gate:\n\tlambda_high: 1.5\n", "YAML"),
        ("yaml-unterminated-quote", "name: 'abc\n", "YAML"),
        ("yaml-python-tag", "method: !!python/object/apply:os.system ['true']\n", "YAML"),
        ("yaml-bad-alias", "seed: *nothing\n", "YAML"),
        ("yaml-list", "- method: sgopd\n", "mapping"),
        ("yaml-scalar", "42\n", "mapping"),
        ("yaml-string", "just words\n", "mapping"),
        ("empty", "", "empty"),
        ("only-comment", "# nothing here\n", "empty"),
        ("only-null", "null\n", "empty"),
        ("not-utf8", b"\xff\xfe\x00method: sgopd\n", "UTF-8"),
        ("dup-top", "seed: 1\nmethod: sgopd\nseed: 2\n", "duplicate key 'seed'"),
        ("dup-nested", "gate:\n  lambda_high: 1.5\n  lambda_high: 2.0\n", "duplicate key 'lambda_high'"),
        ("section-scalar", "gate: 5\n", "gate"),
        ("section-list", "optim: [1, 2]\n", "optim"),
        ("section-null", "train: null\n", "train"),
        ("method-null", "method: null\n", "method"),
        ("method-int", "method: 3\n", "method"),
        ("method-list", "method: [sgopd]\n", "method"),
        ("backend-typo", "backend: mnii\n", "backend"),
        ("fallback-typo", "gate: {disagree_mode: interpp}\n", "disagree_mode"),
        ("stability-typo", "stability: {mode: phii}\n", "stability.mode"),
        ("phases-swapped", "pts: {phase1_end_frac: 0.6, phase2_end_frac: 0.4}\n", "phase1_end_frac"),
        ("k-above-n", "eval: {k: 16, n_samples: 8}\n", "k (16)"),
        ("seed-huge", "seed: 99999999999999999999\n", "seed"),
        ("sources-string", "train: {sources: A}\n", "train.sources"),
        ("keep-at-inf", "train: {keep_checkpoints_at: [0.5, .inf]}\n", "keep_checkpoints_at"),
        ("gate-levels", "gate: {gate_levels: 3}\n", "gate_levels"),
    ]
    for m in ("sgopd", "opd", "exopd", "seqkd", "grpo"):
        t = _typo(rng, m)
        if t not in ("sgopd", "opd", "exopd", "seqkd", "grpo", "sft", "gkd"):
            out.append((f"method-{t}", f"method: {t}\n", "method"))
    for section, keys in FIELDS.items():
        for key in keys:
            out.append((f"unknown-{section}.{key}", f"{section}: {{{_typo(rng, key)}x: 1}}\n", "unknown key"))
        out.append((f"unknown-section-{section}", f"{_typo(rng, section)}x: {{}}\n", "unknown key"))
    for dotted in rng.sample(INT_FIELDS, 6):
        raw = rng.choice(BAD_INTS)
        out.append((f"int-{dotted}={raw}", _yaml_at(dotted, raw), dotted))
    for dotted in rng.sample(FLOAT_FIELDS, 8):
        raw = rng.choice(BAD_FLOATS)
        out.append((f"float-{dotted}={raw}", _yaml_at(dotted, raw), dotted))
    for dotted in BOOL_FIELDS:
        raw = rng.choice(BAD_BOOLS)
        out.append((f"bool-{dotted}={raw}", _yaml_at(dotted, raw), dotted))
    # The issue's own examples.
    out += [
        ("issue-lambda-high-inf", "gate: {lambda_high: .inf}\n", "finite"),
        ("issue-lr-inf", "optim: {lr: .inf}\n", "finite"),
        ("issue-lr-nan", "optim: {lr: .nan}\n", "finite"),
        ("issue-steps-true", "train: {steps: true}\n", "train.steps"),
        ("issue-method-sgpod", "method: sgpod\n", "sgopd"),
    ]
    return out


BAD_SETS = [
    ("garbage", "key=value"),
    ("=5", "key=value"),
    ("gate.lambda_high", "key=value"),
    ("gate.lambda_high=[1", "YAML"),
    ("gate.lambda_high=.inf", "finite"),
    ("gate.lambda_high=inf", "lambda_high"),
    ("optim.lr=.nan", "finite"),
    ("optim.lr=-1", "optim.lr"),
    ("seed=true", "seed"),
    ("seed=-1", "seed"),
    ("seed=1.5", "seed"),
    ("train.steps='3'", "train.steps"),
    ("gate=1", "gate"),
    ("gate.lambda_high.x=1", "lambda_high"),
    ("nosuch.field=1", "unknown key"),
    ("method=sgpod", "method"),
    ("gate.lamda_high=1.5", "unknown key"),
    ("eval.k=0", "eval.k"),
    ("pts.enabled=yes please", "pts.enabled"),
    ("seed={a: 1}", "seed"),
]


def cases() -> list[Case]:
    rng = random.Random(13)
    out: list[Case] = []
    # 1. bad config files, each through `config check`, `train` and `eval`.
    for cid, text, says in bad_configs(rng):
        f = {"bad.yaml": text}
        out.append(Case(f"check/{cid}", ["config", "check", "bad.yaml"], f, says=says))
        out.append(Case(f"train/{cid}", ["train", "bad.yaml", "--run-dir", "run", "--world", "world"], f, says=says))
        out.append(
            Case(
                f"eval/{cid}",
                ["eval", "student-init", "--config", "bad.yaml", "--out", "e.json", "--world", "world"],
                f,
                says=says,
            )
        )
    # 2. bad --set, on a good config.
    for raw, says in BAD_SETS:
        out.append(Case(f"check-set/{raw}", ["config", "check", RUN, "--set", raw], says=says))
        out.append(Case(f"train-set/{raw}", ["train", RUN, "--run-dir", "run", "--world", "world", "--set", raw], says=says))
        out.append(Case(f"eval-set/{raw}", ["eval", "teacher", "--out", "e.json", "--world", "world", "--set", raw], says=says))
    # 3. unknown --scale wherever one is taken.
    for name in ["nosuch", "MINI", "smoke.yaml", "../scales/mini", "", "paper "]:
        shown = name or "empty"
        out += [
            Case(f"scale/train/{shown}", ["train", RUN, "--run-dir", "run", "--world", "world", "--scale", name], says="scale"),
            Case(
                f"scale/eval/{shown}", ["eval", "teacher", "--out", "e.json", "--world", "world", "--scale", name], says="scale"
            ),
            Case(f"scale/grid-start/{shown}", ["grid-start", "--scale", name, "--out", "g.json"], says="valid: mini"),
            Case(f"scale/search/{shown}", ["search", SPACE, "--scale", name], says="scale"),
            Case(f"scale/search-worker/{shown}", ["search-worker", SPACE, "--scale", name], says="scale"),
            Case(f"scale/search-report/{shown}", ["search-report", SPACE, "--scale", name], says="scale"),
            Case(f"scale/prepare/{shown}", ["prepare", "--preset", name, "--out", "w2"], says="preset"),
            Case(
                f"scale/verl-overrides/{shown}",
                ["verl-overrides", "--run", "sgopd", "--runs-dir", RUNS, "--scale", name],
                says="scale",
            ),
        ]
    out += [
        Case(
            "scale/verl-launch",
            ["verl-launch", "--run", "sgopd", "--runs-dir", RUNS, "--scale", "nosuch", "--dry-run"],
            says="valid:",
        ),
        Case("scale/verl-check", ["verl-check", "--scale", "nosuch", "--runs-dir", RUNS], says="valid:"),
        Case(
            "scale/verl-set-bad-value",
            ["verl-overrides", "--run", "sgopd", "--runs-dir", RUNS, "--scale-set", "batch.prompts_per_step=-1"],
            says="prompts_per_step",
        ),
        Case(
            "scale/verl-set-unknown",
            ["verl-overrides", "--run", "sgopd", "--runs-dir", RUNS, "--scale-set", "nope.x=1"],
            says="nope",
        ),
        Case(
            "scale/verl-set-garbage",
            ["verl-overrides", "--run", "sgopd", "--runs-dir", RUNS, "--scale-set", "garbage"],
            says="key=value",
        ),
        Case(
            "scale/train-verl-backend",
            ["train", RUN, "--run-dir", "run", "--world", "world", "--scale", "paper"],
            says="verl-launch",
        ),
        Case(
            "scale/train-set-backend",
            ["train", RUN, "--run-dir", "run", "--world", "world", "--set", "backend=verl"],
            says="verl-launch",
        ),
    ]
    # 4. bad numbers on the command line.
    for bad in ["-2", "0", "abc", "1.5", "", "nan"]:
        out += [
            Case(
                f"threads/train/{bad}", ["train", RUN, "--run-dir", "run", "--world", "world", "--threads", bad], says="--threads"
            ),
            Case(
                f"threads/eval/{bad}",
                ["eval", "teacher", "--out", "e.json", "--world", "world", "--threads", bad],
                says="--threads",
            ),
            Case(f"threads/prepare/{bad}", ["prepare", "--out", "w2", "--threads", bad], says="--threads"),
            Case(f"threads/search/{bad}", ["search", SPACE, "--threads", bad], says="--threads"),
            Case(f"trials/search/{bad}", ["search", SPACE, "--trials", bad], says="--trials"),
            Case(f"trials/search-worker/{bad}", ["search-worker", SPACE, "--trials", bad], says="--trials"),
            Case(f"max-trials/{bad}", ["search-worker", SPACE, "--max-trials", bad], says="--max-trials"),
        ]
    for bad in ["-1", "abc", "1e3", "4294967296", "0.5"]:
        out += [
            Case(f"seed/train/{bad}", ["train", RUN, "--run-dir", "run", "--world", "world", "--seed", bad], says="--seed"),
            Case(f"seed/prepare/{bad}", ["prepare", "--out", "w2", "--seed", bad], says="--seed"),
        ]
    for bad in ["0", "1.5", "nan", "inf", "-0.1", "x"]:
        out.append(
            Case(
                f"at-frac/{bad}",
                ["eval", "run", "--at-frac", bad, "--out", "e.json", "--world", "world"],
                {"run": None},
                says="--at-frac",
            )
        )
    for flag, bad in [
        ("--workers", "-1"),
        ("--workers", "two"),
        ("--heartbeat", "0"),
        ("--heartbeat", "nan"),
        ("--stale-after", "-5"),
        ("--poll", "inf"),
    ]:
        out.append(Case(f"search/{flag}={bad}", ["search", SPACE, flag, bad], says=flag))
    for flag, bad in [
        ("--k", "0"),
        ("--n-samples", "x"),
        ("--temperature", "0"),
        ("--top-p", "2"),
        ("--grade-timeout", "-1"),
        ("--limit", "0"),
        ("--tensor-parallel-size", "0"),
        ("--seed", "-3"),
    ]:
        out.append(Case(f"realscale-eval/{flag}={bad}", ["realscale-eval", "m", "--out", "o", flag, bad], says=flag))
    out += [
        Case("realscale-eval/k>n", ["realscale-eval", "m", "--out", "o", "--k", "8", "--n-samples", "4"], says="--k"),
        Case("realscale-eval/source", ["realscale-eval", "m", "--out", "o", "--source", "garbage"], says="--source"),
        Case("realscale-eval/benchmark", ["realscale-eval", "m", "--out", "o", "--benchmark", "aime99"], says="aime99"),
        Case(
            "realscale-eval/run-file", ["realscale-eval", "m", "--out", "o", "--mlflow-run-file", "nope.json"], says="nope.json"
        ),
    ]
    # 5. argparse's own mistakes: unknown verbs, options and choices, missing arguments.
    out += [
        Case("argparse/no-verb", []),
        Case("argparse/unknown-verb", ["trian"], says="invalid choice"),
        Case("argparse/unknown-option", ["config", "check", RUN, "--bogus"], says="--bogus"),
        Case("argparse/train-no-run-dir", ["train", RUN], says="--run-dir"),
        Case("argparse/eval-no-out", ["eval", "teacher"], says="--out"),
        Case("argparse/grid-start-no-scale", ["grid-start", "--out", "g.json"], says="--scale"),
        Case("argparse/list-kind", ["list", "nosuch"], says="invalid choice"),
        Case("argparse/defaults-method", ["config", "defaults", "--method", "sgpod"], says="invalid choice"),
        Case("argparse/config-no-action", ["config"], says="ACTION"),
        Case("argparse/tables-no-collected", ["tables", "--out-dir", "t"], says="--collected"),
        Case("argparse/search-no-space", ["search"], says="space"),
    ]
    # 6. missing or wrong inputs, for every verb that reads one.
    out += [
        Case("missing/check", ["config", "check", "nope.yaml"], says="nope.yaml"),
        Case("missing/check-dir", ["config", "check", "adir"], says="directory"),
        Case("missing/train-config", ["train", "nope.yaml", "--run-dir", "run", "--world", "world"], says="nope.yaml"),
        Case("missing/train-world", ["train", "run.yaml", "--run-dir", "run", "--world", "noworld"], says="noworld"),
        Case("missing/train-default-world", ["train", "run.yaml", "--run-dir", "run"], says="prepare"),
        Case(
            "missing/train-grid",
            ["train", "run.yaml", "--run-dir", "run", "--world", "world", "--grid", "no.json"],
            says="no.json",
        ),
        Case(
            "missing/train-grid-dir",
            ["train", "run.yaml", "--run-dir", "run", "--world", "world", "--grid", "adir"],
            says="adir",
        ),
        Case(
            "missing/train-grid-not-json",
            ["train", "run.yaml", "--run-dir", "run", "--world", "world", "--grid", "run.yaml"],
            says="grid",
        ),
        Case("missing/eval-model", ["eval", "nomodel", "--out", "e.json", "--world", "world"], says="nomodel"),
        Case(
            "missing/eval-config",
            ["eval", "teacher", "--config", "no.yaml", "--out", "e.json", "--world", "world"],
            says="no.yaml",
        ),
        Case("missing/eval-world", ["eval", "teacher", "--out", "e.json", "--world", "noworld"], says="noworld"),
        Case(
            "missing/eval-grid", ["eval", "teacher", "--out", "e.json", "--world", "world", "--grid", "no.json"], says="no.json"
        ),
        Case(
            "missing/eval-grid-keys",
            ["eval", "teacher", "--out", "e.json", "--world", "world", "--grid", "g2.json"],
            {"g2.json": '{"experiment": "e"}'},
            says="parent_run_id",
        ),
        Case(
            "missing/eval-at-frac-file",
            ["eval", "afile", "--at-frac", "0.9", "--out", "e.json", "--world", "world"],
            says="run directory",
        ),
        Case("missing/collect-grid", ["collect", "--grid", "no.json", "--out-dir", "c"], says="no.json"),
        Case("missing/collect-grid-list", ["collect", "--grid", "g2.json", "--out-dir", "c"], {"g2.json": "[1, 2]"}, says="grid"),
        Case("missing/collect-store", ["collect", "--grid", "grid.json", "--out-dir", "c"], says="no MLflow store"),
        Case("missing/casestudy", ["casestudy", "no.json", "--out", "c.html"], says="no.json"),
        Case("missing/casestudy-dir", ["casestudy", "adir", "--out", "c.html"], says="directory"),
        Case("missing/search-space", ["search", "no.yaml"], says="no.yaml"),
        Case("missing/search-check", ["search", "no.yaml", "--check"], says="no.yaml"),
        Case("missing/search-worker", ["search-worker", "no.yaml"], says="no.yaml"),
        Case("missing/search-report", ["search-report", "no.yaml"], says="no.yaml"),
        Case("missing/search-space-empty", ["search", "s.yaml"], {"s.yaml": ""}, says="s.yaml"),
        Case("missing/search-space-dup", ["search", "s.yaml"], {"s.yaml": "name: a\nname: b\n"}, says="duplicate"),
        Case("missing/verl-run", ["verl-overrides", "--run", "nosuch", "--runs-dir", RUNS], says="valid run ids"),
        Case("missing/verl-run-path", ["verl-overrides", "--run", "no.yaml"], says="no.yaml"),
        Case("missing/verl-launch-run", ["verl-launch", "--run", "nosuch", "--runs-dir", RUNS, "--dry-run"], says="nosuch"),
        Case(
            "missing/verl-scale-path",
            ["verl-overrides", "--run", "sgopd", "--runs-dir", RUNS, "--scale", "no-scale.yaml"],
            says="no-scale.yaml",
        ),
    ]
    for verb in ("tables", "figures", "report"):
        out += [
            Case(f"missing/{verb}", [verb, "--collected", "nosnap", "--out-dir", "t"], says="nosnap"),
            Case(f"missing/{verb}-empty-dir", [verb, "--collected", "adir", "--out-dir", "t"], says="meta.json"),
            Case(f"missing/{verb}-file", [verb, "--collected", "afile", "--out-dir", "t"], says="afile"),
            Case(
                f"missing/{verb}-broken",
                [verb, "--collected", "snap", "--out-dir", "t"],
                {"snap/meta.json": "{not json", "snap/runs.parquet": "x", "snap/history.parquet": "x"},
                says="broken snapshot",
            ),
        ]
    for cid, text in [
        ("not-json", "{"),
        ("not-list", '{"a": 1}'),
        ("item-not-dict", "[1]"),
        ("missing-key", '[{"prompt": "p"}]'),
        ("lengths", '[{"prompt": "p", "tokens": ["a"], "token_class": [1, 0], "advantage": [1], "reward": 1}]'),
        ("class", '[{"prompt": "p", "tokens": ["a"], "token_class": [2], "advantage": [1], "reward": 1}]'),
        ("class-str", '[{"prompt": "p", "tokens": ["a"], "token_class": ["x"], "advantage": [1], "reward": 1}]'),
        ("reward", '[{"prompt": "p", "tokens": ["a"], "token_class": [1], "advantage": [1], "reward": "hi"}]'),
        ("token-int", '[{"prompt": "p", "tokens": [5], "token_class": [1], "advantage": [1], "reward": 1}]'),
    ]:
        out.append(Case(f"casestudy/{cid}", ["casestudy", "cs.json", "--out", "c.html"], {"cs.json": text}, says="cs.json"))
    # 7. outputs where something else is in the way.
    out += [
        Case("in-the-way/train-run-dir-file", ["train", "run.yaml", "--run-dir", "afile", "--world", "world"], says="afile"),
        Case(
            "in-the-way/train-run-dir-under-file",
            ["train", "run.yaml", "--run-dir", "afile/run", "--world", "world"],
            says="afile",
        ),
        Case("in-the-way/eval-out-dir", ["eval", "teacher", "--out", "adir", "--world", "world"], says="adir"),
        Case("in-the-way/eval-out-under-file", ["eval", "teacher", "--out", "afile/e.json", "--world", "world"], says="afile"),
        Case("in-the-way/grid-start-out-dir", ["grid-start", "--scale", "smoke", "--out", "adir"], says="adir"),
        Case("in-the-way/grid-start-under-file", ["grid-start", "--scale", "smoke", "--out", "afile/g.json"], says="afile"),
        Case("in-the-way/collect-out-file", ["collect", "--grid", "grid.json", "--out-dir", "afile"], says="afile"),
        Case("in-the-way/casestudy-out-dir", ["casestudy", "cs.json", "--out", "adir"], {"cs.json": "[]"}, says="adir"),
        Case("in-the-way/prepare-out-file", ["prepare", "--preset", "smoke", "--out", "afile"], says="afile"),
        Case("in-the-way/search-out-file", ["search", SPACE, "--out", "afile"], says="afile"),
        Case(
            "in-the-way/realscale-out-file",
            ["realscale-eval", "m", "--out", "afile", "--benchmark", "aime24", "--source", "aime24=./none.jsonl"],
            says="afile",
        ),
    ]
    if not ROOT:  # root writes anywhere: no permission error to provoke
        ro = {"ro/.keep": ""}
        out += [
            Case(
                "permission/train-run-dir",
                ["train", "run.yaml", "--run-dir", "ro/run", "--world", "world"],
                ro,
                says="not writable",
            ),
            Case("permission/eval-out", ["eval", "teacher", "--out", "ro/e.json", "--world", "world"], ro, says="not writable"),
            Case("permission/grid-start", ["grid-start", "--scale", "smoke", "--out", "ro/g.json"], ro, says="not writable"),
        ]
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    return out


CASES = cases()


def test_the_fuzz_is_big_enough():
    assert len(CASES) >= 200, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_user_error_is_one_line_and_leaves_nothing(case: Case, sandbox: Path, capsys):
    _write(sandbox, {**BASE, **case.files})
    if (sandbox / "ro").exists():
        (sandbox / "ro").chmod(0o555)
    before = _tree(sandbox)
    rc, out, err = run_in_process(case.argv, capsys)
    assert_one_error_line(rc, out, err, case.rc, case.says)
    assert _tree(sandbox) == before, "a failing command created or changed files"


def _config_fields() -> dict[str, list[str]]:
    from pydantic import BaseModel

    from workbench.config import RunConfig

    out: dict[str, list[str]] = {"": []}
    for name, f in RunConfig.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = list(ann.model_fields)
        else:
            out[""].append(name)
    return out


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["sgopd", "opd", "sgpod", "interp", "phi", "mini", "verl", "1e-3"]),
)
_value = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6
)


@st.composite
def _random_config(draw):
    fields = _config_fields()
    data: dict = {}
    for _ in range(draw(st.integers(1, 5))):
        section = draw(st.sampled_from(sorted(fields)))
        key = draw(st.sampled_from(fields[section] or ["x"]) | st.text(min_size=1, max_size=6))
        if section:
            node = data.setdefault(section, {})
            if isinstance(node, dict):
                node[key] = draw(_value)
        else:
            data[key] = draw(_value)
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_random_config())
def test_fuzz_random_configs_are_accepted_or_refused_in_one_line(data):
    """Random field names and values of every type: ``config check`` says ok or one error
    line, never a traceback; what it accepts is finite and typed as declared."""
    import contextlib
    import io
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["config", "check", "-q", str(path)])
        lines = err.getvalue().splitlines()
        if rc != 0:
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
            return
        from workbench.config import load_config

        assert lines == []
        flat = yaml.safe_load(load_config(path).to_yaml())
    numbers = [v for section in flat.values() if isinstance(section, dict) for v in section.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)


@st.composite
def _random_override(draw):
    fields = _config_fields()
    section = draw(st.sampled_from(sorted(fields)))
    dotted = ".".join(p for p in (section, draw(st.sampled_from(fields[section] or ["seed"]))) if p)
    key = draw(st.sampled_from([dotted, dotted + "x", "", " ", dotted + ".x"]) | st.text(max_size=8))
    raw = draw(
        st.sampled_from([".inf", ".nan", "-1", "0", "1e400", "true", "[1", "{", "'x", "null", "1e-3", ": :"])
        | st.text(max_size=10)
    )
    return draw(st.sampled_from([f"{key}={raw}", key, f"={raw}"]))


@settings(max_examples=150, deadline=None)
@given(override=_random_override())
def test_fuzz_random_overrides_are_accepted_or_refused_in_one_line(override):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["config", "check", "-q", RUN, f"--set={override}"])
    lines = err.getvalue().splitlines()
    assert (rc, lines) == (0, []) or (rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")), err.getvalue()


# -- behaviour around the fuzz: --debug, --trials, environment errors ---------------------------


def test_debug_shows_the_traceback_of_a_user_error(sandbox, capsys):
    from workbench.errors import UserError

    with pytest.raises(UserError, match="no.json"):
        main(["--debug", "casestudy", "no.json", "--out", "c.html"])
    assert main(["casestudy", "no.json", "--out", "c.html"]) == 2


def test_a_permission_error_from_inside_a_verb_is_one_line(sandbox, capsys, monkeypatch):
    import workbench.analysis.casestudy as cs

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", "locked/c.html")

    monkeypatch.setattr(cs, "write_casestudy", refuse)
    (sandbox / "cs.json").write_text("[]")
    rc, _, err = run_in_process(["casestudy", "cs.json", "--out", "c.html"], capsys)
    assert rc == 2 and err == "error: Permission denied: locked/c.html\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["grid-start", "--scale", "smoke", "--out", "sub/g.json"],
        ["train", "run.yaml", "--run-dir", "sub/run", "--world", "world"],
        ["eval", "teacher", "--out", "sub/e.json", "--world", "world"],
    ],
)
def test_an_unwritable_output_directory_is_refused_up_front(argv, sandbox, capsys, monkeypatch):
    # Root writes anywhere, so the fuzz's permission cases run only as another user: here the
    # check itself, with the directory reported unwritable.
    _write(sandbox, {**BASE, "sub": None})
    before = _tree(sandbox)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "sub")
    rc, out, err = run_in_process(argv, capsys)
    assert_one_error_line(rc, out, err, 2, "sub is not writable")
    assert _tree(sandbox) == before


def test_search_trials_overrides_the_space(sandbox, capsys):
    rc, out, err = run_in_process(["search", SPACE, "--check", "--trials", "7"], capsys)
    assert rc == 0 and "7 trials" in out, (out, err)
    rc, out, _ = run_in_process(["search", SPACE, "--check"], capsys)
    assert rc == 0 and "4 trials" in out  # the space's own n_trials
    rc, out, _ = run_in_process(["search", SPACE, "--check", "--trials", "1"], capsys)
    assert rc == 0 and "1 trials" in out  # smoke.yaml enqueues one setting: it fits in one trial
    from workbench.search.study import make_context, worker_command

    ctx = make_context(SPACE, n_trials=3)
    assert ctx.space.n_trials == 3
    cmd = worker_command(ctx, threads=1)
    assert cmd[cmd.index("--trials") + 1] == "3"  # the workers see the same budget
    from workbench.cli import build_parser

    assert build_parser().parse_args(cmd[cmd.index("search-worker") :]).trials == 3


def test_search_trials_below_the_enqueued_settings_is_refused(sandbox, capsys):
    space = Path(SPACE).read_text().replace("enqueue:\n", "enqueue:\n  - {label: extra, params: {}}\n")
    (sandbox / "s.yaml").write_text(space)
    rc, out, err = run_in_process(["search", "s.yaml", "--check", "--trials", "1"], capsys)
    assert_one_error_line(rc, out, err, 2, "n_trials (1)")


def test_a_study_resumed_with_another_trial_count_is_refused(sandbox, capsys, monkeypatch, tmp_path):
    import optuna

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'search.db'}")
    # Optuna's INFO line on a resumed study ("Using an existing study") is not the error;
    # its handler may also hold the stderr of an earlier test's capture.
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        args = ["search", SPACE, "--workers", "0", "--out", "out", "--world", "world"]
        rc, _, err = run_in_process([*args, "--trials", "2"], capsys)  # set the study up only
        assert rc == 0, err
        rc, out, err = run_in_process(args, capsys)  # the space's 4 trials: another study
    finally:
        optuna.logging.set_verbosity(level)
    assert_one_error_line(rc, out, err, 2, "the same --trials (2)")


def test_sigterm_is_a_keyboard_interrupt_so_runs_end_killed_and_resume():
    # The Tracker marks a run KILLED (resumable) on any KeyboardInterrupt, and a search trial
    # is re-queued on one: SIGTERM must arrive as one (tests/test_tracking.py covers KILLED).
    from workbench.stops import Terminated

    assert issubclass(Terminated, KeyboardInterrupt) and not issubclass(Terminated, Exception)


# -- end to end: real processes ------------------------------------------------------------------


def _workbench(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd.parent / 'e2e.db'}"}
    env.pop("WORKBENCH_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, text=True, **kw)


@pytest.mark.parametrize(
    "argv, files, rc",
    [
        (["train", "bad.yaml", "--run-dir", "run", "--world", "world"], {"bad.yaml": "optim: {lr: .inf}\n"}, 2),
        (["grid-start", "--scale", "nosuch", "--out", "g.json"], {}, 2),
        (["train", "run.yaml", "--run-dir", "run", "--threads", "-2", "--world", "world"], {}, 2),
        (["tables", "--collected", "nope", "--out-dir", "t"], {}, 2),
        (["train", "run.yaml", "--run-dir", "afile", "--world", "world"], {}, 2),
        (["config", "check", "bad.yaml"], {"bad.yaml": "seed: 1\nseed: 2\n"}, 2),
    ],
    ids=["non-finite-lr", "unknown-scale", "bad-threads", "missing-snapshot", "run-dir-is-a-file", "duplicate-key"],
)
def test_end_to_end_one_line_no_traceback(tmp_path, argv, files, rc):
    work = tmp_path / "w"
    work.mkdir()
    _write(work, {**BASE, **files})
    before = _tree(work)
    proc = _workbench(*argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert_one_error_line(proc.returncode, out, err, rc, None)
    assert _tree(work) == before and not (tmp_path / "e2e.db").exists()


def test_a_closed_stdout_pipe_exits_quietly(tmp_path):
    # `workbench config check ... | head -1`: the reader is gone before the output is written.
    r, w = os.pipe()
    os.close(r)
    try:
        proc = _workbench("config", "check", RUN, cwd=tmp_path, stdout=w, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    _, err = proc.communicate(timeout=120)
    assert err == "" and proc.returncode == 1, err


def _wait_reading_stdin(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the process has opened /dev/stdin (it is then inside the verb, blocked reading)."""
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            links = [os.readlink(p) for p in fd_dir.iterdir()]
            stdin = os.readlink(fd_dir / "0")
        except OSError:
            links, stdin = [], None
        if stdin is not None and links.count(stdin) >= 2:
            return
        time.sleep(0.05)
    raise AssertionError("the verb never started reading")


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig, rc, line", [(signal.SIGTERM, 143, "interrupted by SIGTERM"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_ends_a_verb_with_one_line(tmp_path, sig, rc, line):
    # `config check /dev/stdin` blocks reading a pipe nobody writes: a verb stopped mid-way.
    proc = _workbench(
        "config", "check", "/dev/stdin", cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_reading_stdin(proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err, out) == (rc, line + "\n", "")
