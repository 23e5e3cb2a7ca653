"""Shared fixtures: one smoke-scale miniature world per test session; a fresh MLflow store per test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """A prepared ``smoke`` world (tiny models, a few SFT steps: accuracies meaningless)."""
    import torch

    torch.set_num_threads(2)
    from workbench.mini.prepare import prepare

    root = tmp_path_factory.mktemp("world") / "smoke"
    prepare(root, seed=0, preset="smoke")
    return root


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store, made the default through MLFLOW_TRACKING_URI (modules
    with a store shared across their tests define their own ``store``)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return uri
