"""The paper preset's loop details and explicit layer lists (--remove)."""

import pytest
import torch

from prunecomp import PruneConfig, prune
from prunecomp.arch import resolve
from prunecomp.calib.capture import capture_stats
from prunecomp.calib.sets import CalibrationSets
from prunecomp.compensate import block_scale, fold_scale
from prunecomp.config import ConfigError
from prunecomp.metrics import ScoreContext
from prunecomp.metrics.weights import magnitude
from prunecomp.prune import apply_recipe
from calib.test_paper_protocol import write_paper_data
from tiny import random_windows, tiny_model, tiny_tokenizer


def test_remove_drops_exactly_those_layers_with_one_scale_per_run():
    model = tiny_model("llama", layers=8)
    windows = random_windows(4, 16)
    dense = capture_stats(resolve(model), windows)
    result = prune(model, None, PruneConfig(remove=(2, 3, 6)), windows)
    recipe = result.recipe
    assert recipe.removed_layers == [2, 3, 6] and recipe.mode == "explicit" and recipe.metric == "explicit"
    assert [r.removed for r in recipe.rounds] == [[6], [2, 3]]  # deepest run first
    assert recipe.rounds[0].scale == pytest.approx(block_scale(dense, 6, 7))
    assert recipe.rounds[1].scale == pytest.approx(block_scale(dense, 2, 4))
    assert resolve(model).num_layers() == 5
    replayed = apply_recipe(tiny_model("llama", layers=8), recipe)
    for a, b in zip(model.state_dict().values(), replayed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("remove, message", [((8,), "does not exist"), ((1, 1), "twice"), ((-1,), "negative"), ((), "at least one")])
def test_remove_refuses_bad_indices(remove, message):
    with pytest.raises(ConfigError, match=message):
        prune(tiny_model("llama", layers=8), None, PruneConfig(remove=remove), random_windows(2, 8))


def test_remove_without_compensation_records_unit_scales():
    result = prune(tiny_model("llama", layers=6), None, PruneConfig(remove=(1, 4), compensate=False), random_windows(2, 8))
    assert [r.scale for r in result.recipe.rounds] == [1.0, 1.0]


def test_scale_comes_from_the_scale_windows():
    model = tiny_model("llama", layers=6)
    score, scale = random_windows(2, 16, seed=1), random_windows(6, 16, seed=2)
    expected = capture_stats(resolve(tiny_model("llama", layers=6)), scale)
    on_score = capture_stats(resolve(tiny_model("llama", layers=6)), score)
    result = prune(model, None, PruneConfig(metric="bi", num_layers=1, protect_last=1), CalibrationSets(score, scale))
    chosen = result.recipe.rounds[0].removed[0]
    assert chosen == int(torch.argmin(on_score.cos_distance[1][:-1]))  # scored on the scoring windows
    assert result.recipe.rounds[0].scale == pytest.approx(block_scale(expected, chosen, chosen + 1))
    assert block_scale(expected, chosen, chosen + 1) != pytest.approx(block_scale(on_score, chosen, chosen + 1))


def test_windowed_estimator_averages_ratios_per_window():
    model = tiny_model("llama", layers=4)
    windows = random_windows(3, 16)
    stats = capture_stats(resolve(model), windows, per_window=True)
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    per_window = [(hidden[2][w].abs().mean(0).double() / hidden[1][w].abs().mean(0).double()) for w in range(3)]
    expected = float(torch.stack(per_window).mean(0).mean())
    assert block_scale(stats, 1, 2, "channel_mean_windows") == pytest.approx(expected, rel=1e-5)


def test_norm_weights_add_their_magnitude():
    arch = resolve(tiny_model("qwen3", layers=3))
    plain = magnitude(ScoreContext(arch, None, None))
    with_norms = magnitude(ScoreContext(arch, None, None, norm_weights=True))
    layer = arch.layers()[1]
    norms = [layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.q_norm, layer.self_attn.k_norm]
    assert float(with_norms[1] - plain[1]) == pytest.approx(sum(float(n.weight.detach().abs().sum()) for n in norms), rel=1e-6)


def test_raw_magnitude_sees_the_fold_and_unfolded_does_not():
    arch = resolve(tiny_model("llama", layers=4))
    before = magnitude(ScoreContext(arch, None, None))
    fold_scale(arch, 2, 2.0)
    raw = magnitude(ScoreContext(arch, None, None))  # the official Mag+: raw |W| after compensation
    unfolded = magnitude(ScoreContext(arch, None, None, writer_scales=[2.0, 2.0, 1.0, 1.0]))
    assert torch.allclose(unfolded, before, rtol=1e-6)
    assert bool((raw[:2] > before[:2]).all()) and torch.allclose(raw[2:], before[2:])


def test_the_preset_keeps_the_ppl_metric_off_the_first_and_last_layer():
    assert PruneConfig.paper("ppl").barrier() == (1, 1)
    assert PruneConfig.paper("taylor").barrier() == (4, 2)
    result = prune(tiny_model("llama", layers=5), None, PruneConfig.paper("ppl", 2), random_windows(2, 12))
    for step in result.recipe.rounds:
        assert step.scores[0] is None and step.scores[-1] is None
        assert all(s is not None for s in step.scores[1:-1])


def test_preset_end_to_end_records_the_protocol_and_substitution(tmp_path, monkeypatch):
    write_paper_data(tmp_path)
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = PruneConfig.paper("taylor", 1).with_calibration_size(4, None, 48)
    assert config.calib.scale_windows == 4 and config.score_calib.num_windows == 10
    with pytest.raises(Exception, match="--allow-substitute"):  # C4 train is not here, and the local sample is no substitute by default
        prune(tiny_model("llama", layers=8), tiny_tokenizer(), config)
    config = PruneConfig.paper("taylor", 1, allow_substitute=True).with_calibration_size(4, None, 48)
    recipe = prune(tiny_model("llama", layers=8), tiny_tokenizer(), config).recipe
    info = recipe.calibration
    assert info["preset"] == "paper" and info["sampler"] == "paper" and info["resolved"] == "wikitext2:train"
    assert info["scoring"]["sampler"] == "document_crops" and info["scoring"]["substitute_for"] == "c4:train"
    assert info["substitutions"] == ["c4:train -> c4:1000docs"]
    assert info["norm_weights"] is True and info["gradients"] == "float32"
    assert recipe.estimator == "channel_mean_windows" and 4 <= recipe.removed_layers[0] < 6


def test_bi_preset_scores_on_the_first_half_of_the_scale_windows():
    config = PruneConfig.paper("bi", 2)
    assert (config.calib.num_windows, config.calib.scale_windows, config.calib.seqlen) == (128, 256, 2048)
    small = config.with_calibration_size(8, None, 64)
    assert (small.calib.num_windows, small.calib.scale_windows, small.calib.seqlen) == (8, 16, 64)
    assert small.calib.drawn_windows == 16
