import pytest
import torch

from prunecomp.arch import resolve
from prunecomp.calib.capture import capture_stats, residual_hooks
from tiny import random_windows, tiny_model


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_stats_match_hidden_states_computed_directly(arch_name):
    model = tiny_model(arch_name, layers=4)
    arch = resolve(model)
    windows = random_windows(3, 16)
    stats = capture_stats(arch, windows, block_sizes=(1, 2), batch_size=2)
    states = []
    with residual_hooks(arch, lambda i, h: states.append((i, h.clone()))):
        with torch.no_grad():
            arch.base_model()(input_ids=windows)
    by_index = {i: h for i, h in states}
    assert sorted(by_index) == list(range(5))
    for l in range(5):
        assert torch.allclose(stats.channel_mean_abs[l].float(), by_index[l].abs().mean(dim=(0, 1)), rtol=1e-5)
    for l in range(3):
        cos = torch.nn.functional.cosine_similarity(by_index[l], by_index[l + 2], dim=-1)
        assert float(stats.cos_distance[2][l]) == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert stats.num_tokens == 3 * 16
    assert stats.gain_ratio().shape == (4,) and stats.magnitude().shape == (5,)


def test_hooks_are_removed_even_when_the_forward_fails():
    model = tiny_model(layers=3)
    arch = resolve(model)

    def boom(i, h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with residual_hooks(arch, boom):
            arch.base_model()(input_ids=random_windows(1, 8))
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in arch.layers())
