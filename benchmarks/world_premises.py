"""The premises a prepared world can be checked against before any training run
(docs/mini-world.md, "The paper's regime"): P1 (teacher), P2 (student-init), P4 (conflict
tokens at init, teacher wrong while a student sample is right), and what the retraction
token does in each model's samples. The sample statistics are those of
``workbench.mini.premises`` (``prepare`` writes P2b and P4b into the manifest the same way).

    python benchmarks/world_premises.py --world results/v2/world --out results/v2/premises.json

Every number is a sample of the world's own models at T = 1.0 (avg@8 over 8 samples per
benchmark problem, as the grid evaluates) or greedy where a premise says so. P3 (on-policy
beats off-policy) needs training runs: ``benchmarks/world_pilot.py`` and the grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import torch

from workbench.mini.evaluate import evaluate
from workbench.mini.models import load_model
from workbench.mini.premises import sample_stats
from workbench.mini.sampling import max_response_tokens
from workbench.mini.task import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_opd_world import token_class_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-prompts", type=int, default=64, help="prompts per round of the P4 probe (4 rounds)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    world = Path(a.world)
    man = json.loads((world / "manifest.json").read_text())
    teacher, student = load_model(world / "teacher"), load_model(world / "student")
    benches = {n: read_jsonl(world / "data" / f"{n}.jsonl") for n in man["benchmarks"]}
    max_new = max_response_tokens([p for ps in benches.values() for p in ps])
    pool = [p for s in man["sources"] for p in read_jsonl(world / "data" / f"train_{s}.jsonl")]
    train_eval = random.Random(a.seed).sample(pool, 400)

    out: dict = {"world": str(world), "config_hash": man["config_hash"], "models": {}}
    for role, model in (("teacher", teacher), ("student", student)):
        ev = evaluate(model, benches, n_samples=8, k=8, temperature=1.0, top_p=1.0, max_new_tokens=max_new, seed=a.seed)
        out["models"][role] = {
            "avg_at_8": {b: v["avg_at_k"] for b, v in ev["benchmarks"].items()} | {"AVG": ev["avg_at_k"]},
            "pass_at_8": {b: v["pass_at_k"] for b, v in ev["benchmarks"].items()} | {"AVG": ev["pass_at_k"]},
            "bench_has_wrong_sample": {b: min(v["correct"]) < 8 for b, v in ev["benchmarks"].items()},
            "samples_train_dist": sample_stats(model, train_eval, 4, max_new, a.seed),
        }
    out["p4"] = token_class_stats(student, teacher, pool, a.pool_prompts, 8, 4, max_new, a.seed)

    t, s = out["models"]["teacher"], out["models"]["student"]
    tav = [t["avg_at_8"][b] for b in benches]
    ratio = s["avg_at_8"]["AVG"] / t["avg_at_8"]["AVG"]
    greedy_train = man["models"]["teacher"]["accuracy"]["greedy"]["train_dist"]
    out["premises"] = {
        "P1a teacher greedy train >= 0.80": [greedy_train, greedy_train >= 0.80],
        "P1b teacher avg@8 falls bench1>..>bench4, bench4 > 0": [
            tav,
            all(x > y for x, y in itertools.pairwise(tav)) and tav[-1] > 0,
        ],
        "P1c teacher sometimes wrong (greedy train < 1, a wrong sample on each bench)": [
            greedy_train,
            greedy_train < 1 and all(t["bench_has_wrong_sample"].values()),
        ],
        "P2a student/teacher AVG avg@8 in [0.3, 0.6]": [ratio, 0.3 <= ratio <= 0.6],
        "P2b student samples well formed >= 0.99": [
            s["samples_train_dist"]["well_formed_frac"],
            s["samples_train_dist"]["well_formed_frac"] >= 0.99,
        ],
        "P4a conflict tokens among both-signal tokens >= 0.20 (probe at init)": [
            out["p4"]["conflict_frac"],
            out["p4"]["conflict_frac"] >= 0.20,
        ],
        "P4b teacher greedy wrong, a student sample right >= 0.05": [
            out["p4"]["teacher_wrong_student_right_frac"],
            out["p4"]["teacher_wrong_student_right_frac"] >= 0.05,
        ],
    }
    out["seconds"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for role in ("teacher", "student"):
        m = out["models"][role]
        print(
            role,
            {k: round(v, 3) for k, v in m["avg_at_8"].items()},
            "samples:",
            {k: round(v, 3) for k, v in m["samples_train_dist"].items()},
        )
    for k, (v, ok) in out["premises"].items():
        print(f"{'holds' if ok else 'FAILS'}  {k}: {v if not isinstance(v, float) else round(v, 3)}")
    print(f"{out['seconds']} s")


if __name__ == "__main__":
    main()
