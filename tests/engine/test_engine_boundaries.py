"""The boundary engine gives the loop what its straightforward path computes: statistics equal to
capture_stats and PPL-metric losses equal to skip_loss, before and after compensated rounds."""

from __future__ import annotations

import pytest
import torch

from prunecomp.arch import resolve
from prunecomp.calib.capture import capture_stats
from prunecomp.engine import BoundaryEngine, BoundaryStore
from prunecomp.metrics.base import ScoreContext
from prunecomp.metrics.perplexity import skip_loss
from prunecomp.prune import apply_round
from tiny import ARCHS, random_windows, tiny_model

ROUNDS = ((2, 1, 1.3), (4, 1, 0.8), (1, 2, 1.1))  # (start, size, scale) applied in turn


def assert_stats_close(fast, slow, block_sizes):
    torch.testing.assert_close(fast.channel_mean_abs, slow.channel_mean_abs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast.token_rms, slow.token_rms, rtol=1e-5, atol=1e-7)
    for n in block_sizes:
        torch.testing.assert_close(fast.cos_distance[n], slow.cos_distance[n], rtol=1e-4, atol=1e-6)
    assert fast.num_tokens == slow.num_tokens


@pytest.mark.parametrize("arch_name", ARCHS)
def test_stats_match_capture_through_rounds(arch_name):
    model = tiny_model(arch_name, layers=8)
    arch = resolve(model)
    windows = random_windows(5, 20)
    engine = BoundaryEngine(arch, windows, batch_size=2)
    kept = list(range(arch.num_layers()))
    for start, size, scale in ((None, None, None),) + ROUNDS:
        if start is not None:
            apply_round(arch, kept, start, size, scale)
            engine.after_round(start, size, scale)
        for blocks in ((1,), (2,)):
            assert_stats_close(engine.stats(blocks), capture_stats(arch, windows, blocks, batch_size=2), blocks)


def test_rounds_rerun_only_the_layers_after_the_cut():
    model = tiny_model("llama", layers=8)
    arch = resolve(model)
    windows = random_windows(4, 16)
    engine = BoundaryEngine(arch, windows, batch_size=4)
    engine.stats()
    tokens = windows.numel()
    assert engine.cost.token_layer_evals == 8 * tokens  # one pass
    kept = list(range(8))
    apply_round(arch, kept, 5, 1, 1.2)
    engine.after_round(5, 1, 1.2)
    engine.stats()
    assert engine.cost.token_layer_evals == (8 + 2) * tokens  # layers 5, 6 of the 7 left ran again


@pytest.mark.parametrize("arch_name", ARCHS)
def test_skip_losses_match_skip_loss(arch_name):
    model = tiny_model(arch_name, layers=6, tied=arch_name != "qwen3")
    arch = resolve(model)
    windows = random_windows(3, 16)
    engine = BoundaryEngine(arch, windows, batch_size=2)
    kept = list(range(arch.num_layers()))
    for start, size, scale in ((None, None, None), (3, 1, 1.25), (0, 1, 0.9)):
        if start is not None:
            apply_round(arch, kept, start, size, scale)
            engine.after_round(start, size, scale)
        slow = skip_loss(ScoreContext(arch, windows, None, batch_size=2))
        torch.testing.assert_close(engine.skip_losses(), slow, rtol=1e-5, atol=1e-6)


def test_skip_losses_cost_half_of_rerunning_the_model():
    layers = 10
    model = tiny_model("llama", layers=layers)
    windows = random_windows(2, 16)
    engine = BoundaryEngine(resolve(model), windows, batch_size=2)
    engine.skip_losses()
    pass_cost = layers * windows.numel()
    assert engine.cost.token_layer_evals == pass_cost + layers * (layers - 1) // 2 * windows.numel()


def test_spilled_boundaries_give_the_same_stats(tmp_path):
    model = tiny_model("qwen2", layers=6)
    arch = resolve(model)
    windows = random_windows(4, 16)
    in_memory = BoundaryEngine(arch, windows, batch_size=2)
    store = BoundaryStore(capacity=0, spill_dir=tmp_path)
    on_disk = BoundaryEngine(arch, windows, batch_size=2, store=store)
    assert_stats_close(on_disk.stats(), in_memory.stats(), (1,))
    torch.testing.assert_close(on_disk.skip_losses(), in_memory.skip_losses())
    assert store.spilled_writes > 0
    on_disk.close()
    assert not any(f for d in tmp_path.iterdir() for f in d.iterdir())  # the engine's files are gone
    store.close()
    assert not any(tmp_path.iterdir())


def test_per_window_means_match_capture():
    model = tiny_model("llama", layers=5)
    arch = resolve(model)
    windows = random_windows(5, 12)
    engine = BoundaryEngine(arch, windows, batch_size=2)
    kept = list(range(5))
    apply_round(arch, kept, 2, 1, 1.5)
    engine.after_round(2, 1, 1.5)
    try:
        slow = capture_stats(arch, windows, (1,), batch_size=2, per_window=True)
    except TypeError:
        pytest.skip("this checkout's capture_stats has no per-window statistics")
    torch.testing.assert_close(engine.stats(per_window=True).window_channel_mean_abs, slow.window_channel_mean_abs,
                               rtol=1e-5, atol=1e-7)


def test_changed_weights_before_a_boundary_are_recomputed_from_there():
    """after_round(i - 1, 0, 1.0) says "layer i - 1 changed" (a fitted map folded into it); -1 means
    the embedding changed. The engine recomputes from there and matches a fresh pass."""
    model = tiny_model("llama", layers=5)
    arch = resolve(model)
    windows = random_windows(3, 12)
    engine = BoundaryEngine(arch, windows, batch_size=2)
    engine.stats()
    with torch.no_grad():
        arch.layers()[2].mlp.down_proj.weight.mul_(1.5)
    engine.after_round(2, 0, 1.0)
    assert_stats_close(engine.stats(), capture_stats(arch, windows, (1,), batch_size=2), (1,))
    with torch.no_grad():
        arch.embedding().weight.mul_(0.5)
    engine.after_round(-1, 0, 1.0)
    assert_stats_close(engine.stats(), capture_stats(arch, windows, (1,), batch_size=2), (1,))
