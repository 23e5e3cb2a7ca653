"""Shared fixtures: one smoke-scale miniature world per test session; a fresh MLflow store per test."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config):
    # The suite stops its subprocesses with SIGINT, as a user's Ctrl-C would. A test run
    # started as a background job (`make test &` in a script, nohup) inherits SIGINT ignored,
    # and so would every process it starts, which then rightly ignore the SIGINT (a training
    # run, the stop tests' own stopper): give the run the default handler, which children
    # inherit as the default action.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
