"""Remove Snakemake's lock of this checkout when nothing that could hold it is alive.

A Snakemake that is killed hard (SIGKILL, power loss) leaves ``.snakemake/locks/`` behind,
and every later run stops with ``Directory cannot be locked``. ``make reproduce`` runs this
first. The lock goes only when no process whose working directory is this checkout is
a Snakemake or a ``workbench`` command: a job of the killed Snakemake can outlive it, still
writing its outputs, and a second Snakemake would start the same job beside it. Otherwise
the lock stays and this says which processes keep it (Snakemake then decides: it refuses
only when their files overlap with its own).

Usage: ``python workflow/unlock_stale.py [DIR]`` (default: the working directory).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import psutil  # a dependency of Snakemake

# A Snakemake or workbench command line: the executables, `python -m ...`, or a job's
# `bash -c "... -m workbench train ..."`. Matching whole words keeps a checkout path such as
# /home/me/sgopd-workbench/.venv/bin/python from counting.
COMMAND = re.compile(r"(^|[\s/])(snakemake|workbench)(\s|$)|-m\s+(snakemake|workbench)\b")


def holders(checkout: Path) -> list[tuple[int, str]]:
    """Live processes of ``checkout`` that may hold its lock (this process and its ancestors excluded)."""
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] in skip or not COMMAND.search(cmdline):
            continue
        try:
            if Path(proc.cwd()).resolve() == checkout:
                found.append((proc.info["pid"], cmdline))
        except (psutil.Error, OSError):  # gone, or another user's: not a process of this checkout
            continue
    return found


def main(argv: list[str]) -> int:
    checkout = Path(argv[1] if len(argv) > 1 else ".").resolve()
    locks = checkout / ".snakemake" / "locks"
    if not any(locks.glob("*.lock")):
        return 0
    alive = holders(checkout)
    if alive:
        pids = "; ".join(f"pid {pid}: {cmd[:100]}" for pid, cmd in alive)
        print(f"unlock: the Snakemake lock in {locks} is kept: processes of this checkout are running ({pids})", file=sys.stderr)
        return 0
    shutil.rmtree(locks)  # what `snakemake --unlock` removes
    print(
        f"unlock: removed a stale Snakemake lock ({locks}): no Snakemake or workbench process of this "
        "checkout is running (a killed Snakemake leaves its lock behind)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
