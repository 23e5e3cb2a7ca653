"""The paper's reported numbers (``experiments/paper.yaml``) and the benchmark naming.

``load_paper(path=None) -> Paper`` reads the YAML once; everything that prints a paper
number (tables, report, figures' labels) takes a ``Paper``. Benchmarks are addressed by
their paper key (``AIME24`` ...); ``Paper.metric(run_metrics, key, "avg_at_k")`` finds the
metric a backend logged for it under any of its aliases (the mini world's ``bench1``..
``bench4`` or the real names). ``AVG`` is the canonical ``eval/avg_at_k``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AVG = "AVG"
EVAL_KINDS = ("avg_at_k", "pass_at_k")
DEFAULT_PAPER = Path(__file__).resolve().parents[2] / "experiments" / "paper.yaml"


@dataclass(frozen=True)
class Benchmark:
    key: str  # the paper's column name, e.g. "AIME24"
    short: str  # a short header, e.g. "A24"
    aliases: tuple[str, ...]  # names a backend may log it under: eval/<alias>/avg_at_k


@dataclass(frozen=True)
class Paper:
    """The paper's tables as plain data (see ``experiments/paper.yaml`` for the layout)."""

    benchmarks: tuple[Benchmark, ...]
    labels: dict[str, str]
    table1: dict[str, Any]
    table2: dict[str, Any]
    table3: dict[str, Any]
    source: str = ""
    _group_rank: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def columns(self) -> list[str]:
        """Benchmark keys in the paper's order, then ``AVG``."""
        return [b.key for b in self.benchmarks] + [AVG]

    def label(self, run: str) -> str:
        return self.labels.get(run, run)

    def metric_names(self, key: str, kind: str = "avg_at_k") -> list[str]:
        """Candidate metric names for benchmark ``key`` (or ``AVG``), in preference order."""
        if kind not in EVAL_KINDS:
            raise ValueError(f"kind must be one of {EVAL_KINDS}, not {kind!r}")
        if key == AVG:
            return [f"eval/{kind}"]
        bench = next((b for b in self.benchmarks if b.key == key), None)
        if bench is None:
            raise KeyError(f"unknown benchmark {key!r}; known: {self.columns}")
        return [f"eval/{alias}/{kind}" for alias in bench.aliases]

    def resolve_metric(self, available: Iterable[str], key: str, kind: str = "avg_at_k") -> str | None:
        """The first of ``metric_names(key, kind)`` present in ``available``, or None."""
        have = set(available)
        return next((m for m in self.metric_names(key, kind) if m in have), None)

    def group_rank(self, group: str) -> int:
        return self._group_rank.get(group, len(self._group_rank))

    def table3_order(self) -> list[str]:
        """Run ids in the paper's printed Table 3 order (groups in order, rows as printed)."""
        rows = self.table3["rows"]
        return [r["run"] for r in sorted(rows, key=lambda r: self.group_rank(r["group"]))]


def load_paper(path: str | Path | None = None) -> Paper:
    """Read the paper's numbers (default: ``experiments/paper.yaml`` of this repository)."""
    import yaml

    p = Path(path) if path is not None else DEFAULT_PAPER
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    benches = tuple(
        Benchmark(b["key"], b.get("short", b["key"]), tuple(b.get("aliases", [b["key"]]))) for b in data["benchmarks"]
    )
    groups = data["table3"]["groups"]
    return Paper(
        benchmarks=benches,
        labels=dict(data.get("labels", {})),
        table1=data["table1"],
        table2=data["table2"],
        table3=data["table3"],
        source=str(p),
        _group_rank={g["id"]: i for i, g in enumerate(groups)},
    )
