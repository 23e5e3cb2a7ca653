"""The verl backend: SG-OPD, PTS and the baselines as verl 0.9 jobs, without forking verl.

This package is the only place in the workbench that imports verl, and it does so
lazily: importing ``workbench.backends.verl`` itself imports neither verl nor torch.

Modules (see docs/verl.md):

- ``adapter``: the SG-OPD token loss on verl's padded batch tensors, built from
  ``workbench.algo`` (pure PyTorch; no verl import).
- ``loss``: ``SGOPDLossConfig`` (a ``DistillationLossConfig`` subclass that adds the gate,
  stability and PTS fields) and the ``sgopd`` loss registered with verl's
  ``register_distillation_loss``. Imports verl.
- ``register``: what every verl process imports (through ``_target_`` or
  ``VERL_USE_EXTERNAL_MODULES``) to register it all.
- ``overrides``: the Hydra override list of a grid run at a scale (pure; no verl import).
- ``check``: composes and validates verl's full config for every grid run on CPU.
- ``pts``: the PTS agent-loop worker and the trainer subclass (GPU-only glue, v1 trainer).
- ``metrics``: verl metric names to the canonical names of docs/algorithm.md section 10.
- ``launch``: the thin entry point a Snakemake job runs (MLflow run hand-over, Ray env).
- ``realscale``: the evaluation engines (vLLM, transformers), datasets and math-verify grading.
- ``cli``: the ``verl-overrides``, ``verl-check``, ``verl-launch`` and ``realscale-eval`` verbs.
"""

#: The verl release the adapter is written and tested against.
VERL_VERSION = "0.9.1"
