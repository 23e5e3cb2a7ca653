"""The sgopd loss against verl's stock k1 loss, on the same micro-batch, through verl's own
``distillation_ppo_loss`` (forward + backward of the loss only; the model is not timed).

Both paths pay verl's shared costs (un-padding the log-probs, its unused GRPO policy term,
the PPO clip); the sgopd path adds routing, the stability weight and its metrics.
Goal: sgopd <= 1.3x stock k1. Writes benchmarks/results/bench_verl_loss.json.

    python benchmarks/bench_verl_loss.py [--rows 8] [--response 2048] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--response", type=int, default=2048, help="max response tokens")
    ap.add_argument("--prompt", type=int, default=512, help="max prompt tokens")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_verl_loss.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import verl
    from verl.workers.config import DistillationLossConfig

    from workbench.backends.verl.loss import SGOPDLossConfig
    from workbench.backends.verl.testing import actor_config, distillation_config, make_batch, run_verl

    batch = make_batch(seed=0, n_rows=args.rows, is_weights=True, max_prompt=args.prompt, max_response=args.response, group=4)
    actor = actor_config()
    configs = {
        "k1": DistillationLossConfig(loss_mode="k1", use_policy_gradient=True, use_task_rewards=False, loss_max_clamp=None),
        "sgopd": SGOPDLossConfig(lambda_high=1.8, disagree_mode="interp", stability_mode="phi"),
        "sgopd-no-ref-no-weight (opd-like)": SGOPDLossConfig(sign_gate=False, lambda_base=1.0, stability_mode="none"),
    }
    # rollout-IS weights arrive nested; verl's stock k1 crashes on them (see loss.py), so the
    # comparison runs both without them, and sgopd once more with them.
    no_is = batch.replace(is_w=None)
    cases = [
        ("k1", configs["k1"], no_is),
        ("sgopd", configs["sgopd"], no_is),
        ("sgopd-no-ref-no-weight (opd-like)", configs["sgopd-no-ref-no-weight (opd-like)"], no_is),
        ("sgopd+rollout-IS", configs["sgopd"], batch),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(3):  # warm-up
        for name, cfg, b in cases:
            run_verl(actor, distillation_config(cfg), b)
    for _ in range(args.repeats):  # interleaved, so drift hits every case alike
        for name, cfg, b in cases:
            t0 = time.perf_counter()
            run_verl(actor, distillation_config(cfg), b)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "verl distillation_ppo_loss forward+backward on one micro-batch (CPU)",
        "rows": args.rows,
        "max_response": args.response,
        "max_prompt": args.prompt,
        "response_tokens": int(batch.rlens.sum()),
        "threads": args.threads,
        "repeats": args.repeats,
        "median_ms": {k: round(1e3 * v, 3) for k, v in med.items()},
        "ratio_vs_k1": {k: round(v / med["k1"], 3) for k, v in med.items()},
        "goal": "sgopd <= 1.3x k1",
        "verl": verl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
