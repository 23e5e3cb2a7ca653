"""Real-scale evaluation: AIME24, AIME25, HMMT25-Feb, HMMT25-Nov with a generation engine.

Pipeline: ``load_benchmark`` (``datasets``; a hub id, or a local parquet / JSONL file in
the same schema) -> ``Engine.generate`` (``VLLMEngine`` on GPUs, the optional ``gpu``
extra, imported lazily; ``TransformersEngine`` anywhere, which runs the mini models on
CPU) -> ``GradingPool`` (math-verify, hard per-answer timeout) -> per-sample records
(``samples.jsonl``) -> avg@k / pass@k by ``workbench.algo.benchmark_scores`` -> metrics
under docs/algorithm.md section 10's ``eval/...`` names.

Hub ids are defaults, never fetched in tests; ``--source NAME=PATH_OR_HUB_ID`` replaces
any of them.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.errors import UserError

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    source: str  # hub id (default) or local path
    split: str = "train"
    problem_keys: tuple[str, ...] = ("problem", "question", "prompt")
    answer_keys: tuple[str, ...] = ("answer", "gold", "final_answer", "solution")
    id_keys: tuple[str, ...] = ("id", "problem_idx", "idx", "ID")
    answer_format: str = "boxed"
    template: str = "{problem}\n" + PROMPT_SUFFIX


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("aime24", "HuggingFaceH4/aime_2024"),
    "aime25": BenchmarkSpec("aime25", "math-ai/aime25", split="test"),
    "hmmt25-feb": BenchmarkSpec("hmmt25-feb", "MathArena/hmmt_feb_2025"),
    "hmmt25-nov": BenchmarkSpec("hmmt25-nov", "MathArena/hmmt_nov_2025"),
}


@dataclass(frozen=True)
class EvalProblem:
    id: str
    problem: str
    answer: str
    prompt: str


def _pick(row: Mapping[str, Any], keys: Sequence[str], what: str, name: str) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    raise KeyError(f"{name}: no {what} column (looked for {', '.join(keys)}; have {', '.join(row)})")


def data_files(path: Path, split: str | None = None) -> list[Path]:
    """The data files of a local set: ``path`` itself, or the parquet (else JSON/JSONL) files
    anywhere under it (hidden folders skipped, so ``hf download --local-dir`` output works);
    of several, those whose path names ``split`` when any does."""
    if path.is_file():
        return [path]
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in DATA_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    parquet = [p for p in found if p.suffix == ".parquet"]
    found = parquet or found
    if split and len(found) > 1:
        named = [p for p in found if re.search(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)", str(p.relative_to(path)))]
        found = named or found
    return found


def looks_local(source: str) -> bool:
    """A source that can only be a local file (a hub id is ``org/name``)."""
    return source.startswith(("/", ".", "~")) or Path(source).suffix in DATA_SUFFIXES or source.count("/") > 1


def load_benchmark(spec: BenchmarkSpec | str, source: str | None = None, *, limit: int | None = None) -> list[EvalProblem]:
    """A benchmark's problems via ``datasets``: a local ``.parquet`` / ``.jsonl`` / ``.json``
    file or folder of them (``data_files``), or a hub id (``split`` of the spec)."""
    from datasets import load_dataset

    spec = BENCHMARKS[spec] if isinstance(spec, str) else spec
    src = source or spec.source
    path = Path(src).expanduser()
    if path.exists():
        files = data_files(path, spec.split)
        if not files:
            raise UserError(f"{spec.name}: no .parquet/.jsonl/.json file under {path}")
        kind = "parquet" if files[0].suffix == ".parquet" else "json"
        ds = load_dataset(kind, data_files=[str(f) for f in files], split="train")
    elif looks_local(src):
        raise UserError(
            f"{spec.name}: {src} does not exist; stage the benchmarks with "
            "`workbench verl-stage --scale SCALE --from data/raw` (docs/verl.md, offline layout)"
        )
    else:
        ds = load_dataset(src, split=spec.split)
    out = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        problem = str(_pick(row, spec.problem_keys, "problem", spec.name))
        answer = str(_pick(row, spec.answer_keys, "answer", spec.name)).strip()
        try:
            pid = str(_pick(row, spec.id_keys, "id", spec.name))
        except KeyError:
            pid = f"{spec.name}-{i}"
        out.append(EvalProblem(pid, problem, answer, spec.template.replace("{problem}", problem)))
    if not out:
        raise ValueError(f"{spec.name}: {src} has no problems")
    return out


# -- engines ---------------------------------------------------------------------------------


class Engine(Protocol):
    """Generates ``n`` samples for each prompt (plain text in, plain text out)."""

    def generate(
        self, prompts: Sequence[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]: ...


class VLLMEngine:
    """vLLM offline generation (GPU; the environment ``make setup-gpu`` builds)."""

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        chat_template: bool = True,
        dtype: str = "bfloat16",
    ):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError(
                "the vLLM engine needs vllm, which runs on NVIDIA GPUs only: build the GPU environment "
                "(make setup-gpu: the 'gpu' extra's torch and vllm pins), or use --engine transformers"
            ) from e
        from workbench.backends.verl.stage import require_cuda_torch

        require_cuda_torch("the vLLM engine")  # a CPU torch beside vllm fails deep inside vLLM otherwise
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = chat_template and getattr(self.tokenizer, "chat_template", None) is not None

    def _render(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
        outs = self.llm.generate([self._render(p) for p in prompts], params)
        return [[c.text for c in o.outputs] for o in outs]


class TransformersEngine:
    """Hugging Face ``generate`` (any device; CPU for the mini models and tests)."""

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        chat_template: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32, attn_implementation="eager")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tok = tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.batch_size = batch_size
        self.chat_template = chat_template and getattr(self.tok, "chat_template", None) is not None

    def _render(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, seed):
        import torch

        torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(n)]
        texts: list[str] = []
        for s in range(0, len(flat), self.batch_size):
            chunk = [self._render(p) for p in flat[s : s + self.batch_size]]
            enc = self.tok(chunk, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tok.pad_token_id,
                    eos_token_id=self.tok.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            texts += self.tok.batch_decode(new, skip_special_tokens=True)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def check_model(model: str) -> None:
    """A local model folder must hold a config.json (a hub id is left to the engine)."""
    from workbench.backends.verl.stage import is_local_path

    if is_local_path(model) and not (Path(model).expanduser() / "config.json").is_file():
        raise UserError(
            f"model {model}: no config.json there (a Hugging Face model folder, e.g. a run's merged "
            "<run_dir>/hf, written by `workbench verl-launch`)"
        )


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    check_model(model)
    if kind == "vllm":
        return VLLMEngine(
            model,
            **{
                k: v
                for k, v in kwargs.items()
                if k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "chat_template")
            },
        )
    if kind == "transformers":
        return TransformersEngine(model, **{k: v for k, v in kwargs.items() if k in ("device", "batch_size", "chat_template")})
    raise ValueError(f"unknown engine {kind!r}; valid: vllm, transformers")


# -- evaluation --------------------------------------------------------------------------------


def evaluate(
    engine: Engine,
    benchmarks: Mapping[str, tuple[BenchmarkSpec, Sequence[EvalProblem]]],
    *,
    n_samples: int,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    grade_workers: int | None = None,
    grade_timeout: float = 10.0,
    label: str | None = None,
) -> dict:
    """Generate, grade and score; writes ``<out_dir>/<benchmark>.samples.jsonl`` and
    ``<out_dir>/results.json``. Scores in [0, 1]; ``metrics`` has docs/algorithm.md's names in percent."""
    import workbench.algo as A
    from workbench.algo.evaluation import mean
    from workbench.backends.verl.grading import GradingPool

    if k > n_samples:
        raise ValueError(f"k ({k}) must be <= n_samples ({n_samples})")
    out_dir = Path(out_dir) if out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "label": label,
        "k": k,
        "n_samples": n_samples,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "benchmarks": {},
    }
    with GradingPool(grade_workers, grade_timeout) as pool:
        for name, (spec, problems) in benchmarks.items():
            t0 = time.time()
            samples = engine.generate(
                [p.prompt for p in problems],
                n_samples,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=seed,
            )
            t_gen = time.time() - t0
            pairs = [(s, p.answer) for p, ss in zip(problems, samples) for s in ss]
            grades = pool.grade(pairs, spec.answer_format)
            records = []
            for j, ((resp, gold), g) in enumerate(zip(pairs, grades)):
                p = problems[j // n_samples]
                records.append(
                    {
                        "benchmark": name,
                        "problem_id": p.id,
                        "sample": j % n_samples,
                        "answer": gold,
                        "response": resp,
                        "correct": g.correct,
                        "timed_out": g.timed_out,
                        "error": g.error,
                    }
                )
            counts = [sum(r["correct"] for r in records[i * n_samples : (i + 1) * n_samples]) for i in range(len(problems))]
            scores = A.benchmark_scores(counts, n_samples, k)
            result["benchmarks"][name] = {
                **scores,
                "correct": counts,
                "n_problems": len(problems),
                "timed_out": sum(r["timed_out"] for r in records),
                "generate_seconds": t_gen,
                "grade_seconds": time.time() - t0 - t_gen,
            }
            if out_dir:
                with open(out_dir / f"{name}.samples.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
    for key in ("avg_at_k", "pass_at_k"):
        result[key] = mean(b[key] for b in result["benchmarks"].values())
    result["metrics"] = A.eval_metrics(result)
    if out_dir:
        (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    return result


def scores_from_samples(paths: Iterable[str | Path], n_samples: int, k: int) -> dict[str, dict[str, float]]:
    """Recompute avg@k / pass@k per benchmark from ``*.samples.jsonl`` files alone."""
    import workbench.algo as A

    per: dict[str, dict[str, int]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            per.setdefault(r["benchmark"], {}).setdefault(r["problem_id"], 0)
            per[r["benchmark"]][r["problem_id"]] += bool(r["correct"])
    return {b: A.benchmark_scores(list(c.values()), n_samples, k) for b, c in per.items()}


# -- training data for verl ----------------------------------------------------------------------


def to_verl_rows(
    problems: Sequence[EvalProblem], data_source: str, *, split: str = "train", answer_format: str = "boxed"
) -> list[dict]:
    """verl's RL dataset rows (``prompt`` as chat messages, ``reward_model.ground_truth``)."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": p.prompt}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"split": split, "index": i, "id": p.id, "answer_format": answer_format},
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Write ``rows`` as parquet, atomically (a reader never sees half a file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(f"realscale:{seed}").shuffle(out)
    return out
