"""Build the miniature world: data files, tokenizer, SFT-trained teacher and student.

``prepare(out_dir, seed=0, scale="mini")`` writes::

    out_dir/
      manifest.json             config, config hash, accuracies, parameter counts, timings
      data/train_A.jsonl        RL training-prompt pools, one per source
      data/train_B.jsonl
      data/validation.jsonl     hyper-parameter search split
      data/bench{1..4}.jsonl    held-out benchmarks (rising difficulty)
      tokenizer/                HF tokenizer (AutoTokenizer.from_pretrained)
      teacher/                  HF Qwen3ForCausalLM + tokenizer (AutoModelForCausalLM)
      student/                  same, the untrained student (``student-init``)

The teacher is SFT'd on its canonical solutions (leftmost multiplication first, one
operation per step); the student is a smaller model SFT'd on its *own* style (mostly the
other order, frequent two-operation shortcuts): a weak student whose trajectories differ
from the teacher's at cold start. Design notes and measurements: docs/mini-world.md.

Also here, because the trainer reuses them: :func:`generate` (batched KV-cache sampling),
:func:`evaluate_accuracy` and :func:`sft_train`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.errors import UserError
from workbench.status import duration, status

from .models import build_model, count_params, load_model
from .task import Problem, Style, get_task, verify, write_jsonl
from .tokenizer import CODEC, EOS_ID, PAD_ID, save_tokenizer

WORLD_VERSION = 1  # bump when data generation or training semantics change


# --------------------------------------------------------------------------------------
# generation


@torch.no_grad()
def generate(
    model,
    prompt_ids_list: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> list[list[int]]:
    """Batched autoregressive generation with a KV cache.

    Args:
        prompt_ids_list: ``B`` prompts (token-id lists, BOS included), any lengths.
        max_new_tokens: cap on generated tokens per sequence.
        temperature, top_p: sampling distribution (ignored when ``greedy``).
        generator: torch RNG for reproducible sampling.

    Returns:
        ``B`` lists of generated ids; each stops after (and includes) its first EOS, or is
        ``max_new_tokens`` long when no EOS came. No padding.

    Prompts are left-padded to a common length ``P`` (attention mask ``[B, P]``, explicit
    position ids so padding does not shift RoPE positions); each step feeds ``[B, 1]``
    new tokens with the growing mask. Finished rows keep feeding PAD (their output is
    discarded) until all rows are done.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    B = len(prompt_ids_list)
    if B == 0:
        return []
    P = max(len(p) for p in prompt_ids_list)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompt_ids_list):
        ids[i, P - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        attn[i, P - len(p) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)

    cache_kw = _cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    past = getattr(out, cache_kw)
    logits = out.logits[:, -1, :]
    next_pos = pos[:, -1] + 1  # [B]

    done = torch.zeros(B, dtype=torch.bool, device=device)
    gen = torch.empty((B, max_new_tokens), dtype=torch.long, device=device)
    n = 0
    for n in range(1, max_new_tokens + 1):
        tok = _pick_tokens(logits, temperature, top_p, greedy, generator)  # [B]
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        gen[:, n - 1] = tok
        done = done | (tok == eos_id)
        if bool(done.all()) or n == max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None], use_cache=True, **{cache_kw: past}
        )
        past = getattr(out, cache_kw)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1

    if was_training:
        model.train()
    rows = gen[:, :n].tolist()
    result = []
    for r in rows:
        if eos_id in r:
            r = r[: r.index(eos_id) + 1]
        result.append(r)
    return result


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x renamed ``past_key_values`` to ``cache`` (argument and output)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pick_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, greedy: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """``logits [B, V]`` -> token ids ``[B]`` (argmax, or temperature / nucleus sampling)."""
    if greedy or temperature <= 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always >= 1 token)
        keep = (sp.cumsum(-1) - sp) < top_p
        sp = sp * keep
        choice = torch.multinomial(sp, 1, generator=generator)
        return si.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_no_cache(model, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: int = EOS_ID) -> list[int]:
    """Reference greedy decoding of ONE prompt without cache or padding (slow; for tests)."""
    seq = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        t = int(logits.argmax())
        out.append(t)
        seq.append(t)
        if t == eos_id:
            break
    return out


def max_response_tokens(problems: Sequence[Problem], slack: int = 16) -> int:
    """Token budget for responses: the longest reference solution plus slack (room for a
    wandering student, bounded so that garbage terminates)."""
    return max(len(p.solution) for p in problems) + 1 + slack


@torch.no_grad()
def evaluate_accuracy(
    model,
    problems: Sequence[Problem],
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    k: int = 1,
    batch_size: int = 512,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> dict:
    """Accuracy of ``model`` on ``problems``.

    Returns ``{"acc": mean over problems and samples, "per_problem": [c_i / k ...],
    "n": len(problems), "k": k}``; greedy decoding uses ``k = 1``. Sampling is
    reproducible from ``seed``.
    """
    if greedy:
        k = 1
    max_new = max_new_tokens or max_response_tokens(problems)
    g = torch.Generator().manual_seed(seed)
    flat = [p for p in problems for _ in range(k)]
    correct = []
    for s in range(0, len(flat), batch_size):
        chunk = flat[s : s + batch_size]
        outs = generate(
            model,
            [CODEC.encode_prompt(p.prompt) for p in chunk],
            max_new,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            generator=g,
        )
        correct += [verify(p, CODEC.decode(o)) for p, o in zip(chunk, outs)]
    per_problem = [sum(correct[i * k : (i + 1) * k]) / k for i in range(len(problems))]
    return {"acc": sum(per_problem) / max(1, len(per_problem)), "per_problem": per_problem, "n": len(problems), "k": k}


# --------------------------------------------------------------------------------------
# SFT


@dataclass(frozen=True)
class SFTConfig:
    """Plain teacher-forced SFT (AdamW, linear warmup, cosine decay to ``lr * min_lr_frac``)."""

    steps: int
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_frac: float = 0.05
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bucket: int = 16  # batches drawn at once and length-sorted (less padding)


def make_batch(pairs: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(prompt_ids, response_ids)]`` -> ``input_ids [B, T]`` right-padded, ``labels [B, T]``
    (already shifted: ``labels[:, t]`` is the target of position ``t``; -100 outside the
    response)."""
    T = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), T), PAD_ID, dtype=torch.long)
    labels = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (p, r) in enumerate(pairs):
        seq = p + r
        ids[i, : len(seq)] = torch.as_tensor(seq)
        # position t predicts seq[t+1]; supervise only the response tokens
        labels[i, len(p) - 1 : len(seq) - 1] = torch.as_tensor(r)
    return ids, labels


def sft_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over supervised positions. Right padding needs no attention
    mask under causal attention (real tokens never see the pads after them)."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def sft_train(
    model,
    pairs_iter: Iterator[tuple[list[int], list[int]]],
    cfg: SFTConfig,
    seed: int,
    log=None,
    callback=None,
    callback_every: int = 0,
) -> list[dict]:
    """Train ``model`` in place for ``cfg.steps`` steps on an endless iterator of
    ``(prompt_ids, response_ids)`` pairs. Returns a small log (every ~10% of training).

    ``callback(step, model) -> dict | None`` runs every ``callback_every`` steps (model in
    eval mode meanwhile); what it returns is merged into the log."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        f = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * f)))

    model.train()
    history = []
    queue: list[list[tuple[list[int], list[int]]]] = []
    t0 = time.time()
    run_loss = None
    every = max(1, cfg.steps // 10)
    for step in range(cfg.steps):
        if not queue:
            block = [next(pairs_iter) for _ in range(cfg.batch_size * cfg.bucket)]
            block.sort(key=lambda pr: len(pr[0]) + len(pr[1]))
            queue = [block[i : i + cfg.batch_size] for i in range(0, len(block), cfg.batch_size)]
            rng.shuffle(queue)
        ids, labels = make_batch(queue.pop())
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = sft_loss(model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        v = loss.item()
        run_loss = v if run_loss is None else 0.95 * run_loss + 0.05 * v
        extra = None
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            model.eval()
            extra = callback(step + 1, model)
            model.train()
        if (step + 1) % every == 0 or step + 1 == cfg.steps or extra:
            rec = {"step": step + 1, "loss": round(run_loss, 4), "seconds": round(time.time() - t0, 1), **(extra or {})}
            history.append(rec)
            if log:
                log(rec)
    model.eval()
    return history


# --------------------------------------------------------------------------------------
# world configuration


#: canonical: leftmost product first, one operation per step
TEACHER_STYLE = Style()
#: the student's own "pre-training" style: mostly the other order, frequent shortcuts
STUDENT_STYLE = Style(order="right", order_p=0.75, skip=0.4)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the prepared world (hashed into the manifest)."""

    task: str = "arith"
    bench_size: int = 100
    val_size: int = 200
    pool_size: int = 4000  # RL prompts per training source
    teacher_size: str = "teacher"
    student_size: str = "student"
    teacher_sft: SFTConfig = SFTConfig(steps=1400, batch_size=128, lr=3e-3, warmup=50)
    # the student is small and cheap: 4000 short steps (~2 min) teach it single-step
    # arithmetic, but its own style (shortcuts, other order) keeps it weak
    student_sft: SFTConfig = SFTConfig(steps=4000, batch_size=64, lr=3e-3, warmup=50)
    teacher_style: Style = TEACHER_STYLE
    student_style: Style = STUDENT_STYLE
    eval_sample_k: int = 4  # samples per problem for the T=1.0 accuracy report
    eval_train_size: int = 400  # problems drawn from the training distribution for eval
    eval_max_new_tokens: int | None = None  # None: longest benchmark solution + slack


SCALES: dict[str, WorldConfig] = {
    "mini": WorldConfig(),
    # tiny models, few steps: exercises every code path in seconds; accuracies meaningless
    "smoke": WorldConfig(
        bench_size=6,
        val_size=8,
        pool_size=40,
        teacher_size="smoke-teacher",
        student_size="smoke-student",
        teacher_sft=SFTConfig(steps=6, batch_size=16, warmup=2, bucket=2),
        student_sft=SFTConfig(steps=4, batch_size=16, warmup=2, bucket=2),
        eval_sample_k=1,
        eval_train_size=8,
        eval_max_new_tokens=12,
    ),
}


def _hash(obj) -> str:
    blob = json.dumps({"version": WORLD_VERSION, **obj}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_hash(cfg: WorldConfig, seed: int) -> str:
    """Hash of everything that determines the world."""
    return _hash({"seed": seed, "cfg": asdict(cfg)})


_ROLE_FIELDS = {
    "teacher": ("teacher_size", "teacher_sft", "teacher_style"),
    "student": ("student_size", "student_sft", "student_style"),
}
# fields that change the task data (held-out prompts are skipped by training streams)
_TASK_FIELDS = ("task", "bench_size", "val_size")


def role_hash(cfg: WorldConfig, seed: int, role: str) -> str:
    """Hash of what determines one trained model *and its accuracy report*: changing the
    student's recipe does not retrain the teacher (and vice versa)."""
    d = asdict(cfg)
    keys = _TASK_FIELDS + _ROLE_FIELDS[role] + ("eval_sample_k", "eval_train_size", "eval_max_new_tokens")
    return _hash({"seed": seed, "role": role, **{k: d[k] for k in keys}})


# --------------------------------------------------------------------------------------
# prepare


def _pairs(task, sources: Sequence[str], stream_seed: str, style: Style, seed: int) -> Iterator[tuple[list[int], list[int]]]:
    """Endless ``(prompt_ids, response_ids)`` SFT pairs written in ``style``."""
    rng = random.Random(f"pairs:{seed}:{stream_seed}")
    for p in task.stream(list(sources), stream_seed):
        yield CODEC.encode_prompt(p.prompt), CODEC.encode_response(style.render(p, rng))


def _accuracy_report(
    model, benches: dict[str, list[Problem]], train_eval: list[Problem], k: int, seed: int, max_new: int
) -> dict:
    rep: dict = {"greedy": {}, "sampled_t1": {}}
    for name, probs in [("train_dist", train_eval)] + list(benches.items()):
        rep["greedy"][name] = round(evaluate_accuracy(model, probs, greedy=True, max_new_tokens=max_new)["acc"], 4)
        rep["sampled_t1"][name] = round(
            evaluate_accuracy(model, probs, greedy=False, temperature=1.0, k=k, seed=seed, max_new_tokens=max_new)["acc"], 4
        )
    for mode in ("greedy", "sampled_t1"):
        rep[mode]["bench_avg"] = round(sum(rep[mode][b] for b in benches) / len(benches), 4)
    return rep


def prepare(
    out_dir: str | Path,
    *,
    seed: int = 0,
    scale: str = "mini",
    overrides: dict | None = None,
    force: bool = False,
    verbose: bool = False,
) -> dict:
    """Build (or reuse) the miniature world in ``out_dir``; returns the manifest dict.

    ``overrides``: ``WorldConfig`` fields to replace (e.g. ``{"student_sft": SFTConfig(...)}``).
    If ``out_dir/manifest.json`` exists with the same config hash (and not ``force``),
    nothing is rebuilt. Everything is written to a sibling temp dir first and renamed into
    place, so a crash never leaves a half-written world behind a valid manifest.
    """
    if scale not in SCALES:
        raise KeyError(f"unknown scale {scale!r}; valid: {sorted(SCALES)}")
    cfg = SCALES[scale]
    if overrides:
        cfg = replace(cfg, **overrides)
    h = config_hash(cfg, seed)
    out_dir = Path(out_dir)
    man_path = out_dir / "manifest.json"
    old_man = _read_manifest(man_path)
    if old_man and not force:
        man = old_man
        if man.get("config_hash") == h:
            if verbose:
                status(f"prepare: the {scale} world in {out_dir} is up to date (hash {h}), nothing to do")
            return man
    _check_out_dir(out_dir)  # a rebuild replaces out_dir: only if it holds a world and nothing else

    torch.set_num_threads(min(2, torch.get_num_threads()))
    log = (lambda *a: print("[mini.prepare]", *a, flush=True)) if verbose else None
    say = status if verbose else (lambda *a, **k: None)
    say(
        f"prepare: building the {scale} world in {out_dir} "
        f"(SFT of the teacher, {cfg.teacher_sft.steps} steps, and the student, {cfg.student_sft.steps} steps)"
    )
    t_start = time.time()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise UserError(f"cannot build a world in {out_dir}: {e.strerror or e}; pick a writable --out") from None
    try:
        task = get_task(cfg.task, seed=seed, bench_size=cfg.bench_size, val_size=cfg.val_size)
        (tmp / "data").mkdir()
        benches = task.benchmarks()
        for name, probs in benches.items():
            write_jsonl(tmp / "data" / f"{name}.jsonl", probs)
        write_jsonl(tmp / "data" / "validation.jsonl", task.validation())
        for src in task.sources:
            write_jsonl(tmp / "data" / f"train_{src}.jsonl", task.train_pool(src, cfg.pool_size))
        tokenizer = save_tokenizer(tmp / "tokenizer")
        # a fresh sample of the training distribution (never used for training)
        train_eval_stream = task.stream(list(task.sources), "eval")
        train_eval = [next(train_eval_stream) for _ in range(cfg.eval_train_size)]

        old_models: dict = old_man.get("models", {}) if old_man and not force else {}
        models_info = {}
        for role, size, sft_cfg, style in (
            ("teacher", cfg.teacher_size, cfg.teacher_sft, cfg.teacher_style),
            ("student", cfg.student_size, cfg.student_sft, cfg.student_style),
        ):
            rh = role_hash(cfg, seed, role)
            if old_models.get(role, {}).get("hash") == rh and (out_dir / role).is_dir():
                # same recipe in the previous world: reuse the trained model as is
                shutil.copytree(out_dir / role, tmp / role)
                models_info[role] = {**old_models[role], "reused": True}
                if log:
                    log(role, "reused from the previous world (same recipe)")
                say(f"prepare: {role} reused from the previous world (same recipe)")
                continue
            t0 = time.time()
            model = build_model(size, seed=seed * 1000 + (1 if role == "teacher" else 2))
            pairs = _pairs(task, list(task.sources), f"sft-{role}", style, seed)

            def on_log(r, role=role, total=sft_cfg.steps):
                log(role, r)
                # The log has the full record; the terminal gets a line every 10% of the steps.
                say(f"prepare: training {role} (step {r['step']}/{total}, {duration(r['seconds'])})", stderr=False)

            hist = sft_train(model, pairs, sft_cfg, seed=seed * 1000 + 7, log=on_log if log else None)
            train_s = time.time() - t0
            say(f"prepare: evaluating {role}")
            max_new = cfg.eval_max_new_tokens or max_response_tokens([p for ps in benches.values() for p in ps])
            acc = _accuracy_report(model, benches, train_eval, cfg.eval_sample_k, seed, max_new)
            model.save_pretrained(str(tmp / role))
            tokenizer.save_pretrained(str(tmp / role))
            models_info[role] = {
                "hash": rh,
                "reused": False,
                "params": count_params(model),
                "size": size,
                "train_seconds": round(train_s, 1),
                "eval_seconds": round(time.time() - t0 - train_s, 1),
                "sft_log": hist,
                "accuracy": acc,
            }
            if log:
                log(role, models_info[role]["accuracy"], f"{train_s:.0f}s")

        manifest = {
            "world_version": WORLD_VERSION,
            "config_hash": h,
            "seed": seed,
            "scale": scale,
            "config": asdict(cfg),
            "benchmarks": {
                b.name: {"stands_for": b.stands_for, "n_ops": b.level.n_ops, "size": b.size} for b in task.benchmarks_spec
            },
            "sources": {n: s.description for n, s in task.sources.items()},
            "models": models_info,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "wall_seconds": round(time.time() - t_start, 1),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        # swap in atomically: rename the old world away first, then the new one in
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / "w")
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
        say(f"prepare: world ready in {out_dir} ({duration(time.time() - t_start)})")
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# What a world directory holds (above, plus the trainer's teacher_data/ cache): prepare
# replaces a directory only if it holds a world and nothing else.
_WORLD_ENTRIES = {"manifest.json", "data", "tokenizer", "teacher", "student", "teacher_data"}


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file, or holds anything but a world (``--out results``
    would otherwise replace the MLflow store and every run)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a directory for the world")
    if not out_dir.is_dir():
        return
    names = {p.name for p in out_dir.iterdir()}
    if names and "manifest.json" not in names:
        raise UserError(
            f"--out {out_dir} is not empty and holds no world (no manifest.json); prepare only "
            "replaces a world it built: give an empty or new directory"
        )
    other = sorted(names - _WORLD_ENTRIES)
    if other:
        raise UserError(
            f"--out {out_dir} holds a world and other files ({', '.join(other[:3])}), which a rebuild "
            "would delete; move them out or give another directory"
        )


def _read_manifest(path: Path) -> dict | None:
    """The manifest, or None where there is none or it is unreadable (the world is rebuilt)."""
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) else None


def load_world(out_dir: str | Path) -> dict:
    """Manifest plus loaded models and problem splits of a prepared world (for scripts)."""
    from .task import read_jsonl

    out_dir = Path(out_dir)
    man = json.loads((out_dir / "manifest.json").read_text())
    data = out_dir / "data"
    return {
        "manifest": man,
        "teacher": load_model(out_dir / "teacher"),
        "student": load_model(out_dir / "student"),
        "benchmarks": {n: read_jsonl(data / f"{n}.jsonl") for n in man["benchmarks"]},
        "validation": read_jsonl(data / "validation.jsonl"),
        "train": {s: read_jsonl(data / f"train_{s}.jsonl") for s in man["sources"]},
    }
