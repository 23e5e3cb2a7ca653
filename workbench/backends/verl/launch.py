"""``workbench verl-launch``: run one grid run as a verl job, tracked in its MLflow child run.

Steps (``plan`` lists them; ``--dry-run`` prints them without running anything):

1. MLflow: create the run's child run (tags of ``workbench.tracking.standard_tags``, parent
   ``--parent-run-id``) or reuse the one recorded in ``<run_dir>/verl_run.json``, and hand it
   to verl through ``MLFLOW_RUN_ID`` / ``MLFLOW_TRACKING_URI``, in the environment *and* in
   Ray's runtime env (verl's tracker runs in the Ray TaskRunner process). verl logs its
   metrics into that run (PPO family: through ``trainer.MlflowLogger``, which a resume
   cannot knock out). mlflow must be importable: verl drops a logger it cannot set up
   without failing the job, so this command checks first. Under SLURM a SQLite or file
   store is refused: many jobs writing one SQLite file on a shared filesystem lose
   writes or corrupt it; use a tracking server (docs/verl.md).
2. SFT family only: the teacher's data (vLLM, ``realscale.VLLMEngine``), graded and
   filtered as the run config says, as verl SFT parquet (``messages``).
3. The verl job: ``python -m workbench.backends.verl.main`` (PPO family, a Ray driver) or
   ``torchrun -m verl.trainer.sft_trainer`` (SFT family).
4. The last checkpoint merged to Hugging Face format (``python -m verl.model_merger``)
   into ``<run_dir>/hf`` (a later run's ``init_from`` and the evaluation read it). First
   it checks that the MLflow run has metrics up to that checkpoint's step: a job that
   trained without logging (verl dropped MLflow) fails here instead of passing silently.

The launcher owns the MLflow run's status: RUNNING while a job runs, FINISHED once every
step succeeded, FAILED when one fails (the analysis reads FINISHED runs only).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.backends.verl.overrides import RUN_STATE, Job

STATE = RUN_STATE  # the file's name; its path is always ``job.paths.state`` (overrides.run_paths)


@dataclass
class Step:
    name: str
    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def mlflow_overrides(run_id: str, tracking_uri: str) -> list[str]:
    """Hydra overrides that put the MLflow run into every Ray process's environment."""
    base = "+ray_kwargs.ray_init.runtime_env.env_vars"
    return [f"{base}.MLFLOW_RUN_ID={run_id}", f"{base}.MLFLOW_TRACKING_URI='{tracking_uri}'"]


#: metrics verl logs at every step with the step as MLflow step (PPO trainers, SFT trainer)
STEP_METRICS = ("training/global_step", "train/loss")


def check_tracking_store(uri: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a SQLite or file store inside a SLURM job (``UserError``).

    A grid on a cluster is up to one job per run and seed at once, each writing its
    metrics every step. SQLite on a shared filesystem (NFS, Lustre) has unreliable locks:
    writers fail with "database is locked" (verl then drops metrics) or corrupt the file.
    A tracking server serialises the writes.
    """
    from workbench.errors import UserError

    environ = os.environ if environ is None else environ
    scheme = uri.split(":", 1)[0].lower() if "://" in uri else "file"
    if "SLURM_JOB_ID" in environ and scheme in ("sqlite", "file"):
        raise UserError(
            f"MLflow store {uri} is a {scheme} store, and this is SLURM job {environ['SLURM_JOB_ID']}: "
            "concurrent jobs would share one file on a shared filesystem; start a tracking server "
            "(`mlflow server --backend-store-uri postgresql://...`, see docs/verl.md) and set "
            "MLFLOW_TRACKING_URI=http://HOST:PORT (or --tracking-uri)"
        )


def ensure_mlflow_run(job: Job, cfg, *, experiment: str, parent_run_id: str | None, tracking_uri: str | None) -> tuple[str, str]:
    """``(run_id, tracking_uri)`` of the job's MLflow run, created once and reused on resume."""
    from workbench.errors import UserError

    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise UserError("mlflow is not installed: verl would silently log nowhere; pip install mlflow") from e
    from mlflow.tracking import MlflowClient

    from workbench.io import atomic_write_json
    from workbench.tracking import default_tracking_uri, ensure_experiment, standard_tags

    state_path = Path(job.paths.state)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        check_tracking_store(state["tracking_uri"])
        MlflowClient(state["tracking_uri"]).update_run(state["run_id"], status="RUNNING")  # FAILED by a last attempt
        return state["run_id"], state["tracking_uri"]
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    check_tracking_store(uri)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, uri, experiment)
    # the job's seed (--seed), not the run config's default: the analysis keys runs by (run, seed)
    tags = {**standard_tags(cfg), "backend": "verl", "run": job.run_id, "seed": str(job.paths.seed)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=f"{job.run_id}-seed{job.paths.seed}", tags={k: str(v) for k, v in tags.items()})
    atomic_write_json(state_path, {"run_id": run.info.run_id, "tracking_uri": uri, "experiment": experiment})
    return run.info.run_id, uri


def plan(
    job: Job, *, mlflow_run_id: str | None = None, tracking_uri: str | None = None, python: str = sys.executable
) -> list[Step]:
    """The commands of a job, in order."""
    env = dict(job.env)
    overrides = list(job.overrides)
    if mlflow_run_id:
        env.update(MLFLOW_RUN_ID=mlflow_run_id, MLFLOW_TRACKING_URI=tracking_uri or "")
        if job.kind == "ppo":
            overrides += mlflow_overrides(mlflow_run_id, tracking_uri or "")
    steps = []
    if job.kind == "sft":
        td = job.teacher_data or {}
        steps.append(Step("teacher-data", [python, "-m", "workbench.backends.verl.teacher_data", json.dumps(td)], env))
        argv = ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={job.gpus}", "-m", job.module, *overrides]
    else:
        argv = [python, "-m", "workbench.backends.verl.main", *overrides]
    steps.append(Step("train", argv, env))
    # verl writes checkpoints under trainer.default_local_dir = job.paths.checkpoints
    steps.append(
        Step("merge", [python, "-m", "workbench.backends.verl.launch", "merge", job.paths.checkpoints, job.paths.hf], env)
    )
    return steps


def latest_actor_checkpoint(ckpt_root: str | Path) -> Path:
    """``<ckpt_root>/global_step_N[/actor]`` with the largest N."""
    root = Path(ckpt_root)
    steps = sorted((int(p.name.split("_")[-1]), p) for p in root.glob("global_step_*") if p.name.split("_")[-1].isdigit())
    if not steps:
        raise FileNotFoundError(f"no global_step_* checkpoint under {root}")
    last = steps[-1][1]
    return last / "actor" if (last / "actor").is_dir() else last


def checkpoint_step(ckpt: Path) -> int:
    """N of ``.../global_step_N[/actor]``."""
    d = ckpt.parent if ckpt.name == "actor" else ckpt
    return int(d.name.split("_")[-1])


def check_logged(run_id: str, tracking_uri: str | None, step: int) -> None:
    """Fail unless the MLflow run has per-step metrics up to ``step`` (``STEP_METRICS``).

    verl drops MLflow without failing the job when it cannot set it up, and drops a step's
    metrics when logging them fails; the checkpoint says how far training got, so a run
    whose metrics stop short of it lost them.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    logged = max((m.step for key in STEP_METRICS for m in client.get_metric_history(run_id, key)), default=None)
    if logged is None or logged < step:
        raise RuntimeError(
            f"MLflow run {run_id} ({tracking_uri}) has per-step metrics up to step {logged}, but "
            f"training reached step {step}: the job's metrics were not logged (see its log for "
            "'MLflow'); fix the store and rerun, or log the missing steps by hand"
        )


def step_actor_checkpoint(ckpt_root: str | Path, step: int) -> Path:
    """``<ckpt_root>/global_step_<step>[/actor]`` (a ``train.keep_checkpoints_at`` step)."""
    d = Path(ckpt_root) / f"global_step_{step}"
    if not d.is_dir():
        have = sorted(p.name for p in Path(ckpt_root).glob("global_step_*"))
        raise FileNotFoundError(f"no checkpoint {d} (have: {', '.join(have) or 'none'})")
    return d / "actor" if (d / "actor").is_dir() else d


def merge(ckpt_root: str, target: str, step: int | None = None) -> int:
    """Merge the last checkpoint (or that of ``step``) into a Hugging Face folder ``target``."""
    src = latest_actor_checkpoint(ckpt_root) if step is None else step_actor_checkpoint(ckpt_root, step)
    if os.environ.get("MLFLOW_RUN_ID"):  # the launcher's run (plan() puts it in every step's env)
        try:
            check_logged(os.environ["MLFLOW_RUN_ID"], os.environ.get("MLFLOW_TRACKING_URI") or None, checkpoint_step(src))
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    argv = [
        sys.executable,
        "-m",
        "verl.model_merger",
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(src),
        "--target_dir",
        target,
    ]
    print("+", shlex.join(argv), flush=True)
    return subprocess.call(argv)


def end_mlflow_run(env: Mapping[str, str], status: str) -> None:
    """Set the status of the launcher's MLflow run (``MLFLOW_RUN_ID`` in a step's env), if any."""
    if env.get("MLFLOW_RUN_ID"):
        from mlflow.tracking import MlflowClient

        MlflowClient(env.get("MLFLOW_TRACKING_URI") or None).set_terminated(env["MLFLOW_RUN_ID"], status=status)


def run(steps: Sequence[Step], dry_run: bool = False) -> int:
    for step in steps:
        print(f"# {step.name}\n{step.shell()}", flush=True)
        if dry_run:
            continue
        rc = subprocess.call(step.argv, env={**os.environ, **step.env})
        if rc != 0:
            print(f"verl-launch: step {step.name!r} failed with exit code {rc}", file=sys.stderr)
            end_mlflow_run(step.env, "FAILED")
            return rc
    if steps and not dry_run:
        end_mlflow_run(steps[-1].env, "FINISHED")
    return 0


if __name__ == "__main__":  # the "merge" step
    if len(sys.argv) in (4, 5) and sys.argv[1] == "merge":
        sys.exit(merge(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:])))
    raise SystemExit("usage: python -m workbench.backends.verl.launch merge CKPT_ROOT TARGET_DIR [STEP]")
