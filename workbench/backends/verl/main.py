"""``python -m workbench.backends.verl.main OVERRIDES...``: verl's ``main_ppo`` with the
workbench registrations imported first (the driver process; Ray workers get them through
``VERL_USE_EXTERNAL_MODULES``, which the overrides put in Ray's runtime env)."""

from __future__ import annotations

import workbench.backends.verl.register  # noqa: F401


def main() -> None:
    from verl.trainer.main_ppo import main as verl_main

    verl_main()


if __name__ == "__main__":
    main()
