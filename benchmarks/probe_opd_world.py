"""Probe: does plain sampled-token on-policy distillation (OPD) help in the mini world?

Standalone (independent of the real trainer): the student samples ``G`` responses per
prompt at temperature ``T``; the frozen teacher scores the sampled tokens; each token's
advantage is the reverse-KL signal ``A[t] = lp_teacher[t] - lp_student[t]`` (detached);
the loss is the on-policy policy gradient ``-token_mean(A * lp_student)`` (one update per
batch, so the PPO ratio is 1 and clipping is moot), optimised with AdamW.

Usage::

    python benchmarks/probe_opd_world.py --world runs/mini-world --steps 200 \
        --prompts 16 --group 4 --lr 1e-3 --temperature 1.0 --out probe.json

Prints greedy benchmark accuracy (and training reward) every ``--eval-every`` steps and
writes the history as JSON. Results are recorded in docs/mini-world.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from workbench.mini.evaluate import evaluate_accuracy
from workbench.mini.models import load_model
from workbench.mini.sampling import generate, max_response_tokens
from workbench.mini.task import read_jsonl, verify
from workbench.mini.tokenizer import CODEC, PAD_ID


def response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], smooth: float = 0.0, full: bool = False):
    """Log-probs of the response tokens.

    Returns ``(lp [B, R], mask [B, R])`` with ``R`` the longest response; sequences are
    right-padded ``prompt + response`` (no attention mask needed under causal attention).
    ``smooth`` > 0 scores with the mixture ``(1 - smooth) * p + smooth / V`` (a probe of
    how teacher calibration matters; the world's own teacher is used with 0).
    """
    B = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(len(r) for r in responses)
    # left-align prompts at different offsets would complicate gathers: instead place each
    # sequence right-padded and gather at per-row response offsets
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((B, T), PAD_ID, dtype=torch.long)
    tgt_pos = torch.zeros((B, R), dtype=torch.long)
    tgt = torch.full((B, R), PAD_ID, dtype=torch.long)
    mask = torch.zeros((B, R))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.as_tensor(p + r)
        tgt_pos[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        tgt[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1.0
    del P
    logits = model(input_ids=ids).logits  # [B, T, V]
    logits = logits.gather(1, tgt_pos[..., None].expand(-1, -1, logits.size(-1)))  # [B, R, V]
    lp = torch.log_softmax(logits.float(), -1)
    if smooth > 0.0:
        lp = torch.logaddexp(lp + math.log1p(-smooth), torch.full_like(lp, math.log(smooth / lp.size(-1))))
    if full:  # [B, R, V] log-probs over the vocabulary
        return lp, mask
    lp = lp.gather(-1, tgt[..., None]).squeeze(-1)
    return lp * mask, mask


def bench_eval(model, benches: dict, sampled_k: int = 0, seed: int = 0) -> dict:
    out = {n: evaluate_accuracy(model, ps, greedy=True)["acc"] for n, ps in benches.items()}
    out["avg"] = sum(out[n] for n in benches) / len(benches)
    if sampled_k:
        s = {n: evaluate_accuracy(model, ps, greedy=False, k=sampled_k, seed=seed)["acc"] for n, ps in benches.items()}
        out["sampled_avg"] = sum(s.values()) / len(s)
    return out


@torch.no_grad()
def token_class_stats(student, teacher, pool, prompts: int, group: int, rounds: int, max_new: int, seed: int) -> dict:
    """Sign classes of (A_RL, A_OPD) on student rollouts (docs/algorithm.md section 3), plus how often
    the teacher's greedy answer is wrong while some student rollout is right."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    n_tok = n_both = n_conf = n_mixed = n_tw_sr = n_prob = 0
    for _ in range(rounds):
        probs = rng.sample(pool, prompts)
        pr = [CODEC.encode_prompt(p.prompt) for p in probs for _ in range(group)]
        resp = generate(student, pr, max_new, temperature=1.0, generator=gen)
        r = torch.tensor([float(verify(probs[i // group], CODEC.decode(x))) for i, x in enumerate(resp)]).view(-1, group)
        a_rl = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1)
        lp_s, mask = response_logprobs(student, pr, resp)
        lp_t, _ = response_logprobs(teacher, pr, resp)
        a_opd = (lp_t - lp_s) * mask
        both = (mask > 0) & (a_rl[:, None] != 0) & (a_opd != 0)
        n_tok += int(mask.sum())
        n_both += int(both.sum())
        n_conf += int((both & (torch.sign(a_rl)[:, None] * torch.sign(a_opd) < 0)).sum())
        n_mixed += int(((r.sum(1) > 0) & (r.sum(1) < group)).sum())
        t_out = generate(teacher, [CODEC.encode_prompt(p.prompt) for p in probs], max_new, greedy=True)
        n_tw_sr += sum(not verify(p, CODEC.decode(o)) and bool(r[i].sum() > 0) for i, (p, o) in enumerate(zip(probs, t_out)))
        n_prob += len(probs)
    return {
        "both_signals_frac": n_both / n_tok,
        "conflict_frac": n_conf / max(1, n_both),
        "consensus_frac": 1 - n_conf / max(1, n_both),
        "mixed_groups_frac": n_mixed / n_prob,
        "teacher_wrong_student_right_frac": n_tw_sr / n_prob,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="prepared world dir (manifest.json)")
    ap.add_argument("--student", default=None, help="student checkpoint (default: world/student)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--sampled-k", type=int, default=4, help="T=1 samples/problem at the end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default="A,B")
    ap.add_argument("--teacher-smooth", type=float, default=0.0, help="score with (1-e)*p_T + e/V (probe of teacher calibration)")
    ap.add_argument(
        "--loss",
        choices=("opd", "fullkl"),
        default="opd",
        help="opd: sampled-token policy gradient; fullkl: exact per-token reverse KL",
    )
    ap.add_argument("--token-stats", action="store_true", help="first measure gate token classes on 4 x 64 prompts x 8 rollouts")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    world = Path(a.world)
    man = json.loads((world / "manifest.json").read_text())
    teacher = load_model(world / "teacher")
    student = load_model(a.student or world / "student")
    for p in teacher.parameters():
        p.requires_grad_(False)
    benches = {n: read_jsonl(world / "data" / f"{n}.jsonl") for n in man["benchmarks"]}
    pool = [p for s in a.sources.split(",") for p in read_jsonl(world / "data" / f"train_{s}.jsonl")]
    max_new = max_response_tokens([p for ps in benches.values() for p in ps])
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    if a.token_stats:
        stats = token_class_stats(student, teacher, pool, 64, 8, 4, max_new, a.seed)
        print(json.dumps({"token_stats_at_init": stats}), flush=True)
        if a.steps == 0:
            return {"token_stats_at_init": stats}
    history = [{"step": 0, **bench_eval(student, benches, a.sampled_k, a.seed)}]
    print(json.dumps(history[-1]), flush=True)
    t0 = time.time()
    rewards, kls = [], []
    for step in range(1, a.steps + 1):
        probs = rng.sample(pool, a.prompts)
        prompts = [CODEC.encode_prompt(p.prompt) for p in probs for _ in range(a.group)]
        resp = generate(student, prompts, max_new, temperature=a.temperature, generator=gen)
        rewards += [float(verify(probs[i // a.group], CODEC.decode(r))) for i, r in enumerate(resp)]
        student.train()
        if a.loss == "fullkl":
            # exact per-position reverse KL over the vocabulary (no sampling variance)
            full_s, mask = response_logprobs(student, prompts, resp, full=True)
            with torch.no_grad():
                full_t, _ = response_logprobs(teacher, prompts, resp, a.teacher_smooth, full=True)
            kl = (full_s.exp() * (full_s - full_t)).sum(-1)
            loss = (kl * mask).sum() / mask.sum()
            adv = -kl.detach() * mask
        else:
            lp_s, mask = response_logprobs(student, prompts, resp)
            with torch.no_grad():
                lp_t, _ = response_logprobs(teacher, prompts, resp, a.teacher_smooth)
            adv = (lp_t - lp_s.detach()) * mask
            loss = -(adv * lp_s).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        student.eval()
        kls.append(float((-adv).sum() / mask.sum()))
        if step % a.eval_every == 0 or step == a.steps:
            rec = {
                "step": step,
                "seconds": round(time.time() - t0, 1),
                "train_reward": round(sum(rewards) / len(rewards), 4),
                "kl_teacher": round(sum(kls) / len(kls), 4),
                **bench_eval(student, benches, a.sampled_k if step == a.steps else 0, a.seed),
            }
            rewards, kls = [], []
            history.append(rec)
            print(json.dumps(rec), flush=True)
    result = {
        "args": vars(a),
        "history": history,
        "gain_greedy_avg": history[-1]["avg"] - history[0]["avg"],
        "gain_sampled_avg": history[-1].get("sampled_avg", 0) - history[0]["sampled_avg"],
    }
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
