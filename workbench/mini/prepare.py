"""Build the miniature world: data files, tokenizer, SFT-trained teacher and student.

``prepare(out_dir, seed=0, preset="mini")`` writes the world layout described in
``workbench.mini.world`` (which also holds the presets, ``PRESETS``, and the hashes that
decide what is rebuilt). Design notes and measurements: docs/mini-world.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from workbench.errors import UserError
from workbench.registry import UnknownNameError
from workbench.status import duration, status

from .evaluate import evaluate_accuracy
from .models import build_model, count_params, load_model
from .premises import world_premises
from .sampling import max_response_tokens
from .sft import sft_train
from .task import Problem, Style, get_task, write_jsonl
from .tokenizer import CODEC, save_tokenizer
from .world import PRESETS, WORLD_ENTRIES, WORLD_VERSION, config_hash, role_hash

# The premises probe (docs/mini-world.md, "The paper's regime": P2b, P4b): training prompts
# of the fresh training-distribution sample, and student samples per prompt.
PREMISE_PROMPTS = 256
PREMISE_SAMPLES = 8
#: torch threads of every world build, whatever the caller's setting (see ``prepare``)
WORLD_THREADS = 2


def _pairs(
    task, sources: Sequence[str], stream_seed: str, style: Style, seed: int
) -> Iterator[tuple[list[int], list[int], list[bool]]]:
    """Endless ``(prompt_ids, response_ids, response_loss_mask)`` SFT examples written in
    ``style`` (the mask drops a retracted slip's wrong number; EOS is trained on)."""
    rng = random.Random(f"pairs:{seed}:{stream_seed}")
    for p in task.stream(list(sources), stream_seed):
        text, mask = style.render_masked(p, rng)
        yield CODEC.encode_prompt(p.prompt), CODEC.encode_response(text), mask + [True]


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
    preset: str = "mini",
    overrides: dict | None = None,
    force: bool = False,
    verbose: bool = False,
) -> dict:
    """Build (or reuse) the miniature world in ``out_dir``; returns the manifest dict.

    ``overrides``: ``WorldConfig`` fields to replace (e.g. ``{"student_sft": WorldSFT(...)}``).
    If ``out_dir/manifest.json`` exists with the same config hash (and not ``force``),
    nothing is rebuilt. Everything is written to a sibling temp dir first and renamed into
    place, so a crash never leaves a half-written world behind a valid manifest.
    """
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown world preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[preset]
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
                status(f"prepare: the {preset} world in {out_dir} is up to date (hash {h}), nothing to do")
            return man
    _check_out_dir(out_dir)  # a rebuild replaces out_dir: only if it holds a world and nothing else

    log = (lambda *a: print("[mini.prepare]", *a, flush=True)) if verbose else None
    say = status if verbose else (lambda *a, **k: None)
    say(
        f"prepare: building the {preset} world in {out_dir} "
        f"(SFT of the teacher, {cfg.teacher_sft.steps} steps, and the student, {cfg.student_sft.steps} steps)"
    )
    t_start = time.time()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise UserError(f"cannot build a world in {out_dir}: {e.strerror or e}; pick a writable --out") from None
    # A fixed thread count: it sets the order of float reductions, which SFT amplifies into
    # different weights (a 1-thread build of the committed recipe gave a student 4.6 avg@8
    # points stronger), and the world's hash must name one world.
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(WORLD_THREADS)
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

        # A measurement of the two models, not config: outside the hash. Both are read back
        # from disk, so a reused model and a freshly trained one give the same numbers.
        say("prepare: probing the world's premises")
        premises = world_premises(
            load_model(tmp / "teacher"),
            load_model(tmp / "student"),
            train_eval,
            prompts=min(PREMISE_PROMPTS, len(train_eval)),
            samples=PREMISE_SAMPLES,
            max_new_tokens=cfg.eval_max_new_tokens or max_response_tokens([p for ps in benches.values() for p in ps]),
            seed=seed,
        )
        manifest = {
            "world_version": WORLD_VERSION,
            "config_hash": h,
            "seed": seed,
            "preset": preset,
            "config": asdict(cfg),
            "benchmarks": {
                b.name: {"stands_for": b.stands_for, "n_ops": b.level.n_ops, "size": b.size} for b in task.benchmarks_spec
            },
            "sources": {n: s.description for n, s in task.sources.items()},
            "models": models_info,
            "premises": premises,
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
        torch.set_num_threads(prev_threads)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    other = sorted(names - WORLD_ENTRIES)
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
