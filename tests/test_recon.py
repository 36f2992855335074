import copy

import pytest
import torch

from prunecomp import PruneConfig, RecipeError, apply_recipe, prune
from prunecomp.arch import resolve
from prunecomp.linear_comp import MAPS_FILENAME, CompMethod, LinearCompError, load_maps, parse_comp, save_maps
from prunecomp.recon import capture_dense_streams, layers_to_refit, reconstruct
from tiny import random_windows, tiny_model

NEAR_EXACT = CompMethod(scalar=False, recon=True, objective="l2", ridge_grid=(1e-8,))


def test_comp_names_parse_and_refuse_mixing_per_cut_maps_with_the_refit():
    assert parse_comp("scalar+recon").name == "scalar+recon"
    assert parse_comp("recon-rel") == CompMethod(scalar=False, recon=True, objective="rel")
    assert parse_comp("scalar+recon").fits_maps and not parse_comp("scalar+recon").linear
    assert PruneConfig(comp="scalar+recon").compensate
    with pytest.raises(LinearCompError, match="either"):
        CompMethod(linear=True, recon=True)


def test_refit_covers_the_layer_before_the_first_cut_and_everything_after_it():
    assert layers_to_refit(list(range(6)), 6) == []
    assert layers_to_refit([0, 1, 3, 5], 6) == [1, 2, 3]  # originals 1, 3, 5
    assert layers_to_refit([1, 2, 3], 4) == [0, 1, 2]  # layer 0 removed: every kept layer


def _perplexing_windows():
    return random_windows(8, 48, seed=3)


def test_a_known_map_on_a_layers_writer_is_undone_by_the_refit():
    """Distort one layer's down projection by (I + E)^-1: matching the dense stream after that
    layer needs exactly E on down_proj and nothing on o_proj, which the fit recovers."""
    dense = tiny_model("llama", layers=4, eps=1e-6)
    windows = _perplexing_windows()
    streams = capture_dense_streams(resolve(dense), windows, NEAR_EXACT)
    distorted = copy.deepcopy(dense)
    arch = resolve(distorted)
    down = arch.layers()[2].mlp.down_proj
    d = down.weight.shape[0]
    e = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.2
    with torch.no_grad():
        down.weight.copy_((torch.linalg.solve(torch.eye(d, dtype=torch.float64) + e, down.weight.double())).float())
    maps = reconstruct(arch, windows, list(range(4)), 4, streams, NEAR_EXACT, layers=[2])
    (o_delta, down_delta) = maps[2].deltas
    assert maps[2].writer_names[-1].endswith("down_proj") and maps[2].holdout_gain < 1e-6
    assert torch.allclose(down_delta, e, atol=2e-3) and o_delta.abs().max() < 2e-3
    with torch.no_grad():  # and the refitted model computes what the dense one does
        assert torch.allclose(distorted(windows).logits, dense(windows).logits, atol=1e-3)


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_recon_brings_the_pruned_stream_closer_to_the_dense_one_and_replays_bitwise(tmp_path, arch_name):
    windows = _perplexing_windows()
    dense = tiny_model(arch_name, layers=6)
    streams = capture_dense_streams(resolve(dense), windows, NEAR_EXACT)

    def final_error(model):
        pruned = capture_dense_streams(resolve(model), windows, NEAR_EXACT).states[-1]
        return float((pruned - streams.states[-1]).pow(2).mean())

    scalar = prune(tiny_model(arch_name, layers=6), None, PruneConfig(metric="bi", num_layers=2), windows)
    recon = prune(tiny_model(arch_name, layers=6), None, PruneConfig(metric="bi", num_layers=2, comp="scalar+recon"),
                  windows)
    layerwise = prune(tiny_model(arch_name, layers=6), None,
                      PruneConfig(metric="bi", num_layers=2, comp="scalar+recon", engine="layerwise"), windows)
    assert all(torch.equal(a, b) for a, b in zip(recon.model.state_dict().values(), layerwise.model.state_dict().values()))
    assert recon.recipe.removed_layers == scalar.recipe.removed_layers  # the refit comes after the choice
    assert [r.scale for r in recon.recipe.rounds] == [r.scale for r in scalar.recipe.rounds]
    kept = [i for i in range(6) if i not in recon.recipe.removed_layers]
    assert sorted(recon.recon_maps) == [kept[c] for c in layers_to_refit(kept, 6)]
    assert set(recon.recipe.calibration["comp_recon"]) == {str(o) for o in recon.recon_maps}
    assert recon.recipe.calibration["comp"] == "scalar+recon"
    assert any(m.num_values() and any(d.abs().max() > 0 for d in m.deltas) for m in recon.recon_maps.values())
    assert final_error(recon.model) < final_error(scalar.model)
    # same parameters as the plain pruned model
    assert {k: v.shape for k, v in recon.model.state_dict().items()} == {
        k: v.shape for k, v in scalar.model.state_dict().items()}
    save_maps(recon.maps, tmp_path / MAPS_FILENAME, recon=recon.recon_maps)
    replayed = apply_recipe(tiny_model(arch_name, layers=6), recon.recipe, load_maps(tmp_path / MAPS_FILENAME))
    assert all(torch.equal(a, b) for a, b in zip(recon.model.state_dict().values(), replayed.state_dict().values()))
    with pytest.raises(RecipeError, match="maps"):
        apply_recipe(tiny_model(arch_name, layers=6), recon.recipe)


def test_recon_refuses_to_resume_a_checkpointed_run():
    from prunecomp.config import ConfigError
    from prunecomp.prune import _replay_partial

    config = PruneConfig(metric="bi", num_layers=1, comp="scalar+recon")
    with pytest.raises(ConfigError, match="from the start"):
        _replay_partial(None, [], None, None, config)


def test_the_dense_stream_size_is_what_is_captured_and_too_much_of_it_is_refused_before_any_work(monkeypatch):
    import prunecomp.recon as recon
    from prunecomp.engine.memory import MemoryBudgetError

    model = tiny_model("llama", layers=4)
    windows = _perplexing_windows()
    streams = capture_dense_streams(resolve(model), windows, NEAR_EXACT)
    captured = sum(s.numel() * s.element_size() for s in streams.states)
    assert recon.dense_stream_bytes(resolve(model), windows, NEAR_EXACT) == captured

    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(recon, "available_memory", lambda: 2 * captured - 2)  # half of it is just too little
    with pytest.raises(MemoryBudgetError, match="dense model's stream at every layer boundary"):
        prune(model, None, PruneConfig(metric="bi", num_layers=1, comp="scalar+recon"), windows)
    assert len(resolve(model).layers()) == 4  # nothing was pruned
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    monkeypatch.setattr(recon, "available_memory", lambda: 2 * captured)
    assert len(prune(model, None, PruneConfig(metric="bi", num_layers=1, comp="scalar+recon"), windows).recipe.removed_layers) == 1
