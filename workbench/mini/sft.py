"""Plain teacher-forced SFT: how ``workbench.mini.prepare`` trains the world's teacher and
student (their schedules: ``workbench.mini.world.WorldSFT``). The grid's SFT-family
methods are the trainer's (``workbench.mini.trainer``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from workbench import stops

from .tokenizer import PAD_ID
from .world import WorldSFT


def make_batch(pairs: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(prompt_ids, response_ids[, response_loss_mask])]`` -> ``input_ids [B, T]``
    right-padded, ``labels [B, T]`` (already shifted: ``labels[:, t]`` is the target of
    position ``t``; -100 outside the response and where the mask is False)."""
    T = max(len(pr[0]) + len(pr[1]) for pr in pairs)
    ids = torch.full((len(pairs), T), PAD_ID, dtype=torch.long)
    labels = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (p, r, *m) in enumerate(pairs):
        seq = p + r
        ids[i, : len(seq)] = torch.as_tensor(seq)
        # position t predicts seq[t+1]; supervise only the (unmasked) response tokens
        target = torch.as_tensor(r)
        if m:
            target = target.masked_fill(~torch.as_tensor(m[0], dtype=torch.bool), -100)
        labels[i, len(p) - 1 : len(seq) - 1] = target
    return ids, labels


def sft_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over supervised positions. Right padding needs no attention
    mask under causal attention (real tokens never see the pads after them)."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def sft_train(
    model,
    pairs_iter: Iterator[tuple],
    cfg: WorldSFT,
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
        stops.check()  # a stop Python dropped (see workbench.stops)
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
