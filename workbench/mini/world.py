"""What a miniature world is: its configuration and presets, its hash, its layout on disk,
and read access to a prepared one.

A world directory (built by ``workbench.mini.prepare.prepare``)::

    root/
      manifest.json             config, config hash, accuracies, parameter counts, timings
      data/train_A.jsonl        RL training-prompt pools, one per source
      data/train_B.jsonl
      data/validation.jsonl     hyper-parameter search split
      data/bench{1..4}.jsonl    held-out benchmarks (rising difficulty)
      tokenizer/                HF tokenizer (AutoTokenizer.from_pretrained)
      teacher/                  HF Qwen3ForCausalLM + tokenizer (AutoModelForCausalLM)
      student/                  same, the untrained student (``student-init``)
      teacher_data/             the trainer's cache of teacher responses for the SFT family

The teacher is SFT'd on its canonical solutions (leftmost multiplication first, one
operation per step) in which some steps are first written with a slip, retracted with ``!``
and redone (the slip masked from the loss); the student is a smaller model SFT'd in the
same format, retracting rarely and sometimes using the other legal order: a student
weaker in capability, whose slips the teacher knows how to retract. Design notes,
premises and measurements: docs/mini-world.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.provenance import short_hash

from .models import load_model
from .sampling import max_response_tokens
from .task import Problem, Style, read_jsonl

WORLD_VERSION = 2  # bump when data generation or training semantics change

# What a world directory holds (the layout above): prepare replaces a directory only if it
# holds a world and nothing else.
WORLD_ENTRIES = {"manifest.json", "data", "tokenizer", "teacher", "student", "teacher_data"}


# --------------------------------------------------------------------------------------
# configuration


#: canonical order (leftmost product first, one operation per step); one step in five is
#: first written with a slip and retracted (the slip masked from the loss): the teacher
#: learns to notice a wrong step and redo it
TEACHER_STYLE = Style(retract=0.2)
#: the student's "pre-training": the same format, rare retractions (it knows the token but
#: seldom uses it), and the other legal order in a few solutions (correct tokens the teacher
#: dislikes); its deficit is capability (a smaller model, ``models.SIZE_PRESETS``)
STUDENT_STYLE = Style(order="right", order_p=0.15, retract=0.03)


@dataclass(frozen=True)
class WorldSFT:
    """How one world model (teacher or student) is SFT'd (``workbench.mini.sft.sft_train``):
    AdamW, linear warmup, cosine decay to ``lr * min_lr_frac``. A field of ``WorldConfig``,
    so it enters the world's hash. Not the run config's ``sft`` section
    (``workbench.config.SFTConfig``), which configures the grid's SFT-family methods."""

    steps: int
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_frac: float = 0.05
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bucket: int = 16  # batches drawn at once and length-sorted (less padding)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the prepared world (hashed into the manifest)."""

    task: str = "arith"
    bench_size: int = 100
    val_size: int = 200
    pool_size: int = 4000  # RL prompts per training source
    teacher_size: str = "teacher"
    student_size: str = "student"
    teacher_sft: WorldSFT = WorldSFT(steps=1600, batch_size=128, lr=3e-3, warmup=50)
    # the student is small and cheap (~6 min): trained as long as the capable students of
    # the design log, so its size, not its training, sets its level
    student_sft: WorldSFT = WorldSFT(steps=4000, batch_size=64, lr=3e-3, warmup=50)
    teacher_style: Style = TEACHER_STYLE
    student_style: Style = STUDENT_STYLE
    eval_sample_k: int = 4  # samples per problem for the T=1.0 accuracy report
    eval_train_size: int = 400  # problems drawn from the training distribution for eval
    eval_max_new_tokens: int | None = None  # None: longest benchmark solution + slack


# World presets (`workbench prepare --preset`; a workflow scale names its preset with `world:`).
PRESETS: dict[str, WorldConfig] = {
    "mini": WorldConfig(),
    # tiny models, few steps: exercises every code path in seconds; accuracies meaningless
    "smoke": WorldConfig(
        bench_size=6,
        val_size=8,
        pool_size=40,
        teacher_size="smoke-teacher",
        student_size="smoke-student",
        teacher_sft=WorldSFT(steps=6, batch_size=16, warmup=2, bucket=2),
        student_sft=WorldSFT(steps=4, batch_size=16, warmup=2, bucket=2),
        eval_sample_k=1,
        eval_train_size=8,
        eval_max_new_tokens=12,
    ),
}


def _hash(obj) -> str:
    return short_hash({"version": WORLD_VERSION, **obj})


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
# reading a prepared world


@dataclass
class World:
    """A prepared miniature world, read on demand (the trainer's and the runs' view)."""

    root: Path
    manifest: dict

    @classmethod
    def open(cls, root: str | Path) -> World:
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"no prepared world at {root} (run `workbench prepare` first)")
        return cls(root, json.loads(path.read_text()))

    @property
    def sources(self) -> list[str]:
        return list(self.manifest["sources"])

    @property
    def benchmark_names(self) -> list[str]:
        return list(self.manifest["benchmarks"])

    def train_pool(self, sources: Sequence[str] | None) -> list[Problem]:
        names = list(sources) if sources else self.sources
        unknown = [s for s in names if s not in self.sources]
        if unknown:
            raise ValueError(f"train.sources: unknown source(s) {unknown}; valid: {self.sources}")
        return [p for s in names for p in read_jsonl(self.root / "data" / f"train_{s}.jsonl")]

    def benchmarks(self, names: Sequence[str] | None = None) -> dict[str, list[Problem]]:
        names = list(names) if names else self.benchmark_names
        unknown = [b for b in names if b not in self.benchmark_names and b != "validation"]
        if unknown:
            raise ValueError(f"eval.benchmarks: unknown benchmark(s) {unknown}; valid: {self.benchmark_names}")
        return {b: read_jsonl(self.root / "data" / f"{b}.jsonl") for b in names}

    def max_new_tokens(self) -> int:
        return max_response_tokens([p for ps in self.benchmarks().values() for p in ps])


def load_world(out_dir: str | Path) -> dict:
    """Manifest plus loaded models and problem splits of a prepared world (for scripts)."""
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
