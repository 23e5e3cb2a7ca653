"""Everything the verl backend registers with verl; imported by every verl process.

Two hooks reach this module (docs/verl.md):

- ``distillation.distillation_loss._target_=workbench.backends.verl.loss.SGOPDLossConfig``:
  Hydra imports ``workbench.backends.verl.loss`` wherever verl builds that config;
- ``VERL_USE_EXTERNAL_MODULES=workbench.backends.verl.register``: ``import verl`` imports
  this module in every process whose environment has it (the launcher sets it, and passes
  it to Ray's runtime env so that the TaskRunner and all workers inherit it.

The package declares no ``verl.plugins`` entry point on purpose: it would make every
``import verl`` in an environment that has the workbench installed import torch and this
package's trainers, job or not.

The trainers (``workbench_sync`` for every PPO-family run, ``sgopd_sync`` for PTS runs)
and the PTS agent loop need verl's v1 trainer, which needs the TransferQueue package;
without it only the loss is registered (the trainer modes are then unknown to verl, and
``workbench verl-check`` says so).
"""

from __future__ import annotations

import importlib.util

import workbench.backends.verl.loss

PTS_AVAILABLE = importlib.util.find_spec("transfer_queue") is not None
if PTS_AVAILABLE:
    import workbench.backends.verl.pts  # registers trainer mode "sgopd_sync"
    import workbench.backends.verl.trainer  # noqa: F401  (registers trainer mode "workbench_sync")
