"""What a verl job reads: staged from local files, and checked before any compute.

A cluster without hub access downloads every input once into an offline layout (any
folder; ``data/raw`` below) and stages it into the files a scale names:

    data/raw/<set>/...            one folder per set: parquet / JSON / JSONL files, nested
                                  folders allowed (``hf download --local-dir`` output as is)
      deepmath/                   zwhe99/DeepMath-103K (dataset, split train)
      extra-math/                 the second prompt source (the paper does not name it)
      aime24/ aime25/ hmmt25-feb/ hmmt25-nov/   the benchmarks' hub ids in ``RAW_SETS``
    data/raw/models/<name>/       model snapshots, passed with ``--scale-set student=DIR``

``workbench verl-stage --scale paper --from data/raw`` (``stage``) writes

- every ``data.sources`` file and every ``data.val_files`` file of the scale as verl RL
  parquet (``data_source``, ``prompt`` chat messages, ``ability``, ``reward_model.ground_truth``,
  ``extra_info``: what verl's ``RLHFDataset`` and the reward function read); the set of a
  file is its folder's name (``data/verl/deepmath/train.parquet`` <- ``data/raw/deepmath/``),
  or its stem where several staged files share a folder (``set_names``);
- every ``eval.benchmarks`` file as benchmark parquet (``id``, ``problem``, ``answer``,
  what ``realscale.load_benchmark`` reads); the set is the benchmark's name.

Before any compute, ``prepare_launch`` (``verl-launch``) checks that the job's data files
and local models exist (else a ``UserError`` naming the file and the command that makes
it), that torch is a CUDA build, and falls back to SDPA attention when flash-attn is not
installed (``attention_overrides``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.backends.verl.overrides import Job, VerlScale
from workbench.backends.verl.realscale import BENCHMARKS, BenchmarkSpec
from workbench.errors import UserError

RAW_ROOT = "data/raw"
#: The versions of the GPU stack: verl 0.9.1's own ``vllm`` extra (its METADATA), which
#: pyproject's ``gpu`` extra pins too (tests/test_gpu_smoke.py compares all three).
GPU_STACK = {"torch": "2.11.0", "vllm": "0.24.0", "transformers": "5.9.0"}


@dataclass(frozen=True)
class RawSet:
    hub_id: str | None  # where a machine with hub access downloads it (None: the user's choice)
    split: str
    columns: str


RAW_SETS: dict[str, RawSet] = {
    "deepmath": RawSet("zwhe99/DeepMath-103K", "train", "question, final_answer"),
    "extra-math": RawSet(None, "train", "problem (or question), answer"),
    **{name: RawSet(b.source, b.split, "problem, answer[, id]") for name, b in BENCHMARKS.items()},
}


def download_hint(name: str, raw_dir: str | Path) -> str:
    raw = RAW_SETS.get(name)
    if raw and raw.hub_id:
        return f"download it once: hf download {raw.hub_id} --repo-type dataset --local-dir {raw_dir}"
    return f"put a parquet/JSON/JSONL file with columns {raw.columns if raw else 'problem, answer'} in {raw_dir}"


@dataclass(frozen=True)
class StageItem:
    name: str  # the set
    kind: Literal["train", "val", "bench"]
    out: str
    source: str  # a local file or folder


def set_names(paths: list[str]) -> dict[str, str]:
    """Staged file -> its set: the file's folder name, or the file's stem when several of
    the files share a folder (``data/verl/deepmath/train.parquet`` -> ``deepmath``,
    ``results/gpu-smoke/data/train-a.parquet`` beside ``val.parquet`` -> ``train-a``)."""
    folders: dict[Path, int] = {}
    for p in dict.fromkeys(paths):
        folders[Path(p).parent] = folders.get(Path(p).parent, 0) + 1
    return {p: Path(p).parent.name if folders[Path(p).parent] == 1 else Path(p).stem for p in paths}


def plan(scale: VerlScale, raw_root: str | Path = RAW_ROOT, sources: Mapping[str, str] | None = None) -> list[StageItem]:
    """The files ``scale`` reads and where each comes from (``sources``: set -> file or folder;
    default ``<raw_root>/<set>``)."""
    sources = dict(sources or {})
    data = [*scale.data.sources.values(), *scale.data.val_files]
    names = set_names(data)
    wanted: list[tuple[str, Literal["train", "val", "bench"], str]] = (
        [(names[p], "train", p) for p in scale.data.sources.values()]
        + [(names[p], "val", p) for p in scale.data.val_files]
        + [(name, "bench", p) for name, p in scale.eval.benchmarks.items()]
    )
    items: dict[str, StageItem] = {}
    for name, kind, out in wanted:
        items.setdefault(out, StageItem(name, kind, out, sources.get(name, str(Path(raw_root) / name))))
    unknown = set(sources) - {i.name for i in items.values()}
    if unknown:
        raise UserError(
            f"--source {sorted(unknown)}: scale {scale.name!r} stages no such set; "
            f"valid: {', '.join(sorted({i.name for i in items.values()}))}"
        )
    return list(items.values())


def stage_item(item: StageItem, *, limit: int | None = None, command: str = "workbench verl-stage") -> int:
    """Write one staged file; returns its row count."""
    from workbench.backends.verl import realscale as R

    src = Path(item.source).expanduser()
    if not src.exists():
        raise UserError(
            f"{item.name}: {src} does not exist ({item.out} is staged from it); "
            f"{download_hint(item.name, src)}; then run `{command}` again"
        )
    base = BENCHMARKS.get(item.name)
    spec = dataclasses.replace(base, source=str(src)) if base else BenchmarkSpec(item.name, str(src))
    try:
        problems = R.load_benchmark(spec, str(src), limit=limit)
    except (KeyError, ValueError) as e:  # a missing column, an empty set
        raise UserError(f"{item.name}: {e.args[0] if e.args else e}") from e
    if item.kind == "bench":
        rows = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in problems]
    else:
        rows = R.to_verl_rows(
            problems, item.name, split="train" if item.kind == "train" else "test", answer_format=spec.answer_format
        )
    R.write_parquet(rows, item.out)
    return len(rows)


def stage(items: list[StageItem], *, limit: int | None = None, command: str = "workbench verl-stage") -> list[str]:
    """Stage every item (each file replaced atomically); one report line per file."""
    import datasets

    datasets.disable_progress_bars()
    missing = list({i.source: i for i in items if not Path(i.source).expanduser().exists()}.values())
    if missing:  # all of them at once, before writing anything
        raise UserError(
            "; ".join(f"{i.name}: {i.source} does not exist ({download_hint(i.name, i.source)})" for i in missing)
            + f"; then run `{command}` again"
        )
    return [
        f"{i.kind:5s} {i.name:12s} {stage_item(i, limit=limit, command=command):6d} rows  {i.source} -> {i.out}" for i in items
    ]


# -- checks before a job -----------------------------------------------------------------------


def _is_remote(ref: str) -> bool:
    return "://" in ref


def is_local_path(ref: str) -> bool:
    """A model reference that names a local folder rather than a hub id (``org/name``)."""
    p = Path(ref).expanduser()
    return (
        ref.startswith(("/", ".", "~")) or p.exists() or ref.count("/") != 1 or (p.parts[0] != ref and Path(p.parts[0]).is_dir())
    )


def _override_map(job: Job) -> dict[str, str]:
    return {k.lstrip("+"): v for k, _, v in (o.partition("=") for o in job.overrides)}


def _files(value: str | None) -> list[str]:
    if not value or value == "null":
        return []
    return [s.strip().strip("'\"") for s in value.strip("[]").split(",") if s.strip()]


def job_inputs(job: Job) -> list[tuple[str, str]]:
    """``(what, path or hub id)`` of everything ``job`` reads before it writes anything."""
    ov = _override_map(job)
    if job.kind == "ppo":
        out = [("training prompts", f) for f in _files(ov.get("data.train_files"))]
        out += [("validation prompts", f) for f in _files(ov.get("data.val_files"))]
        out.append(("student", ov["actor_rollout_ref.model.path"].strip("'")))
        if "distillation.teacher_models.teacher_model.model_path" in ov:
            out.append(("teacher", ov["distillation.teacher_models.teacher_model.model_path"].strip("'")))
        return out
    out = [("student", ov["model.path"].strip("'"))]
    td = job.teacher_data or {}
    if td and not Path(td["out"]).exists():  # the teacher-data step reads these
        out += [("training prompts", f) for f in td["train_files"]]
        out.append(("teacher", td["teacher"]))
    return out


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_job_inputs(job: Job) -> list[str]:
    """One message per missing input of ``job``, each naming the command that makes it."""
    from workbench.backends.verl.overrides import run_paths

    scale, results = job.paths.scale, job.paths.results
    problems, data = [], []
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    for what, ref in job_inputs(job):
        if _is_remote(ref):
            continue
        if what.endswith("prompts"):
            if not Path(ref).is_file():
                data.append(ref)
            continue
        if job.init_from and what == "student" and ref == run_paths(results, scale, job.init_from, job.paths.seed).hf:
            if not (Path(ref) / "config.json").is_file():
                problems.append(
                    f"missing student {ref} (the exported model of run {job.init_from}): run "
                    f"`workbench verl-launch --run {job.init_from} --scale {scale} --results {results} "
                    f"--seed {job.paths.seed}` first"
                )
            continue
        if is_local_path(ref):
            if not (Path(ref).expanduser() / "config.json").is_file():
                problems.append(
                    f"missing {what} model {ref} (a folder with config.json): download it once "
                    f"(hf download ORG/NAME --local-dir {ref}) or point the scale at your copy "
                    f"(--scale-set {what}=DIR)"
                )
        elif offline and not _in_hub_cache(ref):
            name = ref.split("/")[-1]
            problems.append(
                f"{what} {ref} is a hub id but HF_HUB_OFFLINE is set and it is not in the hub cache: "
                f"download it once (hf download {ref} --local-dir {RAW_ROOT}/models/{name}) and pass "
                f"--scale-set {what}={RAW_ROOT}/models/{name}"
            )
    if data:
        problems.insert(
            0,
            f"missing staged data {', '.join(data)}: stage it with `workbench verl-stage --scale {scale} "
            f"--from {RAW_ROOT}` (docs/verl.md, offline layout)",
        )
    return problems


def require_cuda_torch(what: str = "verl-launch", *, device: bool = True) -> None:
    """Refuse a CPU build of torch (and, with ``device``, no visible GPU) before a GPU job starts."""
    import torch

    if torch.version.cuda is None:
        raise UserError(
            f"{what}: torch {torch.__version__} is a CPU build (torch.version.cuda is None) and verl's "
            "FSDP workers and vLLM need the CUDA build; set up the GPU environment with `make setup-gpu` "
            f"(torch=={GPU_STACK['torch']}, vllm=={GPU_STACK['vllm']}; docs/verl.md, GPU install)"
        )
    if device and not torch.cuda.is_available():
        raise UserError(
            f"{what}: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
            "(torch.cuda.is_available() is False); run it on a GPU node"
        )


def gpu_env() -> dict[str, str | None]:
    """Versions of the GPU stack in this environment (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "vllm", "transformers", "verl", "flash-attn", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    import torch

    out["torch.version.cuda"] = torch.version.cuda
    return out


def check_gpu_env() -> dict[str, str | None]:
    """``make setup-gpu``'s last step: refuse a CPU torch or a GPU stack off verl's tested versions."""
    env = gpu_env()
    require_cuda_torch("setup-gpu", device=False)
    off = [f"{k} {env[k]} (want {v})" for k, v in GPU_STACK.items() if (env[k] or "").split("+")[0] != v]
    if off:
        raise UserError(
            f"the GPU environment is off verl {env['verl']}'s tested versions: {', '.join(off)}; reinstall with `make setup-gpu`"
        )
    return env


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_overrides(job: Job, flash_attn: bool | None = None) -> list[str]:
    """SDPA for the FSDP model when flash-attn is missing (verl defaults to flash_attention_2).

    ``use_remove_padding`` stays on: transformers' SDPA path reads the packed sequences'
    boundaries from the position ids (tests/test_verl_stage.py checks packed = unpacked).
    """
    if has_flash_attn() if flash_attn is None else flash_attn:
        return []
    if any("override_config.attn_implementation" in o for o in job.overrides):
        return []  # the scale's verl_extra chose one
    key = "actor_rollout_ref.model" if job.kind == "ppo" else "model"
    return [f"+{key}.override_config.attn_implementation=sdpa"]


def prepare_launch(job: Job, *, dry_run: bool = False) -> Job:
    """``job`` ready to launch: inputs and torch checked (a dry run only notes missing
    inputs, on stderr), SDPA attention added when flash-attn is missing."""
    problems = check_job_inputs(job)
    if problems and not dry_run:
        raise UserError(f"verl-launch --run {job.run_id}: " + "; ".join(problems))
    for p in problems:
        print(f"# note: {p}", file=sys.stderr)
    if not dry_run:
        require_cuda_torch("verl-launch")
    extra = attention_overrides(job)
    if extra:
        print("# flash-attn is not installed: the FSDP model uses SDPA attention", file=sys.stderr)
    return dataclasses.replace(job, overrides=[*job.overrides, *extra])


if __name__ == "__main__":  # make setup-gpu: python -m workbench.backends.verl.stage check-gpu-env
    if sys.argv[1:] != ["check-gpu-env"]:
        raise SystemExit("usage: python -m workbench.backends.verl.stage check-gpu-env")
    try:
        env = check_gpu_env()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print("GPU environment ok: " + ", ".join(f"{k} {v}" for k, v in env.items()))
