"""Sampling from a mini model: batched KV-cache generation, shared by world building, the
trainer's rollouts and evaluation.

Reproducibility rests on the ``generator`` argument: every random draw of a call comes
from it, in order, one ``[B]`` draw per generated position (the trainer relies on this
to resume bit for bit, ``workbench.mini.trainer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench import stops

from .task import Problem
from .tokenizer import EOS_ID, PAD_ID


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
    position ids so padding does not shift RoPE positions); each step feeds one new token
    per unfinished row. Finished rows leave the model's batch (and the KV cache) at once:
    rollout lengths vary widely, and decoding every row to the longest one wasted most of
    the forwards. The random stream does not notice: every step still draws for all ``B``
    rows (a finished row's draw is discarded), so a row's tokens do not depend on when the
    others finish.
    """
    stops.check()  # every evaluation and teacher-data loop passes here (see workbench.stops)
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
    logits = out.logits[:, -1, :].clone()  # [B, V]; rows of finished sequences go stale, unused
    next_pos = pos[:, -1] + 1  # [A], A = the unfinished rows, ``active``
    active = torch.arange(B, device=device)

    done = torch.zeros(B, dtype=torch.bool, device=device)
    gen = torch.empty((B, max_new_tokens), dtype=torch.long, device=device)
    n = 0
    for n in range(1, max_new_tokens + 1):
        tok = _pick_tokens(logits, temperature, top_p, greedy, generator)  # [B]: one draw per row
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        gen[:, n - 1] = tok
        done = done | (tok == eos_id)
        if bool(done.all()) or n == max_new_tokens:
            break
        still = ~done[active]
        if not bool(still.all()):
            keep = still.nonzero().squeeze(-1)
            past.batch_select_indices(keep)
            active, attn, next_pos = active[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, torch.ones((len(active), 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[active][:, None],
            attention_mask=attn,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{cache_kw: past},
        )
        past = getattr(out, cache_kw)
        logits[active] = out.logits[:, -1, :]
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


def max_response_tokens(problems: Sequence[Problem], slack: int = 32) -> int:
    """Token budget for responses: the longest reference solution plus slack (room for a
    retraction or two and a wandering student, bounded so that garbage terminates)."""
    return max(len(p.solution) for p in problems) + 1 + slack
