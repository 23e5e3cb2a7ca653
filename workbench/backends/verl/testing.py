"""verl micro-batches in the v1 trainer's format (parity tests, benchmark); toy models (GPU smoke).

``make_batch`` draws a random batch and keeps both faces of it: the nested (jagged)
``TensorDict`` verl's ``distillation_ppo_loss`` receives (response tensors nested,
teacher and model log-probs over the whole prompt + response sequence), and padded
``[B, T]`` response tensors sliced here independently of verl, for ``workbench.algo``.
Imports verl and torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from tensordict import TensorDict

import workbench.algo as A


@dataclass
class Batch:
    plens: torch.Tensor  # [B] prompt lengths
    rlens: torch.Tensor  # [B] response lengths
    lp_full: torch.Tensor  # [sum(plens + rlens)] leaf: the model's log-probs (position p predicts token p + 1)
    teacher_full: torch.Tensor  # [sum(plens + rlens)] teacher log-probs, same layout
    lp_old: torch.Tensor  # [B, T]
    lp_ref: torch.Tensor | None  # [B, T]
    a_rl: torch.Tensor  # [B, T]
    is_w: torch.Tensor | None  # [B, T]
    anchor: torch.Tensor  # [B] bool
    global_tokens: int
    global_rows: int
    full_slice: slice = dataclasses.field(default_factory=lambda: slice(None))

    @property
    def width(self) -> int:
        return int(self.rlens.max())

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.width)[None, :] < self.rlens[:, None]

    def _index(self) -> torch.Tensor:
        """``[B, T]`` positions in the flat sequence layout of each response token's log-prob."""
        off = torch.cat([torch.zeros(1, dtype=torch.long), (self.plens + self.rlens).cumsum(0)[:-1]])
        idx = off[:, None] + self.plens[:, None] - 1 + torch.arange(self.width)[None, :]
        return torch.where(self.mask, idx, torch.zeros((), dtype=torch.long))

    def _gather(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, flat[self._index()], torch.zeros((), dtype=flat.dtype))

    @property
    def lp_new(self) -> torch.Tensor:
        return self._gather(self.lp_full)

    @property
    def lp_teacher(self) -> torch.Tensor:
        return self._gather(self.teacher_full)

    def scatter_to_full(self, grad_padded: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(self.lp_full)
        out.index_put_((self._index()[self.mask],), grad_padded[self.mask], accumulate=True)
        return out

    def replace(self, **kw) -> Batch:
        return dataclasses.replace(self, **kw)

    def tensordict(self, extra: Mapping[str, torch.Tensor] | None = None) -> tuple[TensorDict, dict]:
        """verl's micro-batch and ``model_output`` (log-probs with grad through a fresh leaf)."""
        from verl.utils import tensordict_utils as tu

        def nested(rows):
            return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)

        def resp(x):
            return nested(x[i, : int(n)] for i, n in enumerate(self.rlens))

        seq = (self.plens + self.rlens).tolist()
        off = [0]
        for s in seq:
            off.append(off[-1] + s)
        g = torch.Generator().manual_seed(0)
        td = {
            "prompts": nested(torch.randint(0, 100, (int(p),), generator=g) for p in self.plens),
            "responses": nested(torch.randint(0, 100, (int(r),), generator=g) for r in self.rlens),
            "response_mask": resp(self.mask.long()),
            "old_log_probs": resp(self.lp_old),
            "advantages": resp(self.a_rl),
            "teacher_logprobs": nested(self.teacher_full[off[i] : off[i + 1]][:, None] for i in range(len(seq))),
        }
        if self.lp_ref is not None:
            td["ref_log_prob"] = resp(self.lp_ref)
        if self.is_w is not None:
            td["rollout_is_weights"] = resp(self.is_w)
        for k, v in (extra or {}).items():
            td[k] = resp(v) if v.dim() == 2 else v
        data = TensorDict(td, batch_size=[len(self.plens)])
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=self.global_tokens, global_batch_size=self.global_rows)
        leaf = self.lp_full.detach().clone().requires_grad_(True)
        offsets = torch.tensor(off, dtype=torch.long)
        return data, {"log_probs": torch.nested.nested_tensor_from_jagged(leaf, offsets=offsets), "_leaf": leaf}


def make_batch(
    seed: int,
    n_rows: int = 12,
    *,
    is_weights: bool = True,
    n_anchor: int = 0,
    ratio_one: bool = False,
    with_ref: bool = True,
    max_prompt: int = 6,
    max_response: int = 9,
    group: int = 3,
) -> Batch:
    """A random batch: GRPO groups of ``group`` rows with 0/1 rewards, some exact-zero OPD
    tokens (neutral), ratios near 1, optional rollout-IS weights and trailing anchor rows."""
    g = torch.Generator().manual_seed(seed)
    plens = torch.randint(2, max_prompt + 1, (n_rows,), generator=g)
    rlens = torch.randint(1, max_response + 1, (n_rows,), generator=g)
    rlens[0] = max_response
    total = int((plens + rlens).sum())
    lp_full = -torch.rand(total, generator=g) * 3 - 0.01
    teacher_full = -torch.rand(total, generator=g) * 3 - 0.01
    anchor = torch.zeros(n_rows, dtype=torch.bool)
    if n_anchor:
        anchor[-n_anchor:] = True
    b = Batch(
        plens,
        rlens,
        lp_full,
        teacher_full,
        lp_old=torch.zeros(0),
        lp_ref=None,
        a_rl=torch.zeros(0),
        is_w=None,
        anchor=anchor,
        global_tokens=int(rlens.sum()),
        global_rows=n_rows,
    )
    mask = b.mask
    lp_new = b.lp_new
    noise = torch.zeros_like(lp_new) if ratio_one else torch.randn(lp_new.shape, generator=g) * 0.25
    lp_old = torch.where(mask & ~anchor[:, None], (lp_new + noise).clamp(max=-1e-3), lp_new)
    # exact-zero OPD advantage on some tokens: the teacher agrees with the rollout policy there
    idx = b._index()
    tie = mask & (torch.rand(mask.shape, generator=g) < 0.15)
    teacher_full = teacher_full.clone()
    teacher_full[idx[tie]] = lp_old[tie]
    rewards = (torch.rand(n_rows, generator=g) < 0.5).float()
    a_rows = A.grpo_advantage(rewards, torch.arange(n_rows) // group)
    a_rl = torch.where(mask, a_rows[:, None], torch.zeros(()))
    lp_ref = torch.where(mask, lp_new - torch.rand(lp_new.shape, generator=g) * 0.5, torch.zeros(())) if with_ref else None
    is_w = torch.where(mask, torch.rand(lp_new.shape, generator=g) * 1.8 + 0.1, torch.zeros(())) if is_weights else None
    return b.replace(
        teacher_full=teacher_full, lp_old=torch.where(mask, lp_old, torch.zeros(())), lp_ref=lp_ref, a_rl=a_rl, is_w=is_w
    )


def split(batch: Batch, bounds, extra: Mapping[str, torch.Tensor] | None = None) -> list[tuple[Batch, dict]]:
    """Micro-batches of rows ``bounds[i]:bounds[i+1]`` (global token count kept), with sliced ``extra``."""
    seq = (batch.plens + batch.rlens).tolist()
    starts = [0]
    for s in seq:
        starts.append(starts[-1] + s)
    out = []
    for a, z in itertools.pairwise(bounds):
        rows = slice(a, z)
        w = int(batch.rlens[rows].max())
        part = batch.replace(
            plens=batch.plens[rows],
            rlens=batch.rlens[rows],
            lp_full=batch.lp_full[starts[a] : starts[z]],
            teacher_full=batch.teacher_full[starts[a] : starts[z]],
            lp_old=batch.lp_old[rows, :w],
            lp_ref=None if batch.lp_ref is None else batch.lp_ref[rows, :w],
            a_rl=batch.a_rl[rows, :w],
            is_w=None if batch.is_w is None else batch.is_w[rows, :w],
            anchor=batch.anchor[rows],
            full_slice=slice(starts[a], starts[z]),
        )
        ex = {k: (v[rows, :w] if v.dim() == 2 else v[rows]) for k, v in (extra or {}).items()}
        out.append((part, ex))
    return out


@lru_cache(maxsize=1)
def actor_config():
    """verl's actor dataclass as verl's own config composes it (CPU, nothing downloaded)."""
    import os

    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from verl.utils.config import omega_conf_to_dataclass

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def distillation_config(loss_cfg):
    from verl.workers.config import DistillationConfig

    return DistillationConfig(enabled=False, distillation_loss=loss_cfg)


def run_verl(actor, dist, batch: Batch | tuple, extra: Mapping[str, torch.Tensor] | None = None):
    """verl's ``distillation_ppo_loss`` on ``batch``: ``(loss, grad over batch.lp_full, metrics)``."""
    from verl.trainer.distillation.losses import distillation_ppo_loss
    from verl.utils.metric import Metric

    if isinstance(batch, tuple):
        batch, extra = batch
    data, model_output = batch.tensordict(extra)
    leaf = model_output.pop("_leaf")
    loss, metrics = distillation_ppo_loss(actor, dist, model_output=model_output, data=data)
    loss.backward()
    flat = {k: (v.aggregate() if isinstance(v, Metric) else v) for k, v in metrics.items()}
    return loss.detach(), leaf.grad, flat


def reference_loss(batch: Batch, loss_cfg, rows: torch.Tensor | None = None) -> tuple[Any, Any, Any]:
    """``workbench.algo`` directly on the padded tensors: ``(loss, grad over lp_full, token_class)``."""
    m = batch.mask if rows is None else batch.mask & rows.to(torch.bool)[:, None]
    lp_ref = batch.lp_ref if batch.lp_ref is not None else batch.lp_old
    adv, cls, _ = A.route_advantage(batch.a_rl, batch.lp_old, batch.lp_teacher, lp_ref, m, **loss_cfg.route_kwargs())
    w = A.stability_weight(adv, batch.lp_old, m, mode=loss_cfg.stability_mode, clip=loss_cfg.stability_clip)
    weight = w * batch.is_w if batch.is_w is not None else w
    lp = batch.lp_new.detach().requires_grad_(True)
    loss, _ = A.ppo_clip_loss(
        lp, batch.lp_old, adv, weight, m, eps_low=loss_cfg.clip_ratio_low, eps_high=loss_cfg.clip_ratio_high
    )
    loss.backward()
    return loss.detach(), batch.scatter_to_full(lp.grad), cls


def probe_target_registration() -> tuple[bool, bool, float, float, int]:
    """Run in a fresh process: building the loss config from a ``_target_`` node imports and
    registers the loss, which then runs inside verl's ``distillation_ppo_loss``.
    Returns ``(registered before, registered after, lambda_high, loss, pid)``."""
    import os
    import sys

    from omegaconf import OmegaConf
    from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY
    from verl.utils.config import omega_conf_to_dataclass

    before = "sgopd" in DISTILLATION_LOSS_REGISTRY or "workbench.backends.verl.loss" in sys.modules
    node = OmegaConf.create(
        {
            "_target_": "workbench.backends.verl.loss.SGOPDLossConfig",
            "loss_mode": "sgopd",
            "use_policy_gradient": True,
            "use_task_rewards": False,
            "lambda_high": 1.5,
        }
    )
    cfg = omega_conf_to_dataclass(node)
    loss, _, _ = run_verl(actor_config(), distillation_config(cfg), make_batch(seed=5, n_rows=6))
    return before, "sgopd" in DISTILLATION_LOSS_REGISTRY, cfg.lambda_high, float(loss), os.getpid()


def probe_env_registration() -> tuple[bool, bool, int]:
    """Run in a fresh process: what ``import verl`` registered (``VERL_USE_EXTERNAL_MODULES``)."""
    import os

    import verl  # noqa: F401
    from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY

    try:
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
    except ImportError:  # no TransferQueue
        TRAINER_REGISTRY = {}
    return "sgopd" in DISTILLATION_LOSS_REGISTRY, "sgopd_sync" in TRAINER_REGISTRY, os.getpid()


# -- toy models and data for the GPU smoke test (make gpu-smoke) ---------------------------------
#
# Real Qwen3 checkpoints with toy sizes and a byte-level tokenizer with a chat template, all
# built offline. A few CPU steps teach the teacher to answer every toy problem right and the
# student about half the time, so the smoke run sees mixed rewards (non-zero GRPO advantages),
# a teacher that disagrees with the student, and PTS anchors that pass the verifier.

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: head_dim 64: a size every vLLM attention backend supports.
TOY_SIZES = {
    "student": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 256,
    },
    "teacher": {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
    },
}
TOY_ANSWER = "1"
#: what each toy model learns to answer (the student: right half the time)
TOY_TARGETS = {"teacher": ["\\boxed{1}"], "student": ["\\boxed{1}", "\\boxed{2}"]}


def toy_tokenizer():
    """A byte-level BPE tokenizer with no merges (every UTF-8 text encodes), Qwen's chat
    special tokens and a Qwen-style chat template; ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT, IM_START, IM_END])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=EOT, model_max_length=4096, clean_up_tokenization_spaces=False
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def toy_problems(n: int, seed: int = 0) -> list[dict]:
    """``n`` toy problems (``id``, ``problem``, ``answer``), every answer ``TOY_ANSWER``."""
    rng = random.Random(f"toy:{seed}")
    out = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append({"id": f"toy-{seed}-{i}", "problem": f"What is {a} * {b} - {a * b - 1}?", "answer": TOY_ANSWER})
    return out


def _toy_config(role: str, tokenizer):
    from transformers import Qwen3Config

    size = TOY_SIZES[role]
    return Qwen3Config(
        vocab_size=len(tokenizer),
        head_dim=64,
        max_position_embeddings=2048,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=True,
        layer_types=["full_attention"] * size["num_hidden_layers"],
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **size,
    )


def fit_toy_model(
    model, tokenizer, prompts: list[str], targets: list[str], *, steps: int, seed: int, lr: float = 3e-3, batch_size: int = 8
) -> list[float]:
    """A few Adam steps of next-token loss on ``chat(prompt) + target + <|im_end|>`` (response tokens only)."""
    rng = random.Random(seed)
    heads = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    p_all = [tokenizer(h, add_special_tokens=False)["input_ids"] for h in heads]
    r_all = [tokenizer(t + IM_END, add_special_tokens=False)["input_ids"] for t in targets]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        rows = [(rng.choice(p_all), rng.choice(r_all)) for _ in range(batch_size)]
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(r)
            mask[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def save_toy_model(out, role: str, *, seed: int = 0, steps: int = 60, tokenizer=None) -> dict:
    """A toy Qwen3 ``role`` ("student" or "teacher") with its tokenizer in ``out`` (bf16
    safetensors, as a hub snapshot); returns a summary (parameters, fit losses)."""
    from pathlib import Path

    from transformers import GenerationConfig, Qwen3ForCausalLM

    tokenizer = tokenizer or toy_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + (0 if role == "student" else 1000))
        model = Qwen3ForCausalLM(_toy_config(role, tokenizer)).float()
        prompts = [
            p["problem"] + "\n" + "Please reason step by step, and put your final answer within \\boxed{}."
            for p in toy_problems(32, seed=seed)
        ]
        losses = fit_toy_model(model, tokenizer, prompts, TOY_TARGETS[role], steps=steps, seed=seed) if steps else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {
        "path": str(out),
        "role": role,
        "parameters": n,
        "fit_loss_first": losses[0] if losses else None,
        "fit_loss_last": losses[-1] if losses else None,
    }
