"""``python -m workbench.backends.verl.main OVERRIDES...``: verl's ``main_ppo`` with the
workbench registrations imported first (the driver process; Ray workers get them through
``VERL_USE_EXTERNAL_MODULES``, which the overrides put in Ray's runtime env).

Every run started here trains with a workbench trainer: ``trainer.v1.trainer_mode`` is
``workbench_sync`` (``trainer.WorkbenchTrainer``: docs/algorithm.md metric names, MLflow that survives
a resume) unless the overrides choose a mode (the PTS runs' ``sgopd_sync``, a subclass).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import workbench.backends.verl.register  # noqa: F401

TRAINER_MODE_KEY = "trainer.v1.trainer_mode"
DEFAULT_TRAINER_MODE = "workbench_sync"  # trainer.TRAINER_MODE (that module needs TransferQueue)


def verl_argv(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``trainer.v1.trainer_mode=workbench_sync`` unless they set the mode."""
    if any(o.lstrip("+~").startswith(TRAINER_MODE_KEY + "=") for o in overrides):
        return list(overrides)
    return [*overrides, f"{TRAINER_MODE_KEY}={DEFAULT_TRAINER_MODE}"]


def main() -> None:
    from verl.trainer.main_ppo import main as verl_main

    sys.argv[1:] = verl_argv(sys.argv[1:])
    verl_main()


if __name__ == "__main__":
    main()
