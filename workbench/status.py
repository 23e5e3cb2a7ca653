"""One-line status messages of long stages: ``train opd seed0: resuming from step 120/200``.

A status line goes to stderr (a job's log file in the workflow) and, when the environment
names a file descriptor in ``WORKBENCH_STATUS_FD``, to that descriptor too. The workflow's
long rules point descriptor 3 at Snakemake's own stderr (``3>&2`` before the redirection to
the log), so the terminal of ``make reproduce`` shows a line per stage while everything else
stays in the logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STATUS_FD = "WORKBENCH_STATUS_FD"


def _take_status_fd() -> int | None:
    # Taken out of the environment at import, so that a child process (whose descriptor of
    # that number may be any file it opened) never writes to it. A descriptor the shell
    # passed on is inheritable; one Python opened itself never is.
    value = os.environ.pop(STATUS_FD, "")
    if not value.isdigit():
        return None
    try:
        return int(value) if os.get_inheritable(int(value)) else None
    except OSError:  # not open
        return None


_FD = _take_status_fd()


def status(message: str, *, stderr: bool = True) -> None:
    """Print ``message`` as one status line (``stderr=False``: to the status descriptor only,
    for periodic progress that the log already records in more detail)."""
    line = message.rstrip("\n") + "\n"
    if stderr:
        print(line, end="", file=sys.stderr, flush=True)
    if _FD is not None:
        try:
            os.write(_FD, line.encode())
        except OSError:  # closed meanwhile (a terminal gone): progress is optional
            pass


def run_label(cfg, run_dir: str | Path) -> str:
    """How status lines name a training run: ``train <run> seed<k>``."""
    return f"train {cfg.name or Path(run_dir).name} seed{cfg.seed}"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
