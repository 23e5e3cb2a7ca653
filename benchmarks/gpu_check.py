"""The GPU checks in one prepared script: CUDA vs CPU parity of ``workbench.algo``, then benchmarks.

Nothing here has run yet: the sessions so far had no GPU machine. Run it once on a CUDA
machine (15 minutes is plenty; in the GPU environment, ``make setup-gpu``) and commit
``benchmarks/results/gpu_check.json``. ``make gpu-smoke`` is the verl path's own check.

    python benchmarks/gpu_check.py [--world results/mini/world]

1. Parity: every loss and advantage function on the same random batch on CPU and on
   CUDA (float32), values and gradients compared with a tolerance; every gate fallback
   and stability weight. A mismatch exits non-zero after writing the report.
2. ``bench_loss.py --device cuda`` (SG-OPD loss vs OPD loss).
3. With ``--world``: ``bench_mini_step.py`` on CUDA for opd and sgopd (the mini trainer
   runs on CUDA when one is present, same code).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import workbench.algo as A

REPO = Path(__file__).resolve().parents[1]


def batch(B: int = 16, T: int = 48, V: int = 32, G: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = lambda: -torch.rand(B, T, generator=g) * 3
    mask = torch.arange(T)[None, :] < torch.randint(T // 4, T + 1, (B,), generator=g)[:, None]
    return {
        "lp_new": lp(),
        "lp_old": lp(),
        "lp_teacher": lp(),
        "lp_ref": lp(),
        "mask": mask,
        "rewards": (torch.rand(B, generator=g) < 0.4).float(),
        "group_ids": torch.arange(B) // G,
        "s_logits": torch.randn(B, T, V, generator=g),
        "t_logits": torch.randn(B, T, V, generator=g),
        "tokens": torch.randint(0, V, (B, T), generator=g),
        "kept": torch.rand(B, generator=g) < 0.7,
    }


def cases(b: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """name -> (value, gradient...) computed on ``b``'s device."""
    out = {}
    a_rl = A.grpo_advantage(b["rewards"], b["group_ids"])
    out["grpo_advantage"] = (a_rl,)
    out["gopd_advantage"] = (A.gopd_advantage(b["lp_old"], b["lp_teacher"], b["lp_ref"], 1.5),)
    for mode in A.FALLBACKS.names():
        for gate in (True, False):
            adv, cls, _ = A.route_advantage(
                a_rl, b["lp_old"], b["lp_teacher"], b["lp_ref"], b["mask"], sign_gate=gate, disagree_mode=mode
            )
            for smode in A.STABILITY_WEIGHTS.names():
                w = A.stability_weight(adv, b["lp_old"], b["mask"], mode=smode)
                lp_new = b["lp_new"].clone().requires_grad_(True)
                loss, _ = A.ppo_clip_loss(lp_new, b["lp_old"], adv, w, b["mask"])
                loss.backward()
                out[f"sgopd[{mode},gate={gate},{smode}]"] = (loss.detach(), adv, cls.to(adv.dtype), w, lp_new.grad)
    s = b["s_logits"].clone().requires_grad_(True)
    loss, _ = A.generalized_jsd_loss(s, b["t_logits"], b["mask"], beta=0.5)
    loss.backward()
    out["generalized_jsd_loss"] = (loss.detach(), s.grad)
    s = b["s_logits"].clone().requires_grad_(True)
    logp = A.sequence_logprobs(s, b["tokens"])
    loss, _ = A.pts_anchor_loss(logp, b["mask"], b["kept"])
    loss.backward()
    out["pts_anchor_loss"] = (loss.detach(), s.grad)
    out["token_entropy"] = (A.token_entropy(b["t_logits"]),)
    return out


def parity(atol: float = 1e-5, rtol: float = 1e-4) -> dict:
    cpu = batch()
    gpu = {k: v.cuda() for k, v in cpu.items()}
    ref, got = cases(cpu), cases(gpu)
    rows = {}
    for name, xs in ref.items():
        diffs = [float((x.double() - y.double().cpu()).abs().max()) if x.numel() else 0.0 for x, y in zip(xs, got[name])]
        ok = all(torch.allclose(x, y.cpu(), atol=atol, rtol=rtol) for x, y in zip(xs, got[name]))
        rows[name] = {"ok": ok, "max_abs_diff": max(diffs)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=None, help="prepared mini world (runs bench_mini_step on CUDA)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = ap.parse_args()
    from workbench.backends.verl.stage import require_cuda_torch
    from workbench.errors import UserError

    try:  # a CPU torch build says so (and what to install), not just "no device"
        require_cuda_torch("gpu_check")
    except UserError as e:
        sys.exit(f"error: {e}")
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
    }
    report["parity"] = rows = parity()
    bad = [n for n, r in rows.items() if not r["ok"]]
    print(f"parity: {len(rows) - len(bad)}/{len(rows)} ok" + (f"; mismatches: {bad}" if bad else ""))
    tmp = Path(args.out).with_suffix(".bench_loss.json")
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_loss.py"), "--device", "cuda", "--out", str(tmp)], check=True
    )
    report["bench_loss"] = json.loads(tmp.read_text())
    if args.world:
        tmp2 = Path(args.out).with_suffix(".mini_step.json")
        subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "bench_mini_step.py"),
                "--world",
                args.world,
                "--runs",
                "opd",
                "sgopd",
                "--out",
                str(tmp2),
            ],
            check=True,
        )
        report["mini_step"] = json.loads(tmp2.read_text())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
