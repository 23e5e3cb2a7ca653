"""The CLI as users, Snakemake and CI call it: a real subprocess of the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workbench.cli import build_parser
from workbench.methods import METHODS

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, check=check, cwd=REPO)


def _verbs(parser, prefix=()):
    """Every verb path of the parser, e.g. ('config', 'check')."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _verbs(sub, (*prefix, name))


def test_every_verb_has_help():
    verbs = list(_verbs(build_parser()))
    assert ("config", "check") in verbs and ("list",) in verbs
    for verb in verbs:
        out = run(*verb, "--help").stdout
        assert "usage: workbench " + " ".join(verb) in out


def test_help_imports_no_heavy_module():
    code = (
        "import sys, contextlib, io\n"
        "from workbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print([m for m in ('torch', 'mlflow', 'verl', 'vllm', 'transformers', 'pydantic') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_check_prints_resolved_config_and_fails_on_bad_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("method: exopd\ngate: {lambda_base: 1.5}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pts: {phase1_end_frac: 0.6, phase2_end_frac: 0.4}\n")
    r = run("config", "check", str(good))
    assert "lambda_base: 1.5" in r.stdout and "sign_gate: false" in r.stdout and "mode: none" in r.stdout
    r = run("config", "check", str(good), str(bad), check=False)
    assert r.returncode == 2
    assert "phase1_end_frac (0.6) must be < phase2_end_frac (0.4)" in r.stderr and str(bad) in r.stderr
    r = run("config", "check", "-q", str(good), "--set", "gate.lambda_base=0.5", check=False)
    assert r.returncode == 2 and "gate.lambda_base" in r.stderr


def test_config_check_whole_grid():
    files = sorted(str(p) for p in (REPO / "experiments" / "runs").glob("*.yaml"))
    r = run("config", "check", "-q", *files)
    assert r.stdout.count("ok: ") == len(files) >= 26


def test_list_and_defaults_come_from_registries():
    out = run("list", "methods").stdout
    assert [line.split()[0] for line in out.splitlines()] == list(METHODS.names())
    assert run("list", "fallbacks").stdout.split() == ["interp", "preserve", "grpo", "mask"]
    r = run("config", "defaults", "--method", "bogus", check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    assert "method: opd" in run("config", "defaults", "--method", "opd").stdout


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("workbench")
    assert exe.exists(), f"{exe}: the package is not installed (pip install -e .)"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True, env={**os.environ})
    assert r.stdout.startswith("workbench ")
