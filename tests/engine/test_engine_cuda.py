"""The engine on a GPU: same recipe as the straightforward path, statistics in float32 from
half-precision weights. Skipped where there is no CUDA device (CI, this machine)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunecomp.config import PruneConfig
from prunecomp.prune import prune
from tiny import random_windows, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("metric", ["bi", "ppl"])
def test_cuda_layerwise_matches_memory(metric, dtype):
    model = tiny_model("llama", layers=6).to("cuda", dtype)
    windows = random_windows(4, 32)
    recipes = {
        engine: prune(copy.deepcopy(model), None, PruneConfig(metric=metric, num_layers=2, engine=engine, batch_size=2), windows).recipe
        for engine in ("memory", "layerwise")
    }
    assert [r.removed for r in recipes["layerwise"].rounds] == [r.removed for r in recipes["memory"].rounds]
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for a, b in zip(recipes["layerwise"].rounds, recipes["memory"].rounds):
        assert a.scale == pytest.approx(b.scale, rel=tolerance)
