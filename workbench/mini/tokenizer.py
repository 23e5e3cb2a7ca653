"""Character-level tokenizer of the miniature world, shared by student and teacher.

One token per character of the task alphabet (digits, ``+ - *``, ``=`` ending the prompt,
``;`` ending a worked step, ``#`` introducing the final answer, ``!`` retracting the step
just written) plus four specials.
Two faces of the same vocabulary:

* :func:`build_hf_tokenizer` / :func:`save_tokenizer`: a Hugging Face
  ``PreTrainedTokenizerFast`` (``AutoTokenizer.from_pretrained`` loads it back), so that a
  mini checkpoint directory looks like a real one;
* :class:`CharCodec` (and the module-level :data:`CODEC`): plain-python encode/decode used
  in hot loops (rollouts, reward), where calling the HF tokenizer would dominate the cost.

Both use the fixed table :data:`VOCAB`, so ids agree by construction (tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
ALPHABET = "0123456789+-*=;#!"  # appended last: earlier ids never move

#: token -> id; specials first so that PAD is 0.
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS + tuple(ALPHABET))}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIALS)
VOCAB_SIZE = len(VOCAB)


class CharCodec:
    """Fast char <-> id conversion (no HF machinery).

    ``encode_prompt(s)`` -> ``[BOS] + ids(s)``; ``encode_response(s)`` -> ``ids(s) + [EOS]``;
    ``decode(ids)`` drops specials and stops at the first EOS.
    """

    def __init__(self) -> None:
        self.stoi = {c: VOCAB[c] for c in ALPHABET}
        self.itos = {i: c for c, i in VOCAB.items()}
        self.special_ids = frozenset(VOCAB[t] for t in SPECIALS)
        # list lookup is the fastest decode path in CPython
        self._itos_list = ["" if i in self.special_ids else self.itos[i] for i in range(VOCAB_SIZE)]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the mini alphabet {ALPHABET!r}")

    def encode_prompt(self, text: str) -> list[int]:
        return [BOS_ID] + self.encode(text)

    def encode_response(self, text: str) -> list[int]:
        return self.encode(text) + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to (excluding) the first EOS; PAD/BOS/UNK are dropped."""
        out = []
        table = self._itos_list
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            out.append(table[i])
        return "".join(out)


CODEC = CharCodec()


def build_hf_tokenizer():
    """A ``transformers.PreTrainedTokenizerFast`` over :data:`VOCAB`.

    Built with the ``tokenizers`` library: a BPE model with no merges splits any text into
    single characters (no pre-tokenizer needed); a template post-processor prepends BOS
    when ``add_special_tokens=True``, mirroring :meth:`CharCodec.encode_prompt`.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)])
    # Fuse decoder: concatenates characters without inserting spaces.
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",  # generation-style batches
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(out_dir: str | Path):
    """Write the HF tokenizer files into ``out_dir``; returns the tokenizer."""
    tok = build_hf_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
