"""``make gpu-smoke``: the verl path end to end on a GPU machine, in one command (goal: < 8 min, one H200).

Every step goes through the workbench's own commands, as a cluster run would:

1. env: versions (torch and its CUDA, vLLM, verl, transformers, flash-attn), the GPUs; a CPU
   torch is refused (``stage.require_cuda_torch``).
2. models: a toy Qwen3 student and teacher, random init plus a few CPU steps so that rewards
   are mixed (``testing.save_toy_model``), in ``results/gpu-smoke/models/{student,teacher}``.
3. data: toy sets in ``results/gpu-smoke/raw/<set>/`` (JSONL, parquet, JSON), staged by
   ``workbench verl-stage --scale gpu-smoke`` into the files the scale names.
4. check: ``workbench verl-check --scale gpu-smoke --run RUN``.
5. train: ``workbench verl-launch --run RUN --scale gpu-smoke`` (MLflow run, the verl job,
   ``verl.model_merger`` into ``hf/``): 3 steps of ``sgopd`` (gate + PTS). verl puts the
   teacher on a GPU pool of its own, so sgopd takes 2 GPUs; on a 1-GPU machine the script
   runs ``grpo`` (1 GPU, no teacher) and says so in the report.
6. eval: ``workbench realscale-eval`` of the merged model with vLLM, logged into the run.
7. assertions on what was produced: the checkpoint, the merged model (loads), the
   evaluation's results.json and samples, and the run's MLflow history (docs/algorithm.md section 10
   names, the gate's and PTS's included for sgopd).

``--dry-run`` (CPU, no vLLM): steps 1-4 run for real; step 5 prints the launch commands
(``verl-launch --dry-run``); step 6 evaluates the toy student with the transformers engine
into an MLflow run of its own; step 7 checks what exists (evaluation, its MLflow metrics)
and lists the rest as not run. Either way the report (device, versions, timings, each
step and assertion, pass/fail) goes to ``results/gpu-smoke/report.json``; exit status 1 on
any failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALE = "gpu-smoke"
OUT = Path("results/gpu-smoke")
EXPERIMENT = "gpu-smoke"
BENCH = "aime24"
#: sets of the scale -> toy problems and the raw format they are written in
RAW_FORMATS = (".jsonl", ".parquet", ".json")
#: what must be in the MLflow history: CORE for every run (once per step), GATE and PTS for sgopd
GATE = (
    "train/conflict_frac",
    "train/consensus_frac",
    "train/neutral_frac",
    "train/adv_mean",
    "train/adv_abs_max",
    "train/kl_teacher",
)
PTS = ("train/pts_alpha", "train/pts_kept", "train/pts_teacher_acc", "train/pts_loss")
CORE = ("train/reward_mean", "train/grad_norm", "perf/step_seconds")
#: docs/algorithm.md section 10's train/perf names (missing ones are listed in the report, not failed)
SPEC_TRAIN = (
    "train/reward_mean",
    "train/entropy",
    "train/response_length",
    *GATE[:3],
    "train/adv_mean",
    "train/adv_abs_max",
    "train/clipfrac",
    "train/kl_teacher",
    "train/loss",
    "train/grad_norm",
    *PTS,
    "perf/step_seconds",
    "perf/tokens_per_second",
)
EVAL = (f"eval/{BENCH}/avg_at_k", f"eval/{BENCH}/pass_at_k", "eval/avg_at_k", "eval/pass_at_k")


class Smoke:
    """Runs the steps, times them and keeps the report."""

    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.report: dict = {
            "dry_run": dry_run,
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "steps": [],
            "assertions": {},
            "notes": [],
        }
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def step(self, name: str, fn: Callable[[], object]) -> object:
        t = time.time()
        entry: dict = {"name": name}
        try:
            entry["result"] = fn()
            entry["ok"] = True
        except Exception as e:  # noqa: BLE001 - every failure is a line of the report
            entry.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        entry["seconds"] = round(time.time() - t, 2)
        self.report["steps"].append(entry)
        status = "ok  " if entry["ok"] else "FAIL"
        print(
            f"[gpu-smoke] {status} {name} ({entry['seconds']:.1f} s)" + ("" if entry["ok"] else f": {entry['error']}"), flush=True
        )
        if not entry["ok"]:
            raise StepFailed(name)
        return entry["result"]

    def cli(self, name: str, args: list[str], timeout: float) -> str:
        """``python -m workbench ARGS``, output in ``logs/<name>.log``; raises on a non-zero exit."""
        argv = [sys.executable, "-m", "workbench", *args]
        log = self.logs / f"{name}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(log, "w") as f:
            f.write("$ " + " ".join(argv) + "\n")
            f.flush()
            try:
                rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = 124
        text = log.read_text()
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise RuntimeError(f"`workbench {' '.join(args[:1])}` exited {rc} (log {log}):\n{tail}")
        return text

    def write(self) -> Path:
        from workbench.io import atomic_write_json

        self.report["total_seconds"] = round(time.time() - self.t0, 1)
        steps_ok = all(s["ok"] for s in self.report["steps"])
        checks_ok = all(a.get("ok", True) for a in self.report["assertions"].values())
        self.report["ok"] = steps_ok and checks_ok
        path = self.out / ("report.dry-run.json" if self.dry_run else "report.json")
        atomic_write_json(path, self.report)
        return path


class StepFailed(Exception):
    pass


# -- the steps -------------------------------------------------------------------------------


def env_step(smoke: Smoke) -> dict:
    import torch

    from workbench.backends.verl import stage
    from workbench.errors import UserError

    info: dict = {
        "versions": stage.gpu_env(),
        "python": sys.version.split()[0],
        "gpu_stack_pins": stage.GPU_STACK,
        "flash_attn": stage.has_flash_attn(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    else:
        info["gpus"] = []
    try:
        stage.require_cuda_torch("gpu-smoke")
        info["cuda_torch"] = "ok"
    except UserError as e:
        if not smoke.dry_run:
            raise
        info["cuda_torch"] = f"a real run refuses this environment: {e}"
    off = {k: info["versions"].get(k) for k, v in stage.GPU_STACK.items() if (info["versions"].get(k) or "").split("+")[0] != v}
    if off:
        smoke.report["notes"].append(f"GPU stack off verl's tested pins {stage.GPU_STACK}: {off}")
    return info


def models_step(scale) -> dict:
    """The toy models where the scale names them (``results/gpu-smoke/models/{student,teacher}``)."""
    from workbench.backends.verl import testing as T

    tok = T.toy_tokenizer()
    return {role: T.save_toy_model(getattr(scale, role), role, tokenizer=tok) for role in ("student", "teacher")}


def write_raw(scale, raw: Path) -> dict[str, str]:
    """Toy problems for every set the scale stages, in rotating formats and schemas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.backends.verl import stage
    from workbench.backends.verl import testing as T

    written = {}
    for i, item in enumerate(stage.plan(scale, raw)):
        if item.name in written:
            continue
        rows = T.toy_problems(6 if item.kind == "bench" else 16, seed=i)
        folder = raw / item.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        fmt = RAW_FORMATS[i % len(RAW_FORMATS)]
        if item.name == "train-a" or item.name == "deepmath":  # DeepMath's own schema
            rows = [{"question": r["problem"], "final_answer": r["answer"], "difficulty": 5.0} for r in rows]
        path = folder / ("data" if fmt != ".json" else "") / f"train-00000-of-00001{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif fmt == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            path.write_text(json.dumps(rows))
        written[item.name] = str(path)
    return written


def data_step(smoke: Smoke, scale) -> dict:
    from workbench.backends.verl import testing as T

    raw = smoke.out / "raw"
    written = write_raw(scale, raw)
    log = smoke.cli("stage", ["verl-stage", "--scale", SCALE, "--from", str(raw)], timeout=300)
    # every staged prompt must fit: verl filters longer ones out (an empty loader fails late)
    import pyarrow.parquet as pq

    tok = T.toy_tokenizer()
    longest = 0
    for f in [*scale.data.sources.values(), *scale.data.val_files]:
        for row in pq.read_table(f).to_pylist():
            text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            longest = max(longest, len(tok(text, add_special_tokens=False)["input_ids"]))
    if longest > scale.data.max_prompt_length:
        raise RuntimeError(f"a staged prompt has {longest} tokens > max_prompt_length {scale.data.max_prompt_length}")
    staged = [line for line in log.splitlines() if line.split(" ", 1)[0] in ("train", "val", "bench")]
    return {"raw": written, "staged": staged, "longest_prompt_tokens": longest}


def pick_run(requested: str, n_gpus: int, dry_run: bool) -> tuple[str, str | None]:
    """The run to train and why (sgopd needs the student's GPU plus the teacher's own)."""
    from workbench.backends.verl.overrides import build_job, load_scale
    from workbench.config import load_config

    if requested != "auto":
        return requested, None
    need = build_job(load_config(REPO / "experiments/runs/sgopd.yaml"), load_scale(SCALE)).gpus
    if dry_run or n_gpus >= need:
        return "sgopd", None
    return "grpo", (
        f"sgopd needs {need} GPUs at scale {SCALE} (verl puts the teacher on a GPU pool of its own); "
        f"this machine has {n_gpus}: ran grpo (no teacher, no gate, no PTS) instead"
    )


def assertions(
    smoke: Smoke,
    paths,
    run: str,
    steps: int,
    tracking_uri: str,
    state_file: Path,
    *,
    trained: bool,
    eval_dir: Path,
    n_samples: int,
) -> dict:
    """Check what the steps produced; ``{"name": {"ok": bool, ...}}`` (``"not run"`` entries skipped)."""
    out: dict = {}

    def check(name: str, fn: Callable[[], dict]) -> None:
        try:
            out[name] = {"ok": True, **fn()}
        except Exception as e:  # noqa: BLE001
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}

    if trained:
        from workbench.backends.verl.launch import latest_actor_checkpoint

        def checkpoint() -> dict:
            ckpt = latest_actor_checkpoint(paths.checkpoints)
            step = int(ckpt.parent.name.split("_")[-1] if ckpt.name == "actor" else ckpt.name.split("_")[-1])
            assert step == steps, f"last checkpoint is step {step}, want {steps}"
            assert any(ckpt.iterdir()), f"{ckpt} is empty"
            return {"path": str(ckpt)}

        def merged() -> dict:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            hf = Path(paths.hf)
            assert (hf / "config.json").is_file() and list(hf.glob("*.safetensors")), f"no merged model in {hf}"
            model = AutoModelForCausalLM.from_pretrained(hf)
            tok = AutoTokenizer.from_pretrained(hf)
            assert tok.chat_template, "the merged model has no chat template"
            return {"path": str(hf), "parameters": sum(p.numel() for p in model.parameters())}

        check("checkpoint", checkpoint)
        check("merged_model", merged)
    else:
        out["checkpoint"] = out["merged_model"] = {"not_run": "dry run: no training"}

    def evaluation() -> dict:
        res = json.loads((eval_dir / "results.json").read_text())
        b = res["benchmarks"][BENCH]
        assert 0 <= b["avg_at_k"] <= 1 and 0 <= b["pass_at_k"] <= 1, b
        lines = (eval_dir / f"{BENCH}.samples.jsonl").read_text().splitlines()
        assert len(lines) == b["n_problems"] * n_samples, (len(lines), b["n_problems"], n_samples)
        return {"avg_at_k": b["avg_at_k"], "pass_at_k": b["pass_at_k"], "n_problems": b["n_problems"]}

    check("eval_results", evaluation)

    def mlflow_history() -> dict:
        from mlflow.tracking import MlflowClient

        state = json.loads(state_file.read_text())
        client = MlflowClient(tracking_uri)
        keys = set(client.get_run(state["run_id"]).data.metrics)
        want = list(EVAL)
        if trained:
            want += [*CORE, *GATE, *PTS] if run == "sgopd" else list(CORE)
        missing = [k for k in want if k not in keys]
        assert not missing, f"missing in the MLflow run: {missing}"
        summary = {}
        for k in want:
            hist = client.get_metric_history(state["run_id"], k)
            values = [m.value for m in hist]
            assert all(math.isfinite(v) for v in values), f"{k} has a non-finite value: {values}"
            summary[k] = {"n": len(values), "last": values[-1]}
        for k in CORE if trained else ():
            assert summary[k]["n"] == steps, f"{k}: {summary[k]['n']} entries, want one per step ({steps})"
        result = {"metrics": summary}
        if trained:
            result["spec_names_missing"] = [k for k in SPEC_TRAIN if k not in keys]
        return result

    check("mlflow_history", mlflow_history)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: everything but the verl job and vLLM")
    ap.add_argument("--run", default="auto", help="grid run to train (default: sgopd, grpo on a 1-GPU machine)")
    ap.add_argument(
        "--out",
        default=str(OUT),
        help="raw data, logs, runs, MLflow store and report "
        "(default: %(default)s; the toy models and staged data go where scales/gpu-smoke.yaml says)",
    )
    ap.add_argument("--train-timeout", type=float, default=420.0)
    ap.add_argument("--eval-timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    os.chdir(REPO)  # the scale's paths are relative to the repository root
    out = Path(args.out)
    smoke = Smoke(out, args.dry_run)
    try:
        run_all(smoke, args)
    except StepFailed:
        pass
    path = smoke.write()
    ok = smoke.report["ok"]
    for name, a in smoke.report["assertions"].items():
        status = "ok  " if a.get("ok", True) and "not_run" not in a else ("--  " if "not_run" in a else "FAIL")
        print(
            f"[gpu-smoke] {status} assert {name}"
            + (f": {a['error']}" if "error" in a else f" ({a['not_run']})" if "not_run" in a else "")
        )
    for note in smoke.report["notes"]:
        print(f"[gpu-smoke] note: {note}")
    print(f"[gpu-smoke] {'PASS' if ok else 'FAIL'} in {smoke.report['total_seconds']:.0f} s; report {path}")
    return 0 if ok else 1


def run_all(smoke: Smoke, args) -> None:
    from workbench.backends.verl.overrides import build_job, load_scale
    from workbench.config import load_config

    scale = load_scale(SCALE)
    info = smoke.step("env", lambda: env_step(smoke))
    smoke.report["env"] = info
    smoke.step("models", lambda: models_step(scale))
    smoke.step("data", lambda: data_step(smoke, scale))
    run, why = pick_run(args.run, len(info["gpus"]), args.dry_run)
    if why:
        smoke.report["notes"].append(why)
    smoke.report["run"] = run
    smoke.step(
        "verl-check", lambda: smoke.cli("verl-check", ["verl-check", "--scale", SCALE, "--run", run], 300).splitlines()[-2:]
    )
    results = str(smoke.out / "runs")
    job = build_job(load_config(REPO / f"experiments/runs/{run}.yaml"), scale, experiment=EXPERIMENT, results=results)
    paths = job.paths
    tracking_uri = f"sqlite:///{(smoke.out / 'mlflow.db').resolve()}"
    launch = [
        "verl-launch",
        "--run",
        run,
        "--scale",
        SCALE,
        "--results",
        results,
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        tracking_uri,
    ]
    ev = scale.eval
    eval_args = [
        "--benchmark",
        BENCH,
        "--source",
        f"{BENCH}={ev.benchmarks[BENCH]}",
        "--n-samples",
        str(ev.n_samples),
        "--k",
        str(ev.k),
        "--temperature",
        str(ev.temperature),
        "--top-p",
        str(ev.top_p),
        "--max-new-tokens",
        str(ev.max_new_tokens),
        "--label",
        run,
        "--step",
        str(job.steps),
    ]
    if smoke.dry_run:
        smoke.report["launch_commands"] = smoke.step(
            "train (dry run: the commands)", lambda: smoke.cli("launch", [*launch, "--dry-run"], 300).splitlines()[1:]
        )
        # the evaluation and its MLflow logging run for real, on the toy student with transformers
        state_file = smoke.out / "dry-run" / "verl_run.json"
        eval_dir = smoke.out / "dry-run" / "eval"

        def dry_eval() -> list[str]:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            exp = client.get_experiment_by_name(EXPERIMENT)
            exp_id = (
                exp.experiment_id
                if exp
                else client.create_experiment(EXPERIMENT, artifact_location=(smoke.out / "mlartifacts").resolve().as_uri())
            )
            mlrun = client.create_run(exp_id, run_name=f"{run}-dry-run", tags={"dry_run": "true"})
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"run_id": mlrun.info.run_id, "tracking_uri": tracking_uri}))
            return smoke.cli(
                "eval",
                [
                    "realscale-eval",
                    scale.student,
                    "--out",
                    str(eval_dir),
                    "--engine",
                    "transformers",
                    "--mlflow-run-file",
                    str(state_file),
                    *eval_args,
                ],
                args.eval_timeout,
            ).splitlines()[-2:]

        smoke.step("eval (transformers, toy student)", dry_eval)
        trained = False
    else:
        shutil.rmtree(paths.run_dir, ignore_errors=True)  # resume_mode=auto would resume an old smoke run
        smoke.step("train", lambda: smoke.cli("train", launch, args.train_timeout).count("\n"))
        state_file, eval_dir = Path(paths.state), Path(paths.eval_dir)
        smoke.step(
            "eval (vLLM)",
            lambda: smoke.cli(
                "eval",
                [
                    "realscale-eval",
                    paths.hf,
                    "--out",
                    str(eval_dir),
                    "--engine",
                    "vllm",
                    "--max-model-len",
                    "2048",
                    "--mlflow-run-file",
                    str(state_file),
                    *eval_args,
                ],
                args.eval_timeout,
            ).splitlines()[-2:],
        )
        trained = True
    smoke.report["assertions"] = smoke.step(
        "assertions",
        lambda: assertions(
            smoke, paths, run, job.steps, tracking_uri, state_file, trained=trained, eval_dir=eval_dir, n_samples=ev.n_samples
        ),
    )
    failed = [k for k, a in smoke.report["assertions"].items() if not a.get("ok", True)]
    if failed:
        smoke.report["steps"][-1]["ok"] = False
        smoke.report["steps"][-1]["error"] = f"failed: {failed}"


if __name__ == "__main__":
    sys.exit(main())
