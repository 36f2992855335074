"""The loop gives identical recipes on every engine: same removed layers, scales within 1e-4
relative, for every metric, iterative and one-shot, with shared and separate scale windows."""

from __future__ import annotations

import copy

import pytest

from prunecomp.calib.sets import CalibrationSets
from prunecomp.config import ConfigError, PruneConfig
from prunecomp.engine import load_skeleton
from prunecomp.engine.layerwise import SafetensorsCheckpoint
from prunecomp.engine.session import EngineError
from prunecomp.prune import prune
from tiny import random_windows, tiny_model

METRICS = ("bi", "cl", "ppl", "mag", "taylor", "reverse", "random")
LAZY_METRICS = ("bi", "cl", "ppl", "reverse", "random")  # those that do not read all weights at once


def assert_same_recipe(fast, slow):
    assert [r.removed for r in fast.rounds] == [r.removed for r in slow.rounds]
    for a, b in zip(fast.rounds, slow.rounds):
        assert a.scale == pytest.approx(b.scale, rel=1e-4)
        assert a.scale_note == b.scale_note
        for x, y in zip(a.scores, b.scores):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-4, abs=1e-7)


def run(model, engine, calibration, **settings):
    """Prune a copy of `model` (a skeleton is pruned as it is: it holds no layer weights)."""
    lazy = engine == "skeleton"
    config = PruneConfig(engine="layerwise" if lazy else engine, batch_size=2, protect_first=0, protect_last=0, **settings)
    return prune(model if lazy else copy.deepcopy(model), None, config, calibration).recipe


@pytest.mark.parametrize("iterative", [True, False], ids=["iterative", "one-shot"])
@pytest.mark.parametrize("metric", METRICS)
def test_layerwise_engine_gives_the_memory_engines_recipe(metric, iterative):
    model = tiny_model("llama", layers=7)
    windows = random_windows(4, 16)
    settings = dict(metric=metric, num_layers=3, iterative=iterative)
    assert_same_recipe(run(model, "layerwise", windows, **settings), run(model, "memory", windows, **settings))


@pytest.mark.parametrize("arch_name", ["qwen2", "gemma3"])
@pytest.mark.parametrize("metric", ["bi", "ppl"])
def test_separate_scale_windows_and_per_window_estimator(arch_name, metric):
    model = tiny_model(arch_name, layers=6)
    sets = CalibrationSets.from_windows(random_windows(3, 16, seed=1), random_windows(5, 16, seed=2))
    settings = dict(metric=metric, num_layers=2, estimator="channel_mean_windows")
    assert_same_recipe(run(model, "auto", sets, **settings), run(model, "memory", sets, **settings))


@pytest.mark.parametrize("iterative", [True, False], ids=["iterative", "one-shot"])
@pytest.mark.parametrize("metric", LAZY_METRICS)
def test_skeleton_from_shards_gives_the_in_memory_recipe(metric, iterative, tmp_path):
    model = tiny_model("qwen3", layers=6, tied=False)
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    skeleton, _ = load_skeleton(tmp_path)
    windows = random_windows(3, 16)
    settings = dict(metric=metric, num_layers=2, iterative=iterative, max_memory="50MB")
    assert_same_recipe(run(skeleton, "skeleton", windows, **settings), run(model, "memory", windows, **settings))


def test_weight_metrics_on_a_skeleton_say_what_to_do(tmp_path):
    tiny_model("llama", layers=4).save_pretrained(tmp_path)
    skeleton, _ = load_skeleton(tmp_path)
    with pytest.raises(EngineError, match="--engine memory") as raised:
        prune(skeleton, None, PruneConfig(metric="taylor", num_layers=1), random_windows(2, 8))
    from prunecomp.engine.memory import human

    weights = human(SafetensorsCheckpoint(tmp_path).nbytes(list(SafetensorsCheckpoint(tmp_path).weight_map)))
    assert weights.endswith("KB")
    assert "of weights plus as much for their gradients" in str(raised.value) and weights in str(raised.value)
    with pytest.raises(EngineError, match=f"in memory \\(about {weights} of weights\\)"):
        prune(skeleton, None, PruneConfig(metric="mag", num_layers=1), random_windows(2, 8))


def test_engine_settings_are_validated():
    with pytest.raises(ConfigError, match="engine"):
        PruneConfig(engine="warp")
    with pytest.raises(ConfigError, match="2GB"):
        PruneConfig(max_memory="two gigs")


@pytest.mark.parametrize("metric", ["bi", "ppl"])
def test_recipes_agree_with_a_realistic_norm_eps(metric):
    """The cached prefix is s times the old one only up to the norms' eps; with eps small against
    the residual stream's mean square (here 1e-6 against ~4e-2) the recipes still agree."""
    model = tiny_model("llama", layers=7, eps=1e-6)
    windows = random_windows(4, 16)
    settings = dict(metric=metric, num_layers=3)
    assert_same_recipe(run(model, "layerwise", windows, **settings), run(model, "memory", windows, **settings))


def test_scoring_windows_that_prefix_the_scale_windows_share_one_engine():
    """The paper's layout: 2 scoring windows are the first of 4 scale windows. One engine over the
    4 serves both, so the dense pass costs 4 windows, not 2 + 4; the recipe is unchanged."""
    from prunecomp.arch import resolve
    from prunecomp.engine.session import EngineSession

    model = tiny_model("llama", layers=6)
    scale = random_windows(4, 16)
    sets = CalibrationSets.from_windows(scale[:2], scale)
    settings = dict(metric="bi", num_layers=2, estimator="channel_mean_windows")
    assert_same_recipe(run(model, "layerwise", sets, **settings), run(model, "memory", sets, **settings))
    session = EngineSession(resolve(copy.deepcopy(model)), "layerwise", batch_size=2, superset=scale)
    session.stats(scale[:2])
    session.stats(scale)
    assert session.cost.token_layer_evals == 6 * scale.numel()


def test_auto_falls_back_to_whole_model_passes_when_the_cache_would_not_fit(monkeypatch, capsys):
    from prunecomp.arch import resolve
    from prunecomp.engine import session as session_module

    monkeypatch.setattr(session_module, "available_memory", lambda: 1000)  # bytes: nothing fits
    model = tiny_model("llama", layers=4)
    windows = random_windows(2, 8)
    session = session_module.EngineSession(resolve(model), "auto")
    session.stats(windows)
    assert session.kind == "memory" and "whole-model passes" in capsys.readouterr().err
    monkeypatch.setattr(session_module, "available_memory", lambda: 10**12)
    session = session_module.EngineSession(resolve(model), "auto")
    session.stats(windows)
    assert session.kind == "layerwise"
