import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunecomp import PruneConfig, prune
from prunecomp.arch import resolve
from prunecomp.linear_comp import (
    CompMethod,
    CutCapture,
    CutMap,
    LinearCompError,
    capture_cut,
    fit_cut,
    fold_cut_map,
    load_maps,
    map_writers,
    parse_comp,
    prune_with_comp,
    replay_with_comp,
    save_maps,
)
from tiny import random_windows, tiny_model

EXACT = CompMethod(scalar=False, linear=True, objective="l2", ridge_grid=(1e-10,))


def synthetic_capture(kind: str, n=4000, d=6, k=2, windows=8, seed=0):
    """Writer outputs x, a base stream and target = base + true map applied to x (no noise)."""
    g = torch.Generator().manual_seed(seed)
    writers = torch.randn(n, k, d, generator=g)
    base = torch.randn(n, d, generator=g)
    if kind == "matrix":
        truth = [torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3 for _ in range(k)]
        target = base.double() + sum(writers[:, i].double() @ truth[i].T for i in range(k))
    else:
        truth = [torch.randn(d, generator=g, dtype=torch.float64) * 0.3 for _ in range(k)]
        target = base.double() + sum(writers[:, i].double() * truth[i] for i in range(k))
    window = torch.arange(n) % windows
    capture = CutCapture(writers, base, target.float(), window, [f"w{i}" for i in range(k)], kind)
    return capture, truth


@pytest.mark.parametrize("kind", ["matrix", "diagonal"])
def test_a_known_linear_map_is_recovered(kind):
    capture, truth = synthetic_capture(kind)
    cut = fit_cut(capture, 1.0, EXACT, layer=3)
    assert cut.kind == kind and cut.layer == 3 and cut.holdout_gain < 1e-6
    for fitted, true in zip(cut.deltas, truth):
        assert torch.allclose(fitted, true, atol=1e-4)


def test_the_scalar_is_accounted_for_when_fitting():
    capture, truth = synthetic_capture("matrix", seed=1)
    scale = 1.3
    # what the stream looks like after folding `scale` before the cut: target = s*base + D (s*x)
    scaled_target = capture.base.double() * scale + sum(
        (capture.writers[:, i].double() * scale) @ truth[i].T for i in range(2))
    capture = CutCapture(capture.writers, capture.base, scaled_target.float(), capture.window, capture.writer_names, "matrix")
    cut = fit_cut(capture, scale, EXACT, layer=1)
    for fitted, true in zip(cut.deltas, truth):
        assert torch.allclose(fitted, true, atol=1e-4)


def test_pure_noise_gets_no_map():
    capture, _ = synthetic_capture("matrix", seed=2)
    noise = capture.base + torch.randn(capture.base.shape, generator=torch.Generator().manual_seed(9))
    capture = CutCapture(capture.writers, capture.base, noise, capture.window, capture.writer_names, "matrix")
    cut = fit_cut(capture, 1.0, CompMethod(scalar=False, linear=True, objective="l2", ridge_grid=(1e-6,)), 0)
    # a tiny ridge on pure noise does not beat the zero map on held-out windows
    assert math.isinf(cut.ridge) and all(bool((d == 0).all()) for d in cut.deltas)


def writer_output_hooks(arch, layer, cut: CutMap):
    """Apply (I + D) to the writers' outputs with hooks: the reference the fold must equal."""
    kind, modules, _ = map_writers(arch, layer, CompMethod(linear=True))
    handles = []
    for module, delta in zip(modules, cut.deltas):
        if kind == "matrix":
            hook = lambda m, a, out, d=delta: out + (out.double() @ d.T).to(out.dtype)  # noqa: E731
        else:
            hook = lambda m, a, out, d=delta: (out.double() * (1 + d)).to(out.dtype)  # noqa: E731
        handles.append(module.register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "gemma3"])
def test_the_fold_is_exact(arch_name):
    model = tiny_model(arch_name, layers=4)
    arch = resolve(model)
    kind, modules, names = map_writers(arch, 1, CompMethod(linear=True))
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    shape = (d, d) if kind == "matrix" else (d,)
    cut = CutMap(1, kind, names, [torch.randn(shape, generator=g, dtype=torch.float64) * 0.1 for _ in names], 0.0, 0.5)
    ids = random_windows(2, 16)
    with torch.no_grad():
        handles = writer_output_hooks(arch, 1, cut)
        reference = model(input_ids=ids).logits
        for h in handles:
            h.remove()
        fold_cut_map(arch, cut)
        folded = model(input_ids=ids).logits
    assert float((folded - reference).norm() / reference.norm()) < 1e-5


def test_folding_a_zero_map_changes_nothing():
    model = tiny_model("llama", layers=4)
    arch = resolve(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kind, _, names = map_writers(arch, 2, CompMethod(linear=True))
    fold_cut_map(arch, CutMap(2, kind, names, [torch.zeros(32, 32, dtype=torch.float64) for _ in names], 0.0, 1.0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_capture_stops_at_the_next_kept_layer_and_sees_the_right_streams():
    model = tiny_model("llama", layers=5)
    arch = resolve(model)
    windows = random_windows(4, 12)
    capture = capture_cut(arch, windows, 2, 2, CompMethod(linear=True, skip_first_tokens=0))
    hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    assert capture.writers.shape == (4 * 12, 2, 32)
    assert torch.allclose(capture.base, hidden[2].reshape(-1, 32), atol=1e-5)
    assert torch.allclose(capture.target, hidden[4].reshape(-1, 32), atol=1e-5)
    with pytest.raises(LinearCompError):
        capture_cut(arch, windows, 0, 1, CompMethod(linear=True))


def boundary_error(model, windows, removed_at, reference):
    """Mean relative error of the stream entering current layer `removed_at` against `reference`."""
    states = model(input_ids=windows, output_hidden_states=True).hidden_states[removed_at]
    return float(((states - reference).norm(dim=-1) / reference.norm(dim=-1)).mean())


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_the_fitted_map_brings_the_next_layer_input_closer_than_the_scalar(arch_name):
    windows = random_windows(8, 24)
    dense = tiny_model(arch_name, layers=6)
    target = dense(input_ids=windows, output_hidden_states=True).hidden_states
    errors = {}
    for name in ("scalar", "scalar+linear-rel"):
        model = tiny_model(arch_name, layers=6)
        config = PruneConfig(metric="reverse", num_layers=1, protect_last=1)  # removes current layer 4
        result = prune_with_comp(model, config, windows, parse_comp(name))
        assert result.removed_layers == [4]
        with torch.no_grad():
            errors[name] = boundary_error(model, windows, 4, target[5])
    assert errors["scalar+linear-rel"] < errors["scalar"]


def test_scalar_method_matches_the_library_loop_bitwise():
    windows = random_windows(4, 24)
    config = PruneConfig(metric="bi", num_layers=2)
    ours = prune_with_comp(tiny_model(layers=6), config, windows, parse_comp("scalar")).model
    library = prune(tiny_model(layers=6), None, config, windows).model
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), library.state_dict().values()))


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_replay_from_saved_maps_gives_identical_weights(tmp_path, arch_name):
    windows = random_windows(6, 24)
    config = PruneConfig(metric="bi", num_layers=2)
    result = prune_with_comp(tiny_model(arch_name, layers=6), config, windows, parse_comp("scalar+linear-rel"))
    assert any(r.map is not None for r in result.rounds)
    save_maps(result.maps(), tmp_path / "maps.safetensors")
    replayed = replay_with_comp(tiny_model(arch_name, layers=6), [r.to_dict() for r in result.rounds],
                                load_maps(tmp_path / "maps.safetensors"))
    pruned, again = result.model.state_dict(), replayed.state_dict()
    assert pruned.keys() == again.keys()
    assert all(torch.equal(pruned[k], again[k]) for k in pruned)


def test_the_checkpoint_is_a_plain_pruned_model_that_loads_and_generates(tmp_path):
    windows = random_windows(6, 24)
    config = PruneConfig(metric="bi", num_layers=2)
    result = prune_with_comp(tiny_model(layers=6), config, windows, parse_comp("scalar+linear"))
    plain = prune(tiny_model(layers=6), None, PruneConfig(metric="bi", num_layers=2, compensate=False), windows).model
    shapes = {k: v.shape for k, v in result.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    result.model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_windows(1, 10)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-6)
        cached = loaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = loaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_method_names_round_trip():
    for name in ("none", "scalar", "linear", "scalar+linear", "scalar+linear-rel", "linear-cos", "scalar+linear-rel-down"):
        assert parse_comp(name).name == name
    assert parse_comp("linear-l2").name == "linear"
    with pytest.raises(LinearCompError):
        parse_comp("quadratic")


# ---------------------------------------------------------------------------------------------
# the library loop (PruneConfig.comp / select)


def test_config_normalises_comp_and_refuses_contradictions():
    from dataclasses import replace

    from prunecomp import ConfigError

    config = PruneConfig(comp="Linear-REL")
    assert config.comp == "linear-rel" and config.compensate is False and config.comp_method.linear
    assert replace(config, num_layers=2).comp == "linear-rel"  # re-validation is idempotent
    assert PruneConfig(comp="none").compensate is False
    assert PruneConfig().comp_method.name == "scalar" and PruneConfig(compensate=False).comp_method.name == "none"
    with pytest.raises(ConfigError, match="compensate=False"):
        PruneConfig(comp="scalar+linear", compensate=False)
    with pytest.raises(ConfigError, match="unknown compensation"):
        PruneConfig(comp="cubic")
    with pytest.raises(ConfigError, match="select"):
        PruneConfig(select="oracle")


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_library_loop_folds_maps_records_them_and_replays_bitwise(tmp_path, arch_name):
    from prunecomp import RecipeError, apply_recipe
    from prunecomp.linear_comp import MAPS_FILENAME

    windows = random_windows(6, 24)
    results = {}
    for engine in ("memory", "layerwise"):
        config = PruneConfig(metric="bi", num_layers=2, comp="scalar+linear-rel", engine=engine)
        results[engine] = prune(tiny_model(arch_name, layers=6), None, config, windows)
    memory, layerwise = results["memory"], results["layerwise"]
    # the engine's cached boundaries must follow the map folded before each cut
    assert memory.recipe.removed_layers == layerwise.recipe.removed_layers
    assert all(torch.equal(a, b) for a, b in zip(memory.model.state_dict().values(), layerwise.model.state_dict().values()))
    assert memory.maps and memory.recipe.calibration["comp"] == "scalar+linear-rel"
    assert set(memory.recipe.calibration["comp_rounds"]) == {str(i) for i in memory.maps}
    save_maps(memory.maps, tmp_path / MAPS_FILENAME)
    replayed = apply_recipe(tiny_model(arch_name, layers=6), memory.recipe, load_maps(tmp_path / MAPS_FILENAME))
    assert all(torch.equal(a, b) for a, b in zip(memory.model.state_dict().values(), replayed.state_dict().values()))
    with pytest.raises(RecipeError, match="maps"):
        apply_recipe(tiny_model(arch_name, layers=6), memory.recipe)


def test_library_scalar_comp_is_the_plain_prune_and_linear_only_has_no_scale():
    windows = random_windows(4, 24)
    plain = prune(tiny_model(layers=6), None, PruneConfig(metric="bi", num_layers=2), windows)
    named = prune(tiny_model(layers=6), None, PruneConfig(metric="bi", num_layers=2, comp="scalar"), windows)
    assert not named.maps and "comp" not in named.recipe.calibration
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), named.model.state_dict().values()))
    linear = prune(tiny_model(layers=6), None, PruneConfig(metric="bi", num_layers=2, comp="linear"), windows)
    assert all(r.scale == 1.0 for r in linear.recipe.rounds) and linear.maps


def test_compensated_selection_picks_among_the_metrics_best_and_records_it():
    windows = random_windows(4, 24)
    config = PruneConfig(metric="bi", num_layers=1, comp="scalar+linear-rel", select="compensated", select_top=3)
    result = prune(tiny_model(layers=6), None, config, windows)
    scores = result.recipe.rounds[0].scores
    best_three = sorted(range(len(scores)), key=lambda i: scores[i])[:3]
    assert result.recipe.removed_layers[0] in best_three
    assert result.recipe.calibration["select"] == "compensated (top 3)"


@pytest.mark.parametrize("comp", ["scalar+linear-rel", "scalar+recon"])
def test_cli_prune_with_fitted_maps_saves_them_and_apply_replays_them(tmp_path, capsys, comp):
    import json

    from safetensors.torch import load_file

    from prunecomp.cli import main
    from prunecomp.linear_comp import MAPS_FILENAME
    from tiny import SAMPLE_TEXT, tiny_tokenizer

    source = tmp_path / "model"
    tiny_model("llama", layers=6, eps=1e-6).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    common = ["--metric", "bi", "--layers", "2", "--calib", str(calib), "--calib-windows", "6", "--seqlen", "32", "--quiet"]
    out, plain, replay = tmp_path / "linear", tmp_path / "plain", tmp_path / "replay"
    assert main(["prune", str(source), "--comp", comp, "--out", str(out), *common]) == 0
    assert main(["prune", str(source), "--no-comp", "--out", str(plain), *common]) == 0
    recipe = json.loads((out / "prunecomp_recipe.json").read_text())
    assert recipe["calibration"]["comp"] == comp and (out / MAPS_FILENAME).is_file()
    weights, plain_weights = load_file(out / "model.safetensors"), load_file(plain / "model.safetensors")
    # the checkpoint holds exactly the parameters of a plain layer-pruned model
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in plain_weights.items()}
    assert main(["apply", str(source), "--recipe", str(out), "--out", str(replay)]) == 0
    again = load_file(replay / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights) and (replay / MAPS_FILENAME).is_file()
    assert main(["prune", str(source), "--no-comp", "--comp", "scalar+linear", *common]) == 2
    assert "compensate=False" in capsys.readouterr().err


def test_linear_comp_refuses_writers_that_are_not_plain_linear_modules():
    """GPT-2's Conv1D writers cannot take a fitted map: one clear error, no guessing."""
    from prunecomp.arch import resolve
    from prunecomp.linear_comp import LinearCompError, map_writers, parse_comp
    from tiny import tiny_model

    arch = resolve(tiny_model("gpt2", layers=3))
    with pytest.raises(LinearCompError, match="use --comp scalar"):
        map_writers(arch, 1, parse_comp("scalar+linear"))
    kind, modules, names = map_writers(resolve(tiny_model("llama", layers=3)), 1, parse_comp("scalar+linear"))
    assert kind == "matrix" and names == ["self_attn.o_proj", "mlp.down_proj"]
