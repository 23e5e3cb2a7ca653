"""The prepared GPU script's parity cases run on CPU, so it cannot rot before a GPU session uses it."""

import importlib.util
from pathlib import Path

import torch

import workbench.algo as A

spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_parity_cases_cover_every_variant_and_agree_with_float64():
    b32 = gpu_check.batch()
    b64 = {k: v.double() if v.is_floating_point() else v for k, v in b32.items()}
    c32, c64 = gpu_check.cases(b32), gpu_check.cases(b64)
    n_routed = sum(k.startswith("sgopd[") for k in c32)
    assert n_routed == len(A.FALLBACKS.names()) * 2 * len(A.STABILITY_WEIGHTS.names())
    for name, xs in c32.items():
        for x, y in zip(xs, c64[name]):
            assert torch.isfinite(x).all(), name
            assert torch.allclose(x.double(), y, atol=1e-4, rtol=1e-3), name
