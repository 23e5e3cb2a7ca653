"""Tests of the miniature world (task, verifier, tokenizer, models, prepare, generation).

Fast: the only training is the ``smoke`` preset (tiny models, a few steps), shared by a
module-scoped fixture.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

torch.set_num_threads(2)

from workbench.mini import task as T
from workbench.mini.evaluate import evaluate_accuracy
from workbench.mini.models import build_model, count_params
from workbench.mini.prepare import WORLD_THREADS, prepare
from workbench.mini.sampling import generate, generate_no_cache
from workbench.mini.sft import make_batch
from workbench.mini.tokenizer import (
    BOS_ID,
    CODEC,
    EOS_ID,
    PAD_ID,
    VOCAB,
    VOCAB_SIZE,
    save_tokenizer,
)
from workbench.registry import UnknownNameError

# ---------------------------------------------------------------------------------------
# task and verifier


def test_solution_worked_steps():
    assert T.solve("37+42*6-5=") == "37+252-5;289-5;284;#284"
    # teacher order: leftmost product first; student order: rightmost product first
    assert T.solve("3*4+5*6=") == "12+5*6;12+30;42;#42"
    assert T.solve("3*4+5*6=", order="right") == "3*4+30;12+30;42;#42"
    # +/- strictly left to right in both orders (8-3+2 is 7, not 3)
    assert T.solve("8-3+2=", order="right") == "5+2;7;#7"
    assert T.solve("5=") == "#5"
    assert T.evaluate("2*3*4-20+1=") == 5


@pytest.mark.parametrize(
    "response, ok",
    [
        ("37+252-5;289-5;284;#284", True),  # reference solution
        ("37+252-5;2!289-5;284;#284", True),  # a retracted slip
        ("#284", True),  # steps are not graded, only the answer
        ("1+1;#284", True),  # outcome reward only
        ("37+252-5;289-5;#285", False),  # wrong answer
        ("37+252-5;289-5;#2840", False),  # extra digit
        ("37+252-5;289-5;284", False),  # missing marker
        ("37+252-5;289-5;#", False),  # empty answer
        ("#284#284", False),  # two markers
        ("#284;", False),  # trailing garbage
        ("#-284", False),  # sign
        ("", False),
        ("+*;;==#", False),  # garbage
    ],
)
def test_verify_cases(response, ok):
    prob = T.Problem("x", "t", "37+42*6-5=", 284, 3, T.solve("37+42*6-5="))
    assert T.verify(prob, response) is ok
    assert T.verify(prob.to_dict(), response) is ok
    assert T.verify(284, response) is ok


def test_verify_accepts_every_reference_and_noisy_style():
    task = T.get_task("arith", seed=3, bench_size=20, val_size=20)
    rng = random.Random(0)
    for ps in task.benchmarks().values():
        for p in ps:
            assert T.verify(p, p.solution)
            assert T.verify(p, T.solve(p.prompt, order="right"))
            assert T.evaluate(p.prompt) == p.answer
            # the final answer is what a python evaluation of the expression gives
            assert eval(p.prompt[:-1]) == p.answer
    # heavy noise: most noisy solutions end on a wrong answer
    probs = [p for ps in task.benchmarks().values() for p in ps if p.n_ops >= 3]
    wrong = sum(not T.verify(p, T.solve(p.prompt, noise=0.5, rng=rng)) for p in probs)
    assert wrong > len(probs) // 2


def test_student_style_shortcuts_and_order_stay_correct():
    rng = random.Random(0)
    task = T.get_task("arith", seed=2, bench_size=40, val_size=8)
    probs = task.benchmarks()["bench4"]
    style = T.Style(order="right", order_p=1.0, skip=1.0)
    n_steps_ref = n_steps_skip = 0
    for p in probs:
        text = style.render(p, rng)
        assert T.verify(p, text)  # shortcuts skip steps, never change the answer
        n_steps_ref += p.solution.count(";")
        n_steps_skip += text.count(";")
    assert n_steps_skip <= 0.6 * n_steps_ref  # skip=1 merges reductions pairwise (5 -> 3)
    assert T.Style().render(probs[0], rng) == probs[0].solution  # teacher style = reference
    mixed = T.Style(order="right", order_p=0.5)
    outs = {mixed.render(T.Problem("x", "t", "3*4+5*6=", 42, 3, T.solve("3*4+5*6=")), rng) for _ in range(40)}
    assert outs == {"12+5*6;12+30;42;#42", "3*4+30;12+30;42;#42"}  # both orders occur


def test_retracted_slips_are_wrong_masked_and_redone():
    """``retract``: a step is written up to one wrong digit, retracted with ``!`` and redone
    in full; deleting every retracted prefix gives back the reference, and the loss mask
    drops exactly the wrong digits."""
    rng = random.Random(3)
    task = T.get_task("arith", seed=2, bench_size=40, val_size=8)
    probs = [p for ps in task.benchmarks().values() for p in ps]
    n_retracted = 0
    for p in probs:
        assert T.solve_masked(p.prompt) == (p.solution, [True] * len(p.solution))  # retract=0: the reference
        text, mask = T.solve_masked(p.prompt, rng=rng, retract=0.5)
        assert len(mask) == len(text) and T.verify(p, text)
        assert re.sub(r"[^;!]*!", "", text) == p.solution
        steps = re.findall(r"[^;!#]*[;!]", text)
        for k, seg in enumerate(steps):
            if seg.endswith("!"):
                n_retracted += 1
                redo = steps[k + 1]
                # a prefix of the redone step with its last digit wrong
                assert seg[:-2] == redo[: len(seg) - 2] and seg[-2] != redo[len(seg) - 2] and seg[-2].isdigit()
        wrong = [i for i, m in enumerate(mask) if not m]
        assert wrong == [i - 1 for i, c in enumerate(text) if c == "!"]  # only the slipped digit is masked
    assert n_retracted > len(probs)  # about half of 2-6 steps per solution


def test_make_batch_masks_retracted_slips():
    ids, labels = make_batch([([1, 5], [7, 8, 2], [False, True, True])])
    assert ids.tolist() == [[1, 5, 7, 8, 2]] and labels.tolist() == [[-100, -100, 8, 2, -100]]


def test_intermediate_values_bounded():
    task = T.get_task("arith", seed=1, bench_size=30, val_size=10)
    bounds = {b.name: b.level.max_value for b in task.benchmarks_spec}
    assert bounds == {"bench1": T.MAX_VALUE, "bench2": T.MAX_VALUE, "bench3": T.LARGE_VALUE, "bench4": T.LARGE_VALUE}
    for name, ps in task.benchmarks().items():
        for p in ps:
            nums, ops = T.parse_expression(p.prompt)
            for order in ("left", "right"):
                for state in T.trajectory(nums, ops, order):
                    assert all(0 <= v <= bounds[name] for v in state)
    # the large levels do use their larger range
    assert any(p.answer > T.MAX_VALUE for p in task.benchmarks()["bench4"])


def test_generators_deterministic_and_seed_dependent():
    a = T.get_task("arith", seed=5, bench_size=15, val_size=15)
    b = T.get_task("arith", seed=5, bench_size=15, val_size=15)
    c = T.get_task("arith", seed=6, bench_size=15, val_size=15)
    assert a.benchmarks() == b.benchmarks()
    assert a.validation() == b.validation()
    assert a.train_pool("A", 50) == b.train_pool("A", 50)
    assert a.benchmarks() != c.benchmarks()
    assert a.train_pool("B", 50) != c.train_pool("B", 50)


def test_splits_disjoint_and_difficulty_rises():
    task = T.get_task("arith", seed=0)
    benches = task.benchmarks()
    assert list(benches) == ["bench1", "bench2", "bench3", "bench4"]
    val = {p.prompt for p in task.validation()}
    bench_sets = {n: {p.prompt for p in ps} for n, ps in benches.items()}
    train = {p.prompt for s in task.sources for p in task.train_pool(s, 3000)}
    assert len(val) == 200 and all(len(s) == 100 for s in bench_sets.values())
    names = list(bench_sets)
    for i, n in enumerate(names):
        assert not bench_sets[n] & val
        assert not bench_sets[n] & train
        for m in names[i + 1 :]:
            assert not bench_sets[n] & bench_sets[m]
    assert not val & train
    # SFT streams also skip held-out prompts
    stream = task.stream(["A", "B"], "sft-test")
    held = task.held_out_prompts()
    assert not any(next(stream).prompt in held for _ in range(3000))
    # rising difficulty: more operators, longer reference solutions
    n_ops = [ps[0].n_ops for ps in benches.values()]
    lens = [sum(len(p.solution) for p in ps) / len(ps) for ps in benches.values()]
    assert n_ops == sorted(n_ops) and len(set(n_ops)) == 4
    assert lens == sorted(lens)


def test_two_sources_differ():
    task = T.get_task("arith", seed=0)
    assert set(task.sources) >= {"A", "B"}
    a, b = task.train_pool("A", 2000), task.train_pool("B", 2000)
    assert {p.source for p in a} == {"A"} and {p.source for p in b} == {"B"}
    mul_frac = [sum(p.prompt.count("*") for p in ps) / sum(p.n_ops for p in ps) for ps in (a, b)]
    assert mul_frac[1] > mul_frac[0] + 0.1
    assert len({p.prompt for p in a}) == 2000  # pools hold unique prompts


def test_registry_unknown_name_lists_valid():
    assert isinstance(T.get_task("arith"), T.ArithTask)
    with pytest.raises(KeyError, match="arith"):
        T.get_task("nope")
    with pytest.raises(KeyError, match="valid"):
        next(T.get_task("arith").stream("Z", 0))


def test_jsonl_roundtrip(tmp_path):
    ps = T.get_task("arith", bench_size=5, val_size=5).validation()
    T.write_jsonl(tmp_path / "v.jsonl", ps)
    assert T.read_jsonl(tmp_path / "v.jsonl") == ps


# ---------------------------------------------------------------------------------------
# tokenizer


def test_codec_roundtrip():
    text = "37+42*6-5="
    resp = "37+252-5;28!289-5;284;#284"
    ids = CODEC.encode_prompt(text)
    assert ids[0] == BOS_ID and len(ids) == len(text) + 1
    r = CODEC.encode_response(resp)
    assert r[-1] == EOS_ID
    assert CODEC.decode(ids) == text  # BOS dropped
    assert CODEC.decode(r + [5, 6, PAD_ID]) == resp  # stops at EOS
    assert VOCAB_SIZE == 21 and PAD_ID == 0
    with pytest.raises(ValueError):
        CODEC.encode("12a")


def test_hf_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == VOCAB_SIZE
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == EOS_ID and tok.bos_token_id == BOS_ID
    assert tok.get_vocab() == VOCAB
    for text in ["37+42*6-5=", "1=", "999*9;#8991"]:
        assert tok(text)["input_ids"] == CODEC.encode_prompt(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == CODEC.encode(text)
        full = CODEC.encode_prompt(text) + CODEC.encode_response("12;#3")
        assert tok.decode(full, skip_special_tokens=True) == text + "12;#3"


# ---------------------------------------------------------------------------------------
# models and generation


def test_model_presets_sizes():
    t, s = build_model("teacher", 0), build_model("student", 0)
    assert 0.9e6 < count_params(t) < 1.2e6
    assert 5e4 < count_params(s) < 2.5e5
    assert t.config.vocab_size == VOCAB_SIZE
    with pytest.raises(KeyError, match="valid"):
        build_model("huge", 0)


def _sharpened_model(seed: int):
    # random init is almost uniform (greedy ties would make the comparison meaningless)
    m = build_model("smoke-teacher", seed)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(20)
    return m


def test_kv_cache_generation_matches_no_cache():
    m = _sharpened_model(0)
    prompts = [CODEC.encode_prompt(s) for s in ["1+2=", "37+42*6-5=", "9*9*9=", "1=", "4-3+2*7*8="]]
    outs = generate(m, prompts, 24, greedy=True)
    ref = [generate_no_cache(m, p, 24) for p in prompts]
    assert outs == ref
    assert len({tuple(o) for o in outs}) > 1  # prompts of different lengths diverge


def test_sampling_reproducible_and_eos_truncation():
    m = _sharpened_model(1)
    prompts = [CODEC.encode_prompt("12+3*4=")] * 8
    a = generate(m, prompts, 30, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = generate(m, prompts, 30, temperature=1.0, generator=torch.Generator().manual_seed(0))
    c = generate(m, prompts, 30, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert a == b and len(c) == 8
    for o in a + c:
        assert 1 <= len(o) <= 30
        assert EOS_ID not in o[:-1]  # nothing after the first EOS
        assert PAD_ID not in o


def _full_batch_generate(model, prompts, max_new, *, temperature=1.0, top_p=1.0, greedy=False, generator=None):
    """The reference: every row decoded to the longest one, finished rows fed PAD (the
    sampler before finished rows left the batch), one ``[B]`` draw per step."""
    from workbench.mini.sampling import _cache_kwarg, _pick_tokens

    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), PAD_ID, dtype=torch.long)
    attn = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :], attn[i, P - len(p) :] = torch.tensor(p), 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    kw = _cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    past, logits, next_pos = getattr(out, kw), out.logits[:, -1], pos[:, -1] + 1
    done, rows = torch.zeros(B, dtype=torch.bool), []
    for n in range(max_new):
        tok = torch.where(done, PAD_ID, _pick_tokens(logits, temperature, top_p, greedy, generator))
        rows.append(tok)
        done = done | (tok == EOS_ID)
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None], use_cache=True, **{kw: past})
        past, logits, next_pos = getattr(out, kw), out.logits[:, -1], next_pos + 1
    gen = torch.stack(rows, 1).tolist()
    return [r[: r.index(EOS_ID) + 1] if EOS_ID in r else r for r in gen]


@pytest.mark.parametrize("size", ["smoke-teacher", "student"])
@pytest.mark.parametrize("kw", [{"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}, {"greedy": True}])
@torch.no_grad()
def test_finished_rows_leave_the_batch_without_changing_any_row(size, kw):
    """``generate`` drops finished rows from the model's batch and KV cache; every row's
    tokens, and the generator's state after the call, equal full-batch decoding."""
    m = build_model(size, 3)
    m.lm_head.weight[EOS_ID] *= 30  # EOS at widely varying steps: rows finish at different times
    rng = random.Random(0)
    prompts = [[BOS_ID] + [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randrange(3, 14))] for _ in range(96)]
    g_new, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    new = generate(m, prompts, 48, generator=g_new, **kw)
    ref = _full_batch_generate(m, prompts, 48, generator=g_ref, **kw)
    lengths = sorted(len(r) for r in ref)
    assert lengths[len(lengths) // 4] < lengths[-1] // 2  # the batch really thins out
    assert new == ref
    assert torch.equal(torch.rand(4, generator=g_new), torch.rand(4, generator=g_ref))


def test_make_batch_labels_are_shifted_response():
    ids, labels = make_batch([([1, 5, 6], [7, 2]), ([1, 5], [8, 9, 2])])
    assert ids.tolist() == [[1, 5, 6, 7, 2], [1, 5, 8, 9, 2]]
    assert labels.tolist() == [[-100, -100, 7, 2, -100], [-100, 8, 9, 2, -100]]


# ---------------------------------------------------------------------------------------
# prepare (smoke scale)


@pytest.fixture(scope="module")
def mini_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "smoke"
    man = prepare(out, seed=0, preset="smoke")
    return out, man


def test_prepare_writes_world(mini_smoke):
    out, man = mini_smoke
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == man
    assert man["seed"] == 0 and man["preset"] == "smoke" and len(man["config_hash"]) == 16
    for f in ["train_A", "train_B", "validation", "bench1", "bench2", "bench3", "bench4"]:
        assert (out / "data" / f"{f}.jsonl").stat().st_size > 0
    for role in ("teacher", "student"):
        info = man["models"][role]
        assert info["params"] > 0 and info["train_seconds"] >= 0
        acc = info["accuracy"]
        assert set(acc["greedy"]) >= {"train_dist", "bench1", "bench4", "bench_avg"}
        assert all(0.0 <= v <= 1.0 for v in acc["sampled_t1"].values())
    # no temp dirs left behind
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_prepare_models_load_with_auto_classes(mini_smoke):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, man = mini_smoke
    for role in ("teacher", "student"):
        m = AutoModelForCausalLM.from_pretrained(str(out / role))
        assert count_params(m) == man["models"][role]["params"]
        tok = AutoTokenizer.from_pretrained(str(out / role))
        assert tok("1+2=")["input_ids"] == CODEC.encode_prompt("1+2=")
        logits = m(input_ids=torch.tensor([CODEC.encode_prompt("1+2=")])).logits
        assert logits.shape == (1, 5, VOCAB_SIZE)


def test_prepare_reuses_cache_and_rebuilds_on_change(mini_smoke):
    out, man = mini_smoke
    stamp = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    again = prepare(out, seed=0, preset="smoke")
    assert again == man
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp
    # a different config is a different hash: rebuilt in place
    other = prepare(out, seed=0, preset="smoke", overrides={"student_style": T.Style(order="right", skip=0.9)})
    assert other["config_hash"] != man["config_hash"]
    assert json.loads((out / "manifest.json").read_text())["config_hash"] == other["config_hash"]
    # only the student's recipe changed: the teacher is carried over, the student retrained
    assert other["models"]["teacher"]["reused"] and not other["models"]["student"]["reused"]
    assert other["models"]["teacher"]["hash"] == man["models"]["teacher"]["hash"]
    assert other["models"]["student"]["hash"] != man["models"]["student"]["hash"]
    assert (out / "teacher" / "model.safetensors").exists()


def test_prepare_deterministic(mini_smoke, tmp_path):
    out, man = mini_smoke
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the build runs at WORLD_THREADS whatever the caller's setting
    try:
        man2 = prepare(tmp_path / "w2", seed=0, preset="smoke")
        assert torch.get_num_threads() == 1  # and gives the caller's setting back
    finally:
        torch.set_num_threads(before)
    assert man2["threads"] == man["threads"] == WORLD_THREADS
    torch.set_num_threads(2)
    try:
        prepare(tmp_path / "w3", seed=0, preset="smoke")
    finally:
        torch.set_num_threads(before)
    for role in ("teacher", "student"):  # (the fixture's world was rebuilt by an earlier test)
        assert (tmp_path / "w2" / role / "model.safetensors").read_bytes() == (
            tmp_path / "w3" / role / "model.safetensors"
        ).read_bytes()
    assert man2["config_hash"] == man["config_hash"]
    for role in ("teacher", "student"):
        assert man2["models"][role]["sft_log"][-1]["loss"] == man["models"][role]["sft_log"][-1]["loss"]
        assert man2["models"][role]["accuracy"] == man["models"][role]["accuracy"]
    assert (tmp_path / "w2" / "data" / "bench3.jsonl").read_text() == (out / "data" / "bench3.jsonl").read_text()
    with pytest.raises(UnknownNameError, match="unknown world preset 'huge'; valid: mini, smoke"):
        prepare(tmp_path / "w3", preset="huge")


def test_evaluate_accuracy_counts(mini_smoke):
    out, _ = mini_smoke
    from workbench.mini.world import load_world

    w = load_world(out)
    probs = w["benchmarks"]["bench1"][:6]
    r = evaluate_accuracy(w["teacher"], probs, greedy=False, k=3, seed=0)
    assert r["n"] == 6 and r["k"] == 3 and len(r["per_problem"]) == 6
    assert all(v in (0, 1 / 3, 2 / 3, 1) for v in r["per_problem"])
    assert r == evaluate_accuracy(w["teacher"], probs, greedy=False, k=3, seed=0)


class _Oracle(torch.nn.Module):
    """A fake LM that always emits the reference solution: checks the evaluator's plumbing
    (prompt encoding, generation loop, decoding, verifying) end to end."""

    def __init__(self, problems):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.answers = {tuple(CODEC.encode_prompt(p.prompt)): CODEC.encode_response(p.solution) for p in problems}

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kw):
        logits = torch.full((*input_ids.shape, VOCAB_SIZE), -1e9)
        for b in range(input_ids.shape[0]):
            row = [t for t in input_ids[b].tolist() if t != PAD_ID]
            for key, resp in self.answers.items():
                if tuple(row[: len(key)]) == key:
                    k = len(row) - len(key)
                    logits[b, -1, resp[k] if k < len(resp) else EOS_ID] = 0.0
        from types import SimpleNamespace

        return SimpleNamespace(logits=logits, cache=None, past_key_values=None)


def test_evaluate_accuracy_oracle_is_perfect():
    probs = T.get_task("arith", bench_size=8, val_size=8).validation()
    # feed the full history each step: wrap so the cache carries the sequence
    oracle = _Oracle(probs)
    r = evaluate_accuracy(_NoCache(oracle), probs, greedy=True)
    assert r["acc"] == 1.0


class _NoCache(torch.nn.Module):
    """Adapter giving a stateless full-sequence model the cache interface of ``generate``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, cache=None):
        seq = input_ids if cache is None else torch.cat([cache.seq, input_ids], dim=1)
        out = self.inner(seq)
        from types import SimpleNamespace

        return SimpleNamespace(logits=out.logits, cache=_SeqCache(seq))


class _SeqCache:
    """The part of transformers' ``Cache`` that ``generate`` uses: the past, and dropping
    finished rows from it."""

    def __init__(self, seq):
        self.seq = seq

    def batch_select_indices(self, indices):
        self.seq = self.seq[indices]
