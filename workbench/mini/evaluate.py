"""Evaluation of a mini model: avg@k and unbiased pass@k per benchmark and AVG for runs
(docs/algorithm.md section 9), and plain accuracy for the world's report (``prepare``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

import workbench.algo as A
from workbench.mini.sampling import generate, max_response_tokens
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
        correct = _verified_samples(
            model, problems, n_samples, max_new_tokens, temperature=temperature, top_p=top_p, generator=gen, batch_size=batch_size
        )
        counts = [sum(correct[i * n_samples : (i + 1) * n_samples]) for i in range(len(problems))]
        out["benchmarks"][name] = {**A.benchmark_scores(counts, n_samples, k), "correct": counts}
    for key in ("avg_at_k", "pass_at_k"):
        out[key] = A.evaluation.mean(b[key] for b in out["benchmarks"].values())
    return out


@torch.no_grad()
def evaluate_accuracy(
    model,
    problems: Sequence[Problem],
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    k: int = 1,
    batch_size: int = 512,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> dict:
    """Accuracy of ``model`` on ``problems``.

    Returns ``{"acc": mean over problems and samples, "per_problem": [c_i / k ...],
    "n": len(problems), "k": k}``; greedy decoding uses ``k = 1``. Sampling is
    reproducible from ``seed``.
    """
    if greedy:
        k = 1
    max_new = max_new_tokens or max_response_tokens(problems)
    g = torch.Generator().manual_seed(seed)
    correct = _verified_samples(
        model, problems, k, max_new, temperature=temperature, top_p=top_p, greedy=greedy, generator=g, batch_size=batch_size
    )
    per_problem = [sum(correct[i * k : (i + 1) * k]) / k for i in range(len(problems))]
    return {"acc": sum(per_problem) / max(1, len(per_problem)), "per_problem": per_problem, "n": len(problems), "k": k}


def _verified_samples(
    model,
    problems: Sequence[Problem],
    n: int,
    max_new_tokens: int,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
    batch_size: int,
    greedy: bool = False,
) -> list[bool]:
    """``n`` samples per problem, decoded in batches of ``batch_size`` from one generator and
    verified: ``[problem 0's n verdicts, problem 1's, ...]``."""
    flat = [p for p in problems for _ in range(n)]
    correct: list[bool] = []
    for s in range(0, len(flat), batch_size):
        chunk = flat[s : s + batch_size]
        outs = generate(
            model,
            [CODEC.encode_prompt(p.prompt) for p in chunk],
            max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )
        correct += [verify(p, CODEC.decode(o)) for p, o in zip(chunk, outs)]
    return correct
