"""``workbench verl-launch``: run one grid run as a verl job, tracked in its MLflow child run.

Steps (``plan`` lists them; ``--dry-run`` prints them without running anything):

1. MLflow: create the run's child run (tags of ``workbench.tracking.standard_tags``, parent
   ``--parent-run-id``) or reuse the one recorded in ``<run_dir>/verl_run.json``, and hand it
   to verl through ``MLFLOW_RUN_ID`` / ``MLFLOW_TRACKING_URI``, in the environment *and* in
   Ray's runtime env (verl's tracker runs in the Ray TaskRunner process). verl logs its
   metrics into that run. mlflow must be importable: verl drops a logger it cannot set up
   without failing the job, so this command checks first.
2. SFT family only: the teacher's data (vLLM, ``realscale.VLLMEngine``), graded and
   filtered as the run config says, as verl SFT parquet (``messages``).
3. The verl job: ``python -m workbench.backends.verl.main`` (PPO family, a Ray driver) or
   ``torchrun -m verl.trainer.sft_trainer`` (SFT family).
4. The last checkpoint merged to Hugging Face format (``python -m verl.model_merger``)
   into ``<run_dir>/hf`` (a later run's ``init_from`` and the evaluation read it).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.backends.verl.overrides import Job, model_dir

STATE = "verl_run.json"


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


def ensure_mlflow_run(job: Job, cfg, *, experiment: str, parent_run_id: str | None, tracking_uri: str | None) -> tuple[str, str]:
    """``(run_id, tracking_uri)`` of the job's MLflow run, created once and reused on resume."""
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise SystemExit("mlflow is not installed: verl would silently log nowhere; pip install mlflow") from e
    from mlflow.tracking import MlflowClient

    from workbench.tracking import default_tracking_uri, standard_tags

    run_dir = Path(job.run_dir)
    state_path = run_dir / STATE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        return state["run_id"], state["tracking_uri"]
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {**standard_tags(cfg), "backend": "verl", "run": job.run_id}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=f"{job.run_id}-seed{Path(job.run_dir).name.removeprefix('seed')}",
                            tags={k: str(v) for k, v in tags.items()})
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri, "experiment": experiment}))
    return run.info.run_id, uri


def plan(job: Job, *, mlflow_run_id: str | None = None, tracking_uri: str | None = None,
         python: str = sys.executable) -> list[Step]:
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
    ckpt_root = f"{job.run_dir}/checkpoints"
    steps.append(Step("merge", [python, "-m", "workbench.backends.verl.launch", "merge", ckpt_root,
                                 model_dir(job.run_id, int(Path(job.run_dir).name.removeprefix("seed")),
                                           str(Path(job.run_dir).parent.parent))], env))
    return steps


def latest_actor_checkpoint(ckpt_root: str | Path) -> Path:
    """``<ckpt_root>/global_step_N[/actor]`` with the largest N."""
    root = Path(ckpt_root)
    steps = sorted((int(p.name.split("_")[-1]), p) for p in root.glob("global_step_*") if p.name.split("_")[-1].isdigit())
    if not steps:
        raise FileNotFoundError(f"no global_step_* checkpoint under {root}")
    last = steps[-1][1]
    return last / "actor" if (last / "actor").is_dir() else last


def merge(ckpt_root: str, target: str) -> int:
    src = latest_actor_checkpoint(ckpt_root)
    argv = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(src), "--target_dir", target]
    print("+", shlex.join(argv), flush=True)
    return subprocess.call(argv)


def run(steps: Sequence[Step], dry_run: bool = False) -> int:
    for step in steps:
        print(f"# {step.name}\n{step.shell()}", flush=True)
        if dry_run:
            continue
        rc = subprocess.call(step.argv, env={**os.environ, **step.env})
        if rc != 0:
            print(f"verl-launch: step {step.name!r} failed with exit code {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":  # the "merge" step
    if len(sys.argv) == 4 and sys.argv[1] == "merge":
        sys.exit(merge(sys.argv[2], sys.argv[3]))
    raise SystemExit("usage: python -m workbench.backends.verl.launch merge CKPT_ROOT TARGET_DIR")
