"""The mini backend's trainer: one readable loop for every method of the grid.

``train`` runs one loop; what differs between methods is one step function per method
family (``FAMILY_STEPS``), from the step's inputs to its token loss:

- ``pg_step`` (opd, exopd, sgopd, grpo): sample G rollouts per prompt (KV cache), verify,
  GRPO outcome advantage, teacher and reference log-probs on the student's tokens, routed
  advantage, stability weight, PPO-clip token loss;
- ``gkd_step``: the same rollouts, full-vocabulary generalized JSD to the teacher instead;
- ``sft_step`` (sft, seqkd, time-separated stage 1): teacher-forced NLL on a batch of
  cached teacher responses instead of sampling (stage 1: PTS's responses, as PTS uses them).

The loop then adds the PTS anchor loss where the run has it, takes the optimiser step,
logs, evaluates and checkpoints. Every formula comes from ``workbench.algo``.

Run directory layout::

    run_dir/config.yaml          the resolved run config
    run_dir/checkpoints/step-N/  model (HF format), optimizer.pt, state.json
    run_dir/final/               the final model (HF format)
    run_dir/metrics.jsonl        one line per step (canonical metric names)
    run_dir/casestudy.json       a few rollouts of the last step (policy-gradient methods)
    run_dir/eval.json            evaluation of the final model (written by ``workbench.mini.runs``)

A run whose directory holds checkpoints resumes from the last readable one. Resuming
gives the numbers of an uninterrupted run because every random draw of a step comes from
that step's seeds alone; the places this rests on are marked "load-bearing for resuming".
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

import workbench.algo as A
from workbench import stops
from workbench.config import ADAM_BETAS, RunConfig
from workbench.io import atomic_dir, atomic_write_text, move_aside
from workbench.methods import METHODS, Method
from workbench.mini.evaluate import evaluate
from workbench.mini.models import load_model
from workbench.mini.sampling import generate
from workbench.mini.task import Problem, verify
from workbench.mini.tokenizer import CODEC, PAD_ID
from workbench.mini.world import World
from workbench.status import duration, run_label, status
from workbench.tracking import check_finite

transformers.utils.logging.disable_progress_bar()  # one bar per checkpoint save is noise in logs


# -- tensors from token lists -----------------------------------------------------------


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids [N, L]`` of prompt + response, and ``mask [N, L - 1]``.

    ``mask[:, t]`` is 1 where position ``t`` predicts a response token ``ids[:, t + 1]``,
    so it aligns with ``logits[:, :-1]``. Right padding needs no attention mask under
    causal attention: real tokens never attend to the pads after them.
    """
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), L - 1), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.as_tensor(list(p) + list(r))
        mask[i, len(p) - 1 : len(p) + len(r) - 1] = True
    return ids.to(device), mask.to(device)


def forward_logprobs(
    model, ids: torch.Tensor, temperature: float = 1.0, *, buckets: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp of the next tokens [N, L - 1], logits [N, L - 1, V])`` of right-padded ``ids``.

    Rows are sorted by length and run in ``buckets`` chunks, each cut to its own longest
    row: rollout lengths vary so much that one padded batch is more than half padding,
    and with right padding and causal attention the cut pads change no valid position.
    Positions past a row's end hold 0 (they are masked everywhere).
    """
    width = ids.shape[1]
    lengths = (ids != PAD_ID).sum(-1)
    order = torch.argsort(lengths)
    parts_lp, parts_logits = [], []
    for rows in order.chunk(buckets):
        cut = ids[rows, : max(int(lengths[rows].max()), 2)]
        logits = model(input_ids=cut).logits[:, :-1]
        pad = width - cut.shape[1]
        parts_logits.append(F.pad(logits, (0, 0, 0, pad)))
        parts_lp.append(F.pad(A.sequence_logprobs(logits, cut[:, 1:], temperature), (0, pad)))
    inverse = torch.argsort(order)
    return torch.cat(parts_lp)[inverse], torch.cat(parts_logits)[inverse]


@torch.no_grad()
def score(model, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return forward_logprobs(model, ids, temperature)[0]


# -- teacher data for the SFT family --------------------------------------------------------


def teacher_dataset(cfg: RunConfig, world: World, teacher, device) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, response_ids)`` pairs answered by the teacher, cached in the world.

    ``sft.teacher_budget: pool`` answers every training prompt once; ``pts`` answers as
    many prompts as PTS with this config's ``pts`` section would. ``filter_correct``
    keeps only verified responses.
    """
    pool = world.train_pool(cfg.train.sources)
    random.Random(f"sft-pool:{cfg.seed}").shuffle(pool)  # the budget's prompts: fixed by the seed
    if cfg.sft.teacher_budget == "pts":
        n = A.pts_teacher_prompts(
            cfg.train.steps,
            cfg.rollout.prompts_per_step,
            teacher_sampling_ratio=cfg.pts.teacher_sampling_ratio,
            phase1_end_frac=cfg.pts.phase1_end_frac,
            phase2_end_frac=cfg.pts.phase2_end_frac,
        )
        pool = pool[:n]
    greedy = cfg.sft.teacher_decoding == "greedy"
    key = "-".join(
        [
            cfg.sft.teacher_decoding,
            f"t{cfg.rollout.temperature}",
            f"p{cfg.rollout.top_p}",
            f"seed{cfg.seed}",
            "+".join(cfg.train.sources or world.sources),
            f"n{len(pool)}",
        ]
    )
    cache = world.root / "teacher_data" / f"{key}.jsonl"
    if not cache.exists():
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)
        rows = []
        max_new = cfg.rollout.max_new_tokens or world.max_new_tokens()
        for s in range(0, len(pool), 512):
            chunk = pool[s : s + 512]
            outs = generate(
                teacher,
                [CODEC.encode_prompt(p.prompt) for p in chunk],
                max_new,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                greedy=greedy,
                generator=g,
            )
            rows += [{"prompt": p.prompt, "response": o, "correct": verify(p, CODEC.decode(o))} for p, o in zip(chunk, outs)]
        atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in rows))
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    if cfg.sft.filter_correct:
        rows = [r for r in rows if r["correct"]]
    if not rows:
        raise RuntimeError(f"no teacher responses left for SFT (cache {cache})")
    return [(CODEC.encode_prompt(r["prompt"]), r["response"]) for r in rows]


def write_case_study(path: Path, rollout: Rollout, G: int, cls: torch.Tensor, adv: torch.Tensor, n: int = 8) -> None:
    """A few rollouts of a step with their token classes and routed advantages (for the
    conflict-token case study, ``workbench.analysis.casestudy``): one per prompt first,
    so that several problems are shown."""
    problems, responses, rewards, mask = rollout.problems, rollout.responses, rollout.rewards, rollout.mask
    rows = []
    order = sorted(range(len(responses)), key=lambda i: (i % G, i // G))[:n]
    for i in order:
        m = mask[i]
        rows.append(
            {
                "prompt": problems[i // G].prompt,
                "tokens": [CODEC.itos[t] for t in responses[i]],
                "token_class": [int(c) for c in cls[i][m].tolist()],
                "advantage": [round(float(a), 5) for a in adv[i][m].tolist()],
                "reward": float(rewards[i]),
            }
        )
    atomic_write_text(path, json.dumps(rows, indent=1))


# -- checkpoints -------------------------------------------------------------------------


def _ckpt_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in root.glob("step-*") if (p / "state.json").exists()] if root.exists() else []
    return sorted(found)


def load_checkpoint(run_dir: Path) -> tuple[int, torch.nn.Module | None, dict | None]:
    """``(step, model, optimizer state)`` of the newest readable checkpoint, or ``(0, None, None)``.

    An unreadable one (a truncated ``model.safetensors`` or ``optimizer.pt``) is moved aside
    as ``checkpoints/.step-N.corrupt-*``, with a warning naming it, and the one before is
    used: the tracker replays the steps in between (``Tracker.truncate_after``). Loaded on
    the CPU, so that only the files' contents decide what is unreadable.
    """
    for step, path in reversed(_ckpt_dirs(run_dir)):
        try:
            model = load_model(path)
            opt_state = torch.load(path / "optimizer.pt", map_location="cpu")
        except Exception as e:  # noqa: BLE001 (whatever the reader raises, the files are bad)
            aside = move_aside(path, "corrupt")
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            status(
                f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {reason}); moved it to "
                f"{aside} and resuming from the checkpoint before it"
            )
            continue
        return step, model, opt_state
    return 0, None, None


def save_checkpoint(run_dir: Path, step: int, model, opt, keep: set[int]) -> Path:
    target = run_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    for s, p in _ckpt_dirs(run_dir)[:-1]:
        if s not in keep:
            shutil.rmtree(p, ignore_errors=True)
    return target


def resolve_init(cfg: RunConfig, run_dir: Path, world: World) -> Path:
    """Initial weights: the world's student, or ``train.init_from`` (a run id or a path)."""
    ref = cfg.train.init_from
    if ref is None:
        return world.root / "student"
    path = Path(ref)
    if path.exists():
        return path
    # A run id of the same grid: runs/<id>/<seed dir>/final beside this run.
    sibling = run_dir.parent.parent / ref / run_dir.name / "final"
    if sibling.exists():
        return sibling
    raise FileNotFoundError(f"train.init_from: no checkpoint for {ref!r} (looked for {path} and {sibling})")


# -- one step per method family --------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every step reads: the run config, the models and the data (fixed for the run;
    the student's weights change in place)."""

    cfg: RunConfig
    method: Method
    device: str
    student: torch.nn.Module
    teacher: torch.nn.Module
    ref: torch.nn.Module | None  # the frozen initial policy, where ``RunConfig.needs_reference``
    pool: list[Problem]  # training prompts
    sft_data: list[tuple[list[int], list[int]]] | None  # cached teacher responses (SFT family)
    max_new: int  # response token budget


@dataclass(frozen=True)
class Rollout:
    """One step's on-policy batch: G student responses per prompt, verified and scored.
    Token tensors are ``[P * G, L - 1]``, aligned with ``mask``."""

    problems: list[Problem]  # the step's P prompts
    responses: list[list[int]]
    rewards: torch.Tensor  # [P * G], 1.0 where verified correct
    mask: torch.Tensor
    n_tokens: int
    logp: torch.Tensor  # the student's, with grad
    logits: torch.Tensor  # the student's
    lp_old: torch.Tensor  # logp detached: one PPO epoch on fresh samples
    lp_teacher: torch.Tensor
    t_logits: torch.Tensor
    lp_ref: torch.Tensor
    a_rl: torch.Tensor  # [P * G] GRPO outcome advantage
    timing: dict[str, float]  # seconds: sample, teacher, ref


@dataclass(frozen=True)
class StepOut:
    """What a family's step hands the loop."""

    loss: torch.Tensor  # the token loss, with grad (the PTS anchor is the loop's)
    n_tokens: int
    metrics: dict[str, float]
    timing: dict[str, float]  # seconds by phase: sample, teacher, ref
    rollout: Rollout | None = None  # on-policy families
    cls: torch.Tensor | None = None  # token classes (gate signs), on-policy families
    adv: torch.Tensor | None = None  # the advantage that reached the loss (pg)


def _prompts_for_step(pool: list[Problem], step: int, n: int, seed: int) -> list[Problem]:
    """Deterministic from (seed, step): a resumed run sees exactly the same prompts
    (load-bearing for resuming)."""
    per_epoch = max(1, len(pool) // n)
    epoch, slot = divmod(step, per_epoch)
    order = list(range(len(pool)))
    random.Random(f"prompts:{seed}:{epoch}").shuffle(order)
    return [pool[i] for i in order[slot * n : slot * n + n]]


def sample_and_score(s: Setup, step: int, gen: torch.Generator) -> Rollout:
    """Steps 1-3 of an on-policy step: sample, verify, score (teacher, student, reference)."""
    cfg = s.cfg
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    temp = cfg.rollout.temperature
    # 1. Sample G rollouts per prompt from the current student. Load-bearing for resuming:
    # the step's first draws from `gen` (the PTS teacher's come after, pts_anchor).
    t0 = time.time()
    problems = _prompts_for_step(s.pool, step, P, cfg.seed)
    prompts = [CODEC.encode_prompt(p.prompt) for p in problems for _ in range(G)]
    responses = generate(s.student, prompts, s.max_new, temperature=temp, top_p=cfg.rollout.top_p, generator=gen)
    s.student.train()
    # 2. Verify (the task's own exact check).
    rewards = torch.tensor([float(verify(problems[i // G], CODEC.decode(r))) for i, r in enumerate(responses)])
    group_ids = torch.arange(len(responses)) // G
    ids, mask = pack(prompts, responses, s.device)
    timing = {"sample": time.time() - t0}
    # 3. Teacher (and reference) log-probs of the student's tokens.
    t0 = time.time()
    with torch.no_grad():
        lp_teacher, t_logits = forward_logprobs(s.teacher, ids, temp)
    timing["teacher"] = time.time() - t0
    logp, logits = forward_logprobs(s.student, ids, temp)
    # One PPO epoch on fresh samples: the rollout policy is the current policy.
    lp_old = logp.detach()
    t0 = time.time()
    lp_ref = score(s.ref, ids, temp) if s.ref is not None else lp_old  # lambda 1: lp_ref cancels
    timing["ref"] = time.time() - t0
    a_rl = A.grpo_advantage(rewards.to(s.device), group_ids.to(s.device))
    return Rollout(
        problems=problems,
        responses=responses,
        rewards=rewards,
        mask=mask,
        n_tokens=int(mask.sum()),
        logp=logp,
        logits=logits,
        lp_old=lp_old,
        lp_teacher=lp_teacher,
        t_logits=t_logits,
        lp_ref=lp_ref,
        a_rl=a_rl,
        timing=timing,
    )


def _on_policy_metrics(r: Rollout) -> dict[str, float]:
    return {
        "train/kl_teacher": float(A.token_mean(r.lp_old - r.lp_teacher, r.mask)),
        "train/reward_mean": float(r.rewards.mean()),
        "train/entropy": float(A.token_mean(A.token_entropy(r.logits), r.mask)),
        "train/response_length": r.n_tokens / len(r.responses),
    }


def pg_step(s: Setup, step: int, gen: torch.Generator) -> StepOut:
    """opd, exopd, sgopd, grpo: routed advantage (grpo: the outcome advantage on every
    token), stability weight, PPO-clip token loss (docs/algorithm.md sections 3-5)."""
    cfg = s.cfg
    r = sample_and_score(s, step, gen)
    # 4. Routed advantage, stability weight, PPO-clip token loss.
    adv, cls, gate_metrics = A.route_advantage(r.a_rl, r.lp_old, r.lp_teacher, r.lp_ref, r.mask, **cfg.gate.route_kwargs())
    if s.method.advantage == "grpo":
        adv = torch.where(r.mask, r.a_rl[:, None].expand_as(adv), torch.zeros_like(adv))
        gate_metrics.update(adv_mean=float(A.token_mean(adv, r.mask)), adv_abs_max=float(adv.abs().max()))
    weight = A.stability_weight(adv, r.lp_old, r.mask, mode=cfg.stability.mode, clip=cfg.stability.clip)
    loss, pg_metrics = A.ppo_clip_loss(r.logp, r.lp_old, adv, weight, r.mask, **cfg.optim.pg_loss_kwargs())
    metrics = {f"train/{k}": v for k, v in gate_metrics.items()}
    metrics["train/clipfrac"] = pg_metrics["clipfrac"]
    metrics.update(_on_policy_metrics(r))
    return StepOut(loss, r.n_tokens, metrics, r.timing, rollout=r, cls=cls, adv=adv)


def gkd_step(s: Setup, step: int, gen: torch.Generator) -> StepOut:
    """gkd: full-vocabulary generalized JSD to the teacher on the student's samples; no
    advantage reaches the loss (the gate's token classes are logged for comparison)."""
    cfg = s.cfg
    r = sample_and_score(s, step, gen)
    loss, _ = A.generalized_jsd_loss(r.logits, r.t_logits, r.mask, beta=cfg.gkd.beta, temperature=cfg.rollout.temperature)
    cls = A.sign_classes(r.a_rl[:, None].expand_as(r.lp_old), A.opd_advantage(r.lp_old, r.lp_teacher), r.mask)
    metrics = {f"train/{k}": v for k, v in A.gate_fractions(cls, r.mask).items()}
    metrics.update(_on_policy_metrics(r))
    return StepOut(loss, r.n_tokens, metrics, r.timing, rollout=r, cls=cls)


def sft_step(s: Setup, step: int, gen: torch.Generator) -> StepOut:
    """sft, seqkd, time-separated stage 1: teacher-forced NLL on cached teacher responses
    (``gen`` is not drawn from). The batch depends on (seed, step) only, so that a resumed
    run sees the same batches:

    - ``sft.teacher_budget: pool``: P * G sequences a step, drawn at random from the data;
    - ``pts``: the responses in order, as many a step as an active PTS step anchors on
      (``pts_prompts_per_step``), so that stage 1 uses PTS's teacher data as PTS does,
      about once each, rather than the P * G a step that made it ~87 passes over ~200
      responses (issue #12)."""
    cfg = s.cfg
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    n = len(s.sft_data)
    if cfg.sft.teacher_budget == "pts":
        b = A.pts_prompts_per_step(P, cfg.pts.teacher_sampling_ratio)
        pairs = [s.sft_data[(step * b + j) % n] for j in range(b)]
    else:
        rng = random.Random(f"sft:{cfg.seed}:{step}")
        pairs = [s.sft_data[rng.randrange(n)] for _ in range(P * G)]
    t0 = time.time()
    ids, mask = pack([p for p, _ in pairs], [r for _, r in pairs], s.device)  # "sampling" is batching here
    timing = {"sample": time.time() - t0}
    logp, logits = forward_logprobs(s.student, ids)
    loss, _ = A.nll_loss(logp, mask)
    n_tokens = int(mask.sum())
    metrics = {
        "train/entropy": float(A.token_mean(A.token_entropy(logits), mask)),
        "train/response_length": n_tokens / len(pairs),
    }
    return StepOut(loss, n_tokens, metrics, timing)


#: One step per method family (``workbench.methods.Method.family``): the step's inputs to
#: its token loss. The loop in ``train`` does the rest, the same for all.
FAMILY_STEPS: dict[str, Callable[[Setup, int, torch.Generator], StepOut]] = {
    "pg": pg_step,
    "gkd": gkd_step,
    "sft": sft_step,
}


def pts_anchor(s: Setup, step: int, gen: torch.Generator, problems: list[Problem]) -> tuple[torch.Tensor | None, dict, float]:
    """Phased teacher sampling (docs/algorithm.md section 6): ``(alpha * L_PTS or None where
    PTS is inactive at this step, metrics, seconds the teacher took)``. The anchor is the
    NLL of verified teacher answers to the step's first prompts."""
    cfg, steps = s.cfg, s.cfg.train.total_steps
    alpha = A.pts_alpha(step, steps, **cfg.pts.schedule_kwargs())
    metrics = {"train/pts_alpha": alpha, "train/pts_kept": 0.0, "train/pts_loss": 0.0}
    if not A.pts_active(step, steps, phase1_end_frac=cfg.pts.phase1_end_frac, phase2_end_frac=cfg.pts.phase2_end_frac):
        return None, metrics, 0.0
    t1 = time.time()
    chosen = problems[: A.pts_prompts_per_step(cfg.rollout.prompts_per_step, cfg.pts.teacher_sampling_ratio)]
    t_prompts = [CODEC.encode_prompt(p.prompt) for p in chosen]
    # Load-bearing for resuming: the same `gen` as the student's rollouts, drawn after them.
    t_resp = generate(
        s.teacher, t_prompts, s.max_new, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, generator=gen
    )
    s.student.train()
    correct = torch.tensor([verify(p, CODEC.decode(r)) for p, r in zip(chosen, t_resp)])
    kept = correct if cfg.pts.filter_correct else torch.ones_like(correct)
    seconds = time.time() - t1
    z_ids, z_mask = pack(t_prompts, t_resp, s.device)
    z_logp, _ = forward_logprobs(s.student, z_ids)
    pts_loss, pts_metrics = A.pts_anchor_loss(z_logp, z_mask, kept.to(s.device))
    metrics.update(
        {
            "train/pts_teacher_acc": float(correct.float().mean()),
            "train/pts_kept": float(pts_metrics["pts_kept"]),
            "train/pts_loss": pts_metrics["pts_loss"],
        }
    )
    return alpha * pts_loss, metrics, seconds


# -- the loop ----------------------------------------------------------------------------


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warm-up to ``optim.lr``, then constant."""
    w = cfg.optim.warmup_steps
    return cfg.optim.lr * (step + 1) / w if step < w else cfg.optim.lr


class Progress:
    """A one-line progress bar on a terminal, plain lines in logs; with a ``label``, a status
    line (``workbench.status``) at each quarter of the steps."""

    def __init__(self, total: int, every: int = 10, label: str | None = None):
        self.total, self.every, self.tty, self.t0 = total, every, sys.stderr.isatty(), time.time()
        self.label = label

    def update(self, step: int, start: int, metrics: dict) -> None:
        done = step + 1
        rate = (time.time() - self.t0) / max(done - start, 1)
        eta = rate * (self.total - done)
        # the SFT family samples nothing, so it has no reward to show
        reward = f"reward {metrics['train/reward_mean']:.3f} " if "train/reward_mean" in metrics else ""
        line = f"step {done}/{self.total} {reward}loss {metrics['train/loss']:.4f} eta {eta:5.0f}s"
        if self.tty:
            print("\r" + line, end="" if done < self.total else "\n", file=sys.stderr, flush=True)
        elif done % self.every == 0 or done == self.total:
            print(line, file=sys.stderr, flush=True)
        if self.label and done < self.total and done * 4 // self.total > (done - 1) * 4 // self.total:
            # stderr already has the line above: the quarter marks go to the status descriptor only
            status(f"{self.label}: step {done}/{self.total}, about {duration(eta)} left", stderr=False)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    world_dir: str | Path,
    tracker=None,
    *,
    device: str | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
) -> Path:
    """Train one run to completion (resuming if ``run_dir`` has checkpoints); returns ``run_dir/final``.

    ``tracker`` receives ``log_metrics(metrics, step)`` and ``commit(step)`` after every
    checkpoint (see ``workbench.tracking``); None logs nowhere but ``metrics.jsonl``.
    ``on_eval(step, result)`` receives each intermediate evaluation (every ``train.eval_every``
    steps, on ``eval.benchmarks``, before the last step), after that step's checkpoint is
    saved; an exception it raises (e.g. a pruned search trial) stops the run.
    """
    run_dir, world = Path(run_dir), World.open(world_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = METHODS.get(cfg.method)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    # Every (re)start seeds the global RNG alike. Load-bearing for resuming: the steps draw
    # only from their own seeds (gen, the SFT batch rng, the evaluation seed below), never
    # from this global stream, whose position after a resume differs from an unbroken run's.
    torch.manual_seed(cfg.seed)

    teacher = load_model(world.root / "teacher").to(device).requires_grad_(False)
    init_path = resolve_init(cfg, run_dir, world)
    start, student, opt_state = load_checkpoint(run_dir)
    student = (student if student is not None else load_model(init_path)).to(device)
    ref = load_model(init_path).to(device).requires_grad_(False) if cfg.needs_reference() else None
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.optim.lr, betas=ADAM_BETAS, weight_decay=cfg.optim.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)  # moves the state to the parameters' device
    if tracker is not None:
        tracker.truncate_after(start)
    label = run_label(cfg, run_dir)
    status(
        f"{label}: resuming from step {start}/{cfg.train.total_steps}"
        if start
        else f"{label}: training, {cfg.train.total_steps} steps"
    )

    steps, G = cfg.train.total_steps, cfg.rollout.group_size
    keep = {round(f * steps) for f in cfg.train.keep_checkpoints_at}
    setup = Setup(
        cfg=cfg,
        method=method,
        device=device,
        student=student,
        teacher=teacher,
        ref=ref,
        pool=world.train_pool(cfg.train.sources),
        sft_data=teacher_dataset(cfg, world, teacher, device) if method.family == "sft" else None,
        max_new=cfg.rollout.max_new_tokens or world.max_new_tokens(),
    )
    family_step = FAMILY_STEPS[method.family]
    progress = Progress(steps, label=label)
    student.train()

    for step in range(start, steps):
        stops.check()  # a stop Python dropped (it landed in a callback) ends the run here
        t_step = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        # Load-bearing for resuming: the step's sampling generator depends on (seed, step)
        # alone; the student's rollouts draw from it first, then the PTS teacher's.
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + step)

        # 1-4. The method family's step: sample (or batch), verify, score, advantage, token loss.
        out = family_step(setup, step, gen)
        loss, metrics = out.loss, dict(out.metrics)
        timing = {"sample": 0.0, "teacher": 0.0, "ref": 0.0, **out.timing}
        if cfg.pts.enabled:  # on-policy methods only: the SFT family fixes pts.enabled false
            # 5. Phased teacher sampling: a verified teacher anchor early in training.
            anchor, pts_metrics, teacher_seconds = pts_anchor(setup, step, gen, out.rollout.problems)
            metrics.update(pts_metrics)
            timing["teacher"] += teacher_seconds
            if anchor is not None:
                loss = loss + anchor

        # 6. Optimiser step (a non-finite loss stops the run before it corrupts weights).
        loss_value = float(loss.detach())
        check_finite(loss_value, step + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm))
        opt.step()

        # 7. Log (docs/algorithm.md section 10 names) and checkpoint.
        step_seconds = time.time() - t_step
        timing["update"] = step_seconds - timing["sample"] - timing["teacher"] - timing["ref"]
        metrics.update(
            {
                "train/loss": loss_value,
                "train/grad_norm": grad_norm,
                "perf/step_seconds": step_seconds,
                "perf/tokens_per_second": out.n_tokens / max(step_seconds, 1e-9),
                **{f"perf/{k}_seconds": v for k, v in timing.items()},
            }
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step=step + 1)
        progress.update(step, start, metrics)
        done = step + 1
        result = None
        if (
            cfg.train.eval_every
            and done % cfg.train.eval_every == 0
            and done < steps
            and (tracker is not None or on_eval is not None)
        ):
            # Intermediate evaluation (per-benchmark accuracy over training); the final
            # one is workbench.mini.runs'. Its seed (load-bearing for resuming) is the step's.
            result = evaluate(
                student,
                world.benchmarks(cfg.eval.benchmarks),
                n_samples=cfg.eval.n_samples,
                k=cfg.eval.k,
                temperature=cfg.eval.temperature,
                top_p=cfg.eval.top_p,
                max_new_tokens=cfg.eval.max_new_tokens or world.max_new_tokens(),
                seed=cfg.seed * 1_000_003 + done,
            )
            student.train()
            if tracker is not None:
                tracker.log_metrics(A.eval_metrics(result), step=done)
        if done == steps and method.family == "pg":
            write_case_study(run_dir / "casestudy.json", out.rollout, G, out.cls, out.adv)
        if done % cfg.train.checkpoint_every == 0 or done in keep or done == steps:
            save_checkpoint(run_dir, done, student, opt, keep)
            if tracker is not None:
                tracker.commit(done)
        if on_eval is not None and result is not None:
            # After the step's checkpoint: a stop here (a pruned trial) keeps what it covers.
            on_eval(done, result)

    final = run_dir / "final"
    with atomic_dir(final) as tmp:
        student.save_pretrained(str(tmp))
    return final
