"""Teacher data for the SFT family on verl (sft, seqkd, time-separated stage 1).

``python -m workbench.backends.verl.teacher_data SPEC_JSON`` (the ``teacher-data`` step of
``verl-launch``): read the training prompts (verl RL parquet), keep the run's budget
(``max_prompts``: all for ``teacher_budget: pool``, PTS's teacher budget for ``pts``),
answer each once with the teacher (``sample`` or ``greedy`` decoding), grade with
math-verify, keep the correct ones when ``filter_correct``, and write verl SFT parquet
(``messages``: the user prompt and the teacher's answer).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.backends.verl.grading import GradingPool
from workbench.backends.verl.realscale import Engine, shuffled, write_parquet


def read_prompts(train_files) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in train_files:
        rows += pq.read_table(f).to_pylist()
    return rows


def build(spec: Mapping[str, Any], engine: Engine, *, grade_timeout: float = 10.0) -> dict[str, Any]:
    """Generate, grade, filter and write; returns counts (and writes ``spec['out']``)."""
    rows = shuffled(read_prompts(spec["train_files"]), int(spec.get("seed", 0)))
    if spec.get("max_prompts") is not None:
        rows = rows[: int(spec["max_prompts"])]
    greedy = spec.get("decoding") == "greedy"
    prompts = [r["prompt"][-1]["content"] for r in rows]
    outs = engine.generate(
        prompts,
        1,
        temperature=1e-6 if greedy else float(spec.get("temperature", 1.0)),
        top_p=1.0 if greedy else float(spec.get("top_p", 1.0)),
        max_new_tokens=int(spec["max_new_tokens"]),
        seed=int(spec.get("seed", 0)),
    )
    answers = [o[0] for o in outs]
    fmt = [((r.get("extra_info") or {}).get("answer_format") or "boxed") for r in rows]
    with GradingPool(timeout=grade_timeout) as pool:
        grades = [pool.grade([(a, str(r["reward_model"]["ground_truth"]))], f)[0] for a, r, f in zip(answers, rows, fmt)]
    keep = [g.correct or not spec.get("filter_correct", False) for g in grades]
    out_rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}], "correct": g.correct}
        for p, a, g, k in zip(prompts, answers, grades, keep)
        if k
    ]
    if not out_rows:
        raise RuntimeError("no teacher responses left for SFT (every one was filtered out)")
    write_parquet(out_rows, spec["out"])
    return {"prompts": len(rows), "correct": sum(g.correct for g in grades), "kept": len(out_rows), "out": spec["out"]}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if Path(spec["out"]).exists():
        print(f"teacher data exists: {spec['out']}")
        return 0
    from workbench.backends.verl.realscale import VLLMEngine

    engine = VLLMEngine(spec["teacher"], tensor_parallel_size=int(spec.get("tensor_parallel_size", 1)))
    print(json.dumps(build(spec, engine)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
