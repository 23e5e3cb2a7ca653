"""The world-level premises of docs/mini-world.md ("The paper's regime"), measured on a
prepared world's two models: what no grid run can tell.

``world_premises`` is the probe ``prepare`` writes into the manifest (``premises``): P2b
(the student writes the teacher's format) and P4b (the verifier sometimes knows better
than the teacher). The report (``workbench.analysis.premises``) reads it from there; the
run-level premises come from tracked metrics. ``well_formed``, ``step_stats`` and
``sample_stats`` also serve ``benchmarks/world_premises.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from .sampling import generate
from .task import ANSWER_MARK, RETRACT, STEP_END, Problem, extract_answer, verify
from .task import evaluate as value_of
from .tokenizer import CODEC

_CHUNK = 512  # sequences per generate call: bounds the KV cache, fixes the random stream


def well_formed(text: str) -> bool:
    """The format the verifier reads: exactly one ``#``, then nothing but digits."""
    got = extract_answer(text)
    return text.count(ANSWER_MARK) == 1 and got is not None and got.isdigit()


def step_stats(prompt: str, text: str) -> tuple[int, int, int, int]:
    """``(wrong steps retracted, wrong steps, right steps retracted, right steps)`` of one
    response. A step (text up to ``;`` or ``!``) is right when it keeps the value of the
    state it continues from (any legal order or shortcut does; a slip does not)."""
    prev = value_of(prompt)
    wr = w = rr = r = 0
    seg = ""
    for c in text:
        if c in (STEP_END, RETRACT):
            try:
                v = value_of(seg + "=")
            except ValueError:
                v = None
            retracted = c == RETRACT
            if v == prev:
                r, rr = r + 1, rr + retracted
            else:
                w, wr = w + 1, wr + retracted
            if not retracted and v is not None:
                prev = v  # an unretracted step is the state the solver goes on from
            seg = ""
        else:
            seg += c
    return wr, w, rr, r


def sample_texts(model, problems: Sequence[Problem], n: int, max_new: int, gen: torch.Generator) -> list[str]:
    """``n`` T = 1.0 samples of each problem, problem-major (``n`` rows per problem)."""
    flat = [p for p in problems for _ in range(n)]
    texts: list[str] = []
    for s in range(0, len(flat), _CHUNK):
        chunk = flat[s : s + _CHUNK]
        outs = generate(model, [CODEC.encode_prompt(p.prompt) for p in chunk], max_new, temperature=1.0, generator=gen)
        texts += [CODEC.decode(o) for o in outs]
    return texts


def sample_stats(model, problems: Sequence[Problem], n: int, max_new: int, seed: int) -> dict:
    """Format, correctness and retraction statistics of ``n`` T = 1.0 samples per problem."""
    flat = [p for p in problems for _ in range(n)]
    texts = sample_texts(model, problems, n, max_new, torch.Generator().manual_seed(seed))
    tot = [0, 0, 0, 0]
    for p, t in zip(flat, texts):
        tot = [a + b for a, b in zip(tot, step_stats(p.prompt, t))]
    wr, w, rr, r = tot
    return {
        "samples": len(texts),
        "well_formed_frac": sum(map(well_formed, texts)) / len(texts),
        "correct_frac": sum(verify(p, t) for p, t in zip(flat, texts)) / len(texts),
        "with_retraction_frac": sum(RETRACT in t for t in texts) / len(texts),
        "wrong_step_frac": w / max(1, w + r),
        "retract_recall": wr / max(1, w),  # wrong steps that the model itself retracts
        "retract_false_alarm": rr / max(1, r),  # right steps it retracts anyway
    }


@torch.no_grad()
def world_premises(
    teacher, student, pool: Sequence[Problem], *, prompts: int, samples: int, max_new_tokens: int, seed: int
) -> dict:
    """P2b and P4b of docs/mini-world.md on ``prompts`` problems drawn from ``pool``.

    Returns ``student_well_formed`` (fraction of the student's ``samples`` T = 1.0 samples
    per problem that are well formed, right or wrong), ``teacher_greedy_wrong`` (fraction of
    problems whose teacher greedy answer the verifier rejects), ``teacher_wrong_student_right``
    (the teacher greedy wrong and at least one student sample right: the case where the
    outcome reward knows better than the teacher), ``n_prompts`` and ``samples``. The same
    ``seed`` gives the same numbers (the draw of problems and every sampled token).
    """
    probs = random.Random(seed).sample(list(pool), min(prompts, len(pool)))
    if not probs or samples < 1:
        raise ValueError(f"world_premises: nothing to probe ({len(probs)} problems, {samples} samples each)")
    texts = sample_texts(student, probs, samples, max_new_tokens, torch.Generator().manual_seed(seed))
    greedy = [
        o
        for s in range(0, len(probs), _CHUNK)
        for o in generate(teacher, [CODEC.encode_prompt(p.prompt) for p in probs[s : s + _CHUNK]], max_new_tokens, greedy=True)
    ]
    teacher_wrong = [not verify(p, CODEC.decode(o)) for p, o in zip(probs, greedy)]
    student_right = [any(verify(p, t) for t in texts[i * samples : (i + 1) * samples]) for i, p in enumerate(probs)]
    n = len(probs)
    return {
        "n_prompts": n,
        "samples": samples,
        "student_well_formed": sum(map(well_formed, texts)) / len(texts),
        "teacher_greedy_wrong": sum(teacher_wrong) / n,
        "teacher_wrong_student_right": sum(tw and sr for tw, sr in zip(teacher_wrong, student_right)) / n,
    }
