"""Shared fixtures: one smoke-scale miniature world per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """A prepared ``smoke`` world (tiny models, a few SFT steps: accuracies meaningless)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from workbench.mini.prepare import prepare

    root = tmp_path_factory.mktemp("world") / "smoke"
    prepare(root, seed=0, scale="smoke")
    return root
