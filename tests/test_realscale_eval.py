"""Real-scale evaluation pipeline on CPU: dataset loading, math-verify grading with a hard
timeout, and the whole pipeline end to end with the transformers engine on a mini model."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("datasets")

from workbench.backends.verl import realscale as R
from workbench.backends.verl.grading import GradingPool, grade_all

HUB_ROWS = [  # MathArena's HMMT schema: problem_idx, problem, answer
    {"problem_idx": 1, "problem": "Compute $1+1$.", "answer": "2"},
    {"problem_idx": 2, "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "answer": "\\frac{3}{4}"},
    {"problem_idx": 3, "problem": "Find $\\sqrt{8}$.", "answer": "2\\sqrt{2}"},
]


def test_loader_reads_local_parquet_and_jsonl_in_the_hub_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(HUB_ROWS), tmp_path / "hmmt.parquet")
    (tmp_path / "aime.jsonl").write_text(
        "".join(
            json.dumps({"id": f"2024-I-{i}", "problem": r["problem"], "answer": int(i) * 7, "solution": "..."}) + "\n"
            for i, r in enumerate(HUB_ROWS, 1)
        )
    )
    hmmt = R.load_benchmark("hmmt25-feb", str(tmp_path / "hmmt.parquet"))
    assert [p.id for p in hmmt] == ["1", "2", "3"] and hmmt[1].answer == "\\frac{3}{4}"
    assert hmmt[0].prompt.startswith("Compute $1+1$.") and hmmt[0].prompt.endswith(R.PROMPT_SUFFIX)
    aime = R.load_benchmark("aime24", str(tmp_path / "aime.jsonl"), limit=2)
    assert [(p.id, p.answer) for p in aime] == [("2024-I-1", "7"), ("2024-I-2", "14")]  # answer, not solution
    with pytest.raises(KeyError, match="problem"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"q": "x", "answer": "1"}) + "\n")
        R.load_benchmark("aime25", str(bad))
    rows = R.to_verl_rows(hmmt, "hmmt25-feb")
    assert rows[0]["prompt"] == [{"role": "user", "content": hmmt[0].prompt}]
    assert rows[2]["reward_model"]["ground_truth"] == "2\\sqrt{2}"


TRICKY = [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("The answer is \\boxed{\\boxed{3}}", "3", True),  # nested boxes
    ("thus $x = 2\\sqrt{2}$, i.e. \\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("first \\boxed{5}, wait, no: \\boxed{12}", "12", True),
    ("\\boxed{80^\\circ}", "80", True),
    ("\\boxed{12}", "13", False),
    ("\\boxed{\\frac{1}{3}}", "0.33", False),
    ("garbage ))) {{ \\frac{", "7", False),
    ("", "1", False),
]


def test_math_verify_grading_of_tricky_answers():
    grades = grade_all([t[0] for t in TRICKY], [t[1] for t in TRICKY], workers=2, timeout=20)
    assert [g.correct for g in grades] == [t[2] for t in TRICKY]
    assert not any(g.timed_out for g in grades)


def test_hash_format_follows_the_mini_verifier():
    # math-verify alone would read "#3!" as 3 factorial = 6; the mini task has no such answer
    from workbench.backends.verl.grading import grade_answer
    from workbench.mini.task import verify

    cases = [("6;#6", "6"), ("5!6;#6", "6"), ("3*2;#3!", "6"), ("#6#6", "6"), ("6;# 6", "6"), ("6;", "6"), ("#-6", "-6")]
    for response, gold in cases:
        assert grade_answer(response, gold, "hash") == verify(int(gold), response), response


def test_pathological_answer_is_cut_by_the_timeout_and_the_pool_goes_on():
    # sympy evaluates 9^(9^9) exactly: a ~150 MB integer, minutes of C-level arithmetic that
    # math-verify's own signal-based timeout cannot interrupt in a worker thread; this pool kills it.
    pairs = [("\\boxed{9^{9^{9}}}", "3"), ("\\boxed{42}", "42"), ("\\boxed{7}", "8")]
    t0 = time.monotonic()
    with GradingPool(workers=1, timeout=2.0) as pool:
        grades = pool.grade(pairs)
        again = pool.grade([("\\boxed{1/2}", "0.5")])  # the replaced worker still grades
    assert time.monotonic() - t0 < 15
    assert grades[0].timed_out and not grades[0].correct
    assert [g.correct for g in grades[1:]] == [True, False] and again[0].correct


def test_pipeline_end_to_end_with_the_transformers_engine_on_a_mini_model(smoke_world, tmp_path):
    import workbench.algo as A
    from workbench.mini.task import read_jsonl, verify

    problems = read_jsonl(
        smoke_world / "data" / f"{next(iter(json.loads((smoke_world / 'manifest.json').read_text())['benchmarks']))}.jsonl"
    )[:6]
    src = tmp_path / "mini.jsonl"
    src.write_text("".join(json.dumps({"id": p.id, "problem": p.prompt, "answer": str(p.answer)}) + "\n" for p in problems))
    spec = R.BenchmarkSpec("mini-bench", str(src), answer_format="hash", template="{problem}")
    loaded = R.load_benchmark(spec)
    engine = R.TransformersEngine(smoke_world / "student", device="cpu", batch_size=32)
    n, k = 4, 2
    result = R.evaluate(
        engine,
        {"mini-bench": (spec, loaded)},
        n_samples=n,
        k=k,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=40,
        seed=0,
        out_dir=tmp_path / "out",
        grade_workers=2,
        grade_timeout=20,
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "mini-bench.samples.jsonl").read_text().splitlines()]
    assert len(records) == len(problems) * n
    # math-verify on the '#' answer agrees with the mini task's own exact verifier on every sample
    by_id = {p.id: p for p in problems}
    assert [r["correct"] for r in records] == [verify(by_id[r["problem_id"]], r["response"]) for r in records]
    counts = result["benchmarks"]["mini-bench"]["correct"]
    assert result["benchmarks"]["mini-bench"]["avg_at_k"] == pytest.approx(A.benchmark_scores(counts, n, k)["avg_at_k"])
    again = R.scores_from_samples([tmp_path / "out" / "mini-bench.samples.jsonl"], n, k)["mini-bench"]
    assert again["pass_at_k"] == pytest.approx(result["benchmarks"]["mini-bench"]["pass_at_k"])
    assert set(result["metrics"]) == {"eval/mini-bench/avg_at_k", "eval/mini-bench/pass_at_k", "eval/avg_at_k", "eval/pass_at_k"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["avg_at_k"] == pytest.approx(result["avg_at_k"])


def test_vllm_engine_says_what_is_missing():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="gpu"):
            R.make_engine("vllm", "Qwen/Qwen3-1.7B")
    else:  # pragma: no cover - GPU machines
        pytest.skip("vllm is installed")
