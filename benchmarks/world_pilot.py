"""The pilot of a candidate miniature world (docs/mini-world.md, "Pilot and its
falsification rule"): cheap single runs that can reject a world before the 3-seed grid.

1. Learning rate, once per family, on the validation split (blind to the gate and PTS):
   the imitation family's representative (seqkd) and the on-policy family's (opd) each
   train ``--steps`` steps at every rate of their list; a family's rate is the one with
   the best validation avg@k.
2. GKD trains at the on-policy family's rate.
3. The rule, fixed before the pilot: the world is **rejected** if OPD < SeqKD + 1 point or
   GKD < SeqKD - 1 point (validation avg@k, in points).

Every run is ``workbench train`` itself (the grid's code path), evaluated on the
validation split only. Writes ``<out>/pilot.json`` and prints the table::

    python benchmarks/world_pilot.py --world results/v2/world --out results/v2/pilot
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"imitation": "seqkd", "on-policy": "opd"}


def train(method: str, lr: float, a: argparse.Namespace) -> dict:
    run_dir = Path(a.out) / f"{method}-lr{lr:g}"
    cmd = [
        sys.executable, "-m", "workbench", "train", str(ROOT / "experiments" / "runs" / f"{method}.yaml"),
        "--run-dir", str(run_dir), "--world", a.world, "--scale", "mini", "--seed", str(a.seed),
        "--threads", str(a.threads), "--experiment", "world-pilot",
        "--set", f"train.steps={a.steps}", "--set", f"optim.lr={lr}", "--set", "train.eval_every=0",
        "--set", "eval.benchmarks=[validation]",
    ]  # fmt: skip
    t0 = time.time()
    if not (run_dir / "eval.json").exists():
        subprocess.run(cmd, check=True, cwd=ROOT)
    ev = json.loads((run_dir / "eval.json").read_text())["benchmarks"]["validation"]
    row = {"method": method, "lr": lr, "avg_at_k": 100 * ev["avg_at_k"], "pass_at_k": 100 * ev["pass_at_k"]}
    row["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imitation-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    ap.add_argument("--on-policy-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    a = ap.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    rows, best = [], {}
    for family, lrs in (("imitation", a.imitation_lrs), ("on-policy", a.on_policy_lrs)):
        fam_rows = [train(FAMILIES[family], lr, a) for lr in lrs]
        rows += fam_rows
        best[family] = max(fam_rows, key=lambda r: r["avg_at_k"])
    gkd = train("gkd", best["on-policy"]["lr"], a)
    rows.append(gkd)
    opd, seqkd = best["on-policy"]["avg_at_k"], best["imitation"]["avg_at_k"]
    checks = {
        "OPD >= SeqKD + 1": opd >= seqkd + 1,
        "GKD >= SeqKD - 1": gkd["avg_at_k"] >= seqkd - 1,
    }
    result = {
        "world": a.world,
        "steps": a.steps,
        "seed": a.seed,
        "rows": rows,
        "lr": {f: r["lr"] for f, r in best.items()},
        "checks": checks,
        "verdict": "pass" if all(checks.values()) else "rejected",
    }
    (Path(a.out) / "pilot.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'method':8} {'lr':>8} {'avg@k':>7} {'pass@k':>7}")
    for r in rows:
        print(f"{r['method']:8} {r['lr']:8g} {r['avg_at_k']:7.2f} {r['pass_at_k']:7.2f}")
    print(f"\nOPD {opd:.2f}, SeqKD {seqkd:.2f}, GKD {gkd['avg_at_k']:.2f}: {checks} -> {result['verdict']}")


if __name__ == "__main__":
    main()
