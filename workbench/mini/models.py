"""Tiny decoder-only Hugging Face models for the miniature world.

Real ``Qwen3ForCausalLM`` instances with toy dimensions and random init, so a mini
checkpoint is saved / loaded exactly like a real one
(``AutoModelForCausalLM.from_pretrained(dir)``) and the trainer needs no special path.

Size presets (parameters with the 21-token vocabulary, tied embeddings):

=============  ======  =====  ======  =====  ========
preset         hidden  layers heads   ffn    params
=============  ======  =====  ======  =====  ========
teacher        128     4      4x32    512    ~1.05M
student        56      2      4x14    168    ~83K
smoke-teacher  32      2      2x16    64     ~21K
smoke-student  16      1      2x8     32     ~3K
=============  ======  =====  ======  =====  ========
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    head_dim: int
    ffn: int
    kv_heads: int | None = None  # None: no grouped-query attention


SIZE_PRESETS: dict[str, ModelSize] = {
    "teacher": ModelSize(hidden=128, layers=4, heads=4, head_dim=32, ffn=512),
    "student": ModelSize(hidden=56, layers=2, heads=4, head_dim=14, ffn=168),
    "smoke-teacher": ModelSize(hidden=32, layers=2, heads=2, head_dim=16, ffn=64),
    "smoke-student": ModelSize(hidden=16, layers=1, heads=2, head_dim=8, ffn=32),
}

#: Longest sequence (prompt + response) the models are configured for; the longest mini
#: problem is well under 100 tokens.
MAX_POSITIONS = 256


def make_config(size: ModelSize | str):
    """A ``Qwen3Config`` for the mini vocabulary and the given size (preset name or spec)."""
    from transformers import Qwen3Config

    if isinstance(size, str):
        size = resolve_size(size)
    n_layers = size.layers
    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads or size.heads,
        head_dim=size.head_dim,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=True,
        initializer_range=0.02,
        attention_dropout=0.0,
        use_cache=True,
        layer_types=["full_attention"] * n_layers,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def resolve_size(name: str) -> ModelSize:
    try:
        return SIZE_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown mini model size {name!r}; valid: {sorted(SIZE_PRESETS)}") from None


def build_model(size: ModelSize | str, seed: int):
    """Randomly initialised ``Qwen3ForCausalLM`` (float32, eval mode), init seeded by ``seed``.

    Eager attention: with left padding, SDPA can turn fully masked pad rows into NaNs on
    some versions; at these sizes eager costs nothing extra.
    """
    from transformers import Qwen3ForCausalLM

    cfg = make_config(size)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    return model.float().eval()


def load_model(path):
    """Load a saved mini model (or any causal LM) with eager attention, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
