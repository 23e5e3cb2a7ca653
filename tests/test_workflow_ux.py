"""What a user of the workflow sees: progress lines, a stale lock after a hard kill, what is
published to the committed reports/, the smoke report's caveat, the figures notebook."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"


def snakemake(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(SNAKEMAKE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def job_counts(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def checkout_copy(dest: Path) -> Path:
    """The checkout's files that git would commit (tracked and new, not ignored): no results/, .snakemake/, .venv."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in filter(None, files.stdout.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


# -- publishing: only the complete default grid, through temp siblings ------------------------
def test_only_the_complete_default_grid_is_published(tmp_path):
    def publishes(*config: str) -> int:
        out = snakemake("-n", "--config", f"results={tmp_path}", *config).stdout
        return job_counts(out).get("publish", 0)

    # reports/REPRODUCTION.md is the three-seed grid of every run: a subset must not replace it.
    assert publishes("seeds=[0]") == 0
    assert publishes("runs=[opd,sgopd]") == 0
    # The defaults spelled out are still the complete grid.
    assert publishes("scale=mini", "seeds=[2,1,0]", "backend=mini") == 1


def test_publish_replaces_each_report_item_whole(tmp_path):
    clone = checkout_copy(tmp_path / "clone")
    report = clone / "results" / "mini" / "report"
    (report / "tables").mkdir(parents=True)
    (report / "figures").mkdir()
    (report / "REPRODUCTION.md").write_text("# new report\n")
    (report / "runs.csv").write_text("run,seed,method,metric,value\n")
    (report / "casestudy_sgopd.html").write_text("<html>new</html>\n")
    (report / "tables" / "table1.md").write_text("new table\n")
    (report / "figures" / "fig4_avg_bars.png").write_bytes(b"new figure")
    stale = clone / "reports" / "figures" / "fig_gone.png"  # a figure the new report no longer has
    stale.write_bytes(b"old")
    # Only publish may run: the report above stands for a finished grid.
    snakemake("--cores", "1", "--allowed-rules", "publish", "--", "results/mini/published/grid.done", cwd=clone)
    reports = clone / "reports"
    assert (reports / "REPRODUCTION.md").read_text() == "# new report\n"
    assert (reports / "runs.csv").read_text() == "run,seed,method,metric,value\n"
    assert (reports / "casestudy_sgopd.html").read_text() == "<html>new</html>\n"
    assert sorted(p.name for p in (reports / "figures").iterdir()) == ["fig4_avg_bars.png"]
    assert sorted(p.name for p in (reports / "tables").iterdir()) == ["table1.md"]
    assert (reports / "README.md").read_text() == (REPO / "reports" / "README.md").read_text()  # not the report's
    assert (reports / "search").is_dir()
    assert not [p.name for p in reports.iterdir() if p.name.startswith(".")]  # no temp sibling left


# -- a stale lock after a hard kill -----------------------------------------------------------
def _unlock_module():
    spec = importlib.util.spec_from_file_location("unlock_stale", REPO / "workflow" / "unlock_stale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unlock(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "workflow" / "unlock_stale.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_stale_lock_is_removed_only_when_no_process_of_the_checkout_runs(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{tmp_path}/results/mini/grid.json\n")
    # A train job of the killed Snakemake, still running in this checkout.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "workbench", "train"], cwd=tmp_path)
    try:
        deadline = time.time() + 30
        while orphan.pid not in [pid for pid, _ in _unlock_module().holders(tmp_path.resolve())]:
            assert time.time() < deadline, "the orphan job was never seen"
            time.sleep(0.2)
        r = _unlock(tmp_path)
        assert (locks / "0.output.lock").exists()
        assert "kept" in r.stderr and f"pid {orphan.pid}" in r.stderr
    finally:
        orphan.send_signal(signal.SIGKILL)
        orphan.wait(timeout=30)
    r = _unlock(tmp_path)
    assert not locks.exists() and "removed a stale Snakemake lock" in r.stderr
    assert _unlock(tmp_path).stderr == ""  # no lock: nothing to say


def test_only_snakemake_and_workbench_commands_hold_a_lock():
    command = _unlock_module().COMMAND
    for held in (
        "/x/.venv/bin/snakemake --cores 2",
        "python -m snakemake --target-jobs x",
        "/bin/bash -c set -euo pipefail; WORKBENCH_STATUS_FD=3 /x/python -m workbench train a.yaml",
        "/x/.venv/bin/workbench prepare --out w",
    ):
        assert command.search(held), held
    for free in (
        "/home/me/sgopd-workbench/.venv/bin/python -m pytest",
        "vim /home/me/workbench/Snakefile",
        "mlflow ui --backend-store-uri sqlite:///results/mlflow.db",
    ):
        assert not command.search(free), free


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_reproduce_starts_after_a_hard_kill(tmp_path):
    clone = checkout_copy(tmp_path / "clone")
    results = tmp_path / "results"
    target = results / "smoke" / "grid.json"
    # What a SIGKILLed Snakemake leaves: its lock on the files it was making.
    locks = clone / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{target}\n")
    args = f"{target} --config scale=smoke results={results}"
    # `-o setup`: the environment is this one (VENV), not installed again into the copy.
    r = subprocess.run(
        ["make", "-o", "setup", "reproduce", f"VENV={BIN.parent}", f"ARGS={args}"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "removed a stale Snakemake lock" in r.stderr and target.exists()


# -- progress ---------------------------------------------------------------------------------
def test_the_prepare_job_shows_its_stages_on_the_terminal_and_keeps_them_in_its_log(tmp_path):
    r = snakemake(
        "--cores", "2", "--nolock", f"{tmp_path}/smoke/world/manifest.json", "--config", "scale=smoke", f"results={tmp_path}"
    )
    for line in (
        "prepare: building the smoke world",
        "prepare: training teacher (step 6/6",
        "prepare: evaluating student",
        "prepare: world ready",
    ):
        assert line in r.stderr, line
    log = (tmp_path / "smoke" / "logs" / "prepare.log").read_text()
    assert "prepare: building the smoke world" in log and "prepare: world ready" in log
    assert "[mini.prepare]" not in r.stderr  # the detailed log stays in the log


def test_long_rules_send_status_lines_to_snakemakes_stderr(tmp_path):
    out = snakemake("-n", "-p", "--config", "scale=smoke", "seeds=[0]", "runs=[opd]", f"results={tmp_path}").stdout
    for verb in ("prepare", "train", "eval"):
        cmds = [ln for ln in out.splitlines() if f"-m workbench {verb} " in ln]
        assert cmds and all("WORKBENCH_STATUS_FD=3 " in c and "3>&2 > " in c for c in cmds), verb


def test_training_reports_start_resume_evaluation_and_a_finished_run(smoke_world, tmp_path, monkeypatch, capsys):
    from workbench import status
    from workbench.mini.runs import train_run
    from workbench.tracking import StopRun

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    read_end, write_end = os.pipe()
    monkeypatch.setattr(status, "_FD", write_end)  # the descriptor a Snakemake rule passes
    run_dir = tmp_path / "opd" / "seed0"

    def train(on_eval=None):
        train_run(
            REPO / "experiments" / "runs" / "opd.yaml",
            run_dir=run_dir,
            world=smoke_world,
            scale="smoke",
            experiment="ux-test",
            overrides=["seed=0"],
            on_eval=on_eval,
        )
        return capsys.readouterr().err

    def interrupt(step, result):
        raise StopRun("interrupted after the step-2 checkpoint")

    with pytest.raises(StopRun):
        train(on_eval=interrupt)
    err = capsys.readouterr().err
    assert "train opd seed0: training, 4 steps" in err
    assert "train opd seed0: step 1/4" not in err  # quarter marks: the terminal only; the log has its own lines

    err = train()
    assert "train opd seed0: resuming from step 2/4" in err
    assert "train opd seed0: evaluating the final model" in err
    assert re.search(r"train opd seed0: done, avg@2 \d+\.\d\d \(.*eval\.json\)", err)
    assert re.search(r"train opd seed0: already finished \(.*eval\.json\), nothing to do", train())

    os.close(write_end)
    with os.fdopen(read_end) as f:
        terminal = f.read().splitlines()
    expected = [
        "training, 4 steps",
        "step 1/4, about",
        "step 2/4, about",
        "resuming from step 2/4",
        "step 3/4, about",
        "evaluating the final model",
        "done, avg@2",
        "already finished",
    ]
    assert [e for e in expected for ln in terminal if ln.startswith(f"train opd seed0: {e}")] == expected, terminal


def test_a_world_that_is_up_to_date_says_so(smoke_world, capsys):
    from workbench.mini.prepare import prepare

    prepare(smoke_world, seed=0, preset="smoke", verbose=True)
    assert re.search(
        rf"prepare: the smoke world in {re.escape(str(smoke_world))} is up to date \(hash \w+\), "
        "nothing to do",
        capsys.readouterr().err,
    )


def test_status_lines_reach_the_descriptor_the_rule_passes(tmp_path):
    # The workflow rules' plumbing: descriptor 3 is Snakemake's stderr, the rest goes to the log.
    log = tmp_path / "job.log"
    code = "from workbench.status import status; status('stage one'); status('tick', stderr=False); print('detail')"
    r = subprocess.run(
        ["bash", "-c", f'WORKBENCH_STATUS_FD=3 {sys.executable} -c "{code}" 3>&2 > {log} 2>&1'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stderr == "stage one\ntick\n"
    assert log.read_text() == "stage one\ndetail\n"
    # A child process gets no descriptor number from the environment (its 3 may be any file).
    code = "import os, workbench.status; print(os.environ.get('WORKBENCH_STATUS_FD'))"
    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "WORKBENCH_STATUS_FD": "3"}, capture_output=True, text=True, check=True
    )
    assert r.stdout == "None\n"


# -- the smoke report's caveat and seed counts ------------------------------------------------
@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """A synthetic one-seed grid in an experiment named like the smoke workflow's."""
    from workbench.analysis.synthetic import make_synthetic_grid, write_runs

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    write_runs(uri, "sgopd-smoke", make_synthetic_grid(seeds=(0,), steps=10, eval_every=5))
    return uri


def test_smoke_report_opens_with_its_caveat_and_counts_seeds(smoke_store, tmp_path):
    from workbench.analysis.load import Runs, load_runs
    from workbench.analysis.report import write_report
    from workbench.grid import load_scale

    runs = load_runs(smoke_store, "sgopd-smoke")
    text = write_report(runs, tmp_path / "smoke", make_figures=False, command="x", n_resamples=200).read_text()
    caveat = load_scale("smoke").caveat
    assert caveat and "meaningless" in caveat
    head = text[: text.index("## Provenance")]
    assert f"> **Caveat.** {caveat}" in head
    claim_rows = [ln for ln in text.splitlines() if re.match(r"^\| \d[a-c] \|", ln)]
    assert claim_rows and all(ln.split(" | ")[-2] == "n=1 (seed 0)" for ln in claim_rows), claim_rows[:2]
    # The mini scale has no caveat: its report is the reproduction.
    mini = Runs(runs.runs, runs.history, "sgopd-mini")
    text = write_report(mini, tmp_path / "mini", make_figures=False, command="x", n_resamples=200).read_text()
    assert "Caveat." not in text


# -- the figures notebook ---------------------------------------------------------------------
NOTEBOOK = REPO / "analysis" / "notebooks" / "figures.ipynb"


def test_notebook_writes_under_results_by_default():
    import json

    cell = "".join(json.loads(NOTEBOOK.read_text())["cells"][1]["source"])
    default = re.search(r'^OUT_DIR = os.environ.get\("SGOPD_FIGURES_DIR", "([^"]+)"\)$', cell, re.MULTILINE).group(1)
    # Relative to the notebook, the directory it runs in (jupyter execute, JupyterLab): git-ignored results/.
    assert (NOTEBOOK.parent / default).resolve() == REPO / "results" / "notebook-figures"


def test_the_readmes_notebook_command_runs_after_setup(smoke_store, tmp_path):
    readme = (REPO / "README.md").read_text()
    command = next(ln for ln in readme.splitlines() if "figures.ipynb" in ln and ln.lstrip().startswith("SGOPD_"))
    assert ".venv/bin/jupyter " in command
    out = tmp_path / "figs"
    r = subprocess.run(
        ["bash", "-c", command.replace(".venv/bin/", f"{BIN}/")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "SGOPD_TRACKING_URI": smoke_store, "SGOPD_FIGURES_DIR": str(out)},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "fig4_avg_bars.png").stat().st_size > 5_000


def test_progress_lines_show_a_reward_only_for_methods_that_sample(capsys):
    """An SFT-family step has no reward: its log line says nothing about one (it used to
    print ``reward nan``); an on-policy step shows its mean reward."""
    from workbench.mini.trainer import Progress

    sft, pg = Progress(20, every=10), Progress(10, every=10)
    for i in range(20):
        sft.update(i, 0, {"train/loss": 0.5})
    for i in range(10):
        pg.update(i, 0, {"train/loss": 0.5, "train/reward_mean": 0.25})
    lines = capsys.readouterr().err.splitlines()
    assert [line.rsplit(" eta", 1)[0] for line in lines] == [
        "step 10/20 loss 0.5000",
        "step 20/20 loss 0.5000",
        "step 10/10 reward 0.250 loss 0.5000",
    ]
