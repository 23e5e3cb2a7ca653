"""Where a result came from: the code's git state and short content hashes.

One place for both, so that a run's tags (``workbench.tracking``), the report's provenance
section (``workbench.analysis.report``), config and world hashes all agree on how they
are computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any


def short_hash(obj: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys;
    values JSON cannot hold are written as ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # read-only: never refresh the index
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout this package runs from; ``(None, None)`` outside
    git. ``dirty``: tracked files differ from the commit (None if that could not be read)."""
    commit = _git(["rev-parse", "HEAD"])
    if not commit:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    return commit, (None if status is None else bool(status))
