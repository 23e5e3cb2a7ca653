"""Time the routed SG-OPD token loss against plain OPD on the same tensors (CPU).

SG-OPD: route_advantage (gate, lambda_high 1.8 / lambda_base 1.25, interp fallback)
+ stability_weight (phi) + ppo_clip_loss, forward and backward.
OPD: opd_advantage + ppo_clip_loss with unit weights, forward and backward.
Both receive the same lp_new / lp_old / lp_teacher / lp_ref / rewards / mask.

    python benchmarks/bench_loss.py [--repeats 20] [--out benchmarks/results/loss_gate_vs_opd.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import workbench.algo as A


def make_batch(B: int, T: int, G: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lp = lambda: -torch.rand(B, T, generator=g) * 3
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = (torch.rand(B, generator=g) < 0.4).float()
    group_ids = torch.arange(B) // G
    return {
        "lp_new": lp(),
        "lp_old": lp(),
        "lp_teacher": lp(),
        "lp_ref": lp(),
        "rewards": rewards,
        "group_ids": group_ids,
        "mask": mask,
    }


def opd_step(b) -> None:
    lp_new = b["lp_new"].clone().requires_grad_(True)
    adv = A.opd_advantage(b["lp_old"], b["lp_teacher"])
    loss, _ = A.ppo_clip_loss(lp_new, b["lp_old"], adv, b["mask"].float(), b["mask"])
    loss.backward()


def sgopd_step(b) -> None:
    lp_new = b["lp_new"].clone().requires_grad_(True)
    a_rl = A.grpo_advantage(b["rewards"], b["group_ids"])
    adv, _, _ = A.route_advantage(
        a_rl,
        b["lp_old"],
        b["lp_teacher"],
        b["lp_ref"],
        b["mask"],
        sign_gate=True,
        lambda_base=1.25,
        lambda_high=1.8,
        disagree_mode="interp",
    )
    w = A.stability_weight(adv, b["lp_old"], b["mask"], mode="phi", clip=2.0)
    loss, _ = A.ppo_clip_loss(lp_new, b["lp_old"], adv, w, b["mask"])
    loss.backward()


def time_fn(fn, b, repeats: int) -> list[float]:
    fn(b)  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(b)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/loss_gate_vs_opd.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for B, T in [(64, 1024), (256, 4096)]:
        b = {k: v.to(args.device) for k, v in make_batch(B, T).items()}
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

        def timed(fn, b=b, sync=sync):
            def run(batch):
                fn(batch)
                sync()

            return time_fn(run, b, args.repeats)

        # Interleave the two to share any drift of the machine's speed.
        opd, sg = [], []
        for _ in range(2):
            opd += timed(opd_step)
            sg += timed(sgopd_step)
        row = {
            "B": B,
            "T": T,
            "opd_ms_median": 1e3 * statistics.median(opd),
            "sgopd_ms_median": 1e3 * statistics.median(sg),
        }
        row["ratio"] = row["sgopd_ms_median"] / row["opd_ms_median"]
        rows.append(row)
        print(
            f"B={B:4d} T={T:5d}  OPD {row['opd_ms_median']:8.2f} ms  SG-OPD {row['sgopd_ms_median']:8.2f} ms  ratio {row['ratio']:.2f}"
        )
    result = {
        "benchmark": "routed SG-OPD token loss vs plain OPD, forward+backward",
        "device": args.device
        if args.device != "cpu"
        else f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads",
        "torch": torch.__version__,
        "repeats": 2 * args.repeats,
        "target_ratio": 1.3,
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
