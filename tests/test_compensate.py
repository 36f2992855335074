import math

import pytest
import torch

from prunecomp.arch import resolve
from prunecomp.calib.capture import capture_stats
from prunecomp.compensate import CompensationError, estimate_scale, fold_scale
from prunecomp.surgery import remove_layers
from tiny import random_windows, tiny_model


def test_estimator_is_the_channel_average_of_ratios():
    m_in = torch.tensor([1.0, 2.0, 100.0])
    m_out = torch.tensor([2.0, 2.0, 150.0])
    assert estimate_scale(m_in, m_out) == pytest.approx((2.0 + 1.0 + 1.5) / 3)
    # a magnitude-weighted ratio would be dominated by the massive channel
    assert float(m_out.sum() / m_in.sum()) == pytest.approx(154 / 103)


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 1.0])])
def test_estimator_rejects_degenerate_inputs(bad):
    with pytest.raises(CompensationError):
        estimate_scale(bad, torch.ones(2))


@pytest.mark.parametrize("scale", [0.0, -2.0, math.inf, math.nan])
def test_fold_rejects_non_positive_or_non_finite(scale):
    arch = resolve(tiny_model())
    with pytest.raises(CompensationError):
        fold_scale(arch, 1, scale)


def test_fold_works_in_float32_and_casts_back():
    model = tiny_model().to(torch.bfloat16)
    arch = resolve(model)
    fold_scale(arch, 2, 1.25)
    assert arch.embedding().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "gemma2", "gemma3"])
def test_removing_a_layer_with_its_scale_restores_the_next_input_magnitude(arch_name):
    model = tiny_model(arch_name, layers=6)
    arch = resolve(model)
    windows = random_windows(6, 32)
    i = 2
    original = capture_stats(arch, windows).channel_mean_abs
    scale = estimate_scale(original[i], original[i + 1])
    fold_scale(arch, i, scale)
    remove_layers(arch, [i])
    after = capture_stats(arch, windows).channel_mean_abs
    # the layer that was i+1 now sits at i; the channel-averaged gain from its new input to its original input is 1
    assert estimate_scale(after[i], original[i + 1]) == pytest.approx(1.0, abs=1e-5)
    # and the states before the cut are exactly s times the originals
    assert torch.allclose(after[: i + 1], scale * original[: i + 1], rtol=1e-5)
    # without compensation the gap would be there
    assert abs(scale - 1.0) > 1e-3


def test_token_rms_estimator_is_the_ratio_of_mean_token_rms():
    from prunecomp.compensate import block_scale

    model = tiny_model(layers=4)
    arch = resolve(model)
    windows = random_windows(2, 16)
    stats = capture_stats(arch, windows)
    states = []
    from prunecomp.calib.capture import residual_hooks

    with residual_hooks(arch, lambda i, h: states.append(h.clone())), torch.no_grad():
        arch.base_model()(input_ids=windows)
    rms = [float(h.pow(2).mean(-1).sqrt().mean()) for h in states]
    assert block_scale(stats, 1, 3, "token_rms") == pytest.approx(rms[3] / rms[1], rel=1e-5)
    assert block_scale(stats, 1, 2) == pytest.approx(estimate_scale(stats.channel_mean_abs[1], stats.channel_mean_abs[2]))


@pytest.mark.parametrize("arch_name,expected", [("llama", "channel_mean"), ("gemma3", "token_rms"), ("gemma2", "token_rms")])
def test_auto_estimator_follows_the_spec_and_is_recorded(arch_name, expected):
    from prunecomp import PruneConfig, prune

    result = prune(tiny_model(arch_name, layers=5), None, PruneConfig(metric="bi", num_layers=1), random_windows(2, 16))
    assert result.recipe.estimator == expected
    explicit = prune(tiny_model(arch_name, layers=5), None, PruneConfig(num_layers=1, estimator="channel_mean"), random_windows(2, 16))
    assert explicit.recipe.estimator == "channel_mean"
