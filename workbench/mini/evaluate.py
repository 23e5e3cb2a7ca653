"""Evaluation of a mini model: avg@k and unbiased pass@k per benchmark and AVG (docs/algorithm.md section 9)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

import workbench.algo as A
from workbench.mini.prepare import generate
from workbench.mini.task import Problem, verify
from workbench.mini.tokenizer import CODEC


@torch.no_grad()
def evaluate(
    model,
    benchmarks: Mapping[str, Sequence[Problem]],
    *,
    n_samples: int,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 512,
) -> dict:
    """Sample ``n_samples`` responses per problem and score them.

    Returns ``{"k", "n_samples", "avg_at_k", "pass_at_k", "benchmarks": {name: {"avg_at_k",
    "pass_at_k", "correct": [c_i per problem]}}}`` with accuracies in [0, 1]; AVG is the
    arithmetic mean over benchmarks. Sampling is reproducible from ``seed``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict = {"k": k, "n_samples": n_samples, "temperature": temperature, "top_p": top_p, "benchmarks": {}}
    for name, problems in benchmarks.items():
        flat = [p for p in problems for _ in range(n_samples)]
        correct: list[bool] = []
        for s in range(0, len(flat), batch_size):
            chunk = flat[s : s + batch_size]
            outs = generate(
                model,
                [CODEC.encode_prompt(p.prompt) for p in chunk],
                max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                generator=gen,
            )
            correct += [verify(p, CODEC.decode(o)) for p, o in zip(chunk, outs)]
        counts = [sum(correct[i * n_samples : (i + 1) * n_samples]) for i in range(len(problems))]
        out["benchmarks"][name] = {**A.benchmark_scores(counts, n_samples, k), "correct": counts}
    for key in ("avg_at_k", "pass_at_k"):
        out[key] = A.evaluation.mean(b[key] for b in out["benchmarks"].values())
    return out


def eval_metrics(result: dict) -> dict[str, float]:
    """Canonical metric names (docs/algorithm.md section 10) of an ``evaluate`` result, in percent."""
    m = {f"eval/{b}/{key}": 100 * r[key] for b, r in result["benchmarks"].items() for key in ("avg_at_k", "pass_at_k")}
    m.update({"eval/avg_at_k": 100 * result["avg_at_k"], "eval/pass_at_k": 100 * result["pass_at_k"]})
    return m
