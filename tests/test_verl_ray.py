"""The registrations reach Ray worker processes (local Ray on CPU), through both hooks the
verl job relies on: a config node's ``_target_`` and ``VERL_USE_EXTERNAL_MODULES``."""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("verl")
ray = pytest.importorskip("ray")

from workbench.backends.verl.testing import probe_env_registration, probe_target_registration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}},
    )
    yield
    ray.shutdown()


def test_target_registers_the_loss_in_a_ray_worker(local_ray):
    before, after, lam, loss, pid = ray.get(ray.remote(probe_target_registration).remote())
    assert pid != os.getpid()
    assert not before and after and lam == 1.5
    assert math.isfinite(loss)


@pytest.mark.slow
def test_external_modules_env_registers_loss_and_pts_trainer_in_a_ray_worker(local_ray):
    pytest.importorskip("transfer_queue")
    env = {"env_vars": {"VERL_USE_EXTERNAL_MODULES": "workbench.backends.verl.register"}}
    loss_ok, trainer_ok, pid = ray.get(ray.remote(probe_env_registration).options(runtime_env=env).remote())
    assert pid != os.getpid() and loss_ok and trainer_ok
    # without the variable a fresh worker has neither
    plain = ray.get(ray.remote(probe_env_registration).options(runtime_env={"env_vars": {"X": "1"}}).remote())
    assert plain[:2] == (False, False)
