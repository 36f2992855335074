
import pytest
import torch

from prunecomp import ConfigError, PruneConfig, Recipe, RecipeError, apply_recipe, prune
from prunecomp.arch import resolve
from prunecomp.prune import NOTE_DISABLED, NOTE_LAST, _contiguous_runs
from tiny import random_windows, tiny_model


def run(metric="bi", k=2, arch="llama", layers=8, **kwargs):
    model = tiny_model(arch, layers=layers)
    config = PruneConfig(metric=metric, num_layers=k, **kwargs)
    return prune(model, None, config, random_windows(4, 24))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("metric", ["bi", "taylor", "mag", "ppl", "reverse", "random"])
def test_iterative_records_one_round_per_layer(metric):
    result = run(metric, k=2)
    recipe = result.recipe
    assert recipe.mode == "iterative" and len(recipe.rounds) == 2
    assert resolve(result.model).num_layers() == 6
    assert result.model.config.num_hidden_layers == 6
    first = recipe.rounds[0]
    assert first.candidates == list(range(8)) and len(first.scores) == 8
    assert len(recipe.rounds[1].candidates) == 7 and first.removed[0] not in recipe.rounds[1].candidates
    for step in recipe.rounds:
        assert step.scale > 0
        assert (step.scale == 1.0) == (step.scale_note is not None)
    assert result.params_after < result.params_before


def test_barrier_of_weight_metrics_is_respected_and_recorded():
    recipe = run("mag", k=2).recipe
    assert all(4 <= i < 6 for i in recipe.removed_layers)
    assert recipe.rounds[0].scores[:4] == [None] * 4 and recipe.rounds[0].scores[-2:] == [None, None]
    with pytest.raises(ConfigError, match="barrier"):
        run("mag", k=3, layers=8)


def test_reverse_removes_the_last_layers_without_a_scale():
    recipe = run("reverse", k=2).recipe
    assert [r.removed for r in recipe.rounds] == [[7], [6]]
    assert all(r.scale == 1.0 and r.scale_note == NOTE_LAST for r in recipe.rounds)


def test_no_comp_records_unit_scales():
    recipe = run("bi", k=2, compensate=False).recipe
    assert all(r.scale == 1.0 and r.scale_note == NOTE_DISABLED for r in recipe.rounds)


def test_one_shot_scores_once_and_compensates_each_run():
    assert _contiguous_runs([5, 1, 2, 7]) == [(1, 2), (5, 1), (7, 1)]
    result = run("random", k=3, iterative=False, seed=3)
    recipe = result.recipe
    assert recipe.mode == "one-shot"
    assert len({tuple(r.scores) for r in recipe.rounds}) == 1  # a single scoring pass
    removed = recipe.removed_layers
    assert len(removed) == 3
    expected = sorted(range(8), key=lambda i: recipe.rounds[0].scores[i])[:3]
    assert removed == sorted(expected)
    # applied deepest-first so earlier indices stay valid
    assert [r.removed[0] for r in recipe.rounds] == sorted((r.removed[0] for r in recipe.rounds), reverse=True)


def test_cl_removes_one_contiguous_block_with_one_scale():
    recipe = run("cl", k=3).recipe
    assert recipe.mode == "block" and len(recipe.rounds) == 1
    block = recipe.rounds[0].removed
    assert block == list(range(block[0], block[0] + 3))
    assert len(recipe.rounds[0].scores) == 8 - 3 + 1


@pytest.mark.parametrize("metric,kwargs", [("bi", {}), ("cl", {}), ("taylor", {}), ("random", {"iterative": False})])
def test_recipe_replay_is_bitwise_identical(metric, kwargs, tmp_path):
    result = run(metric, k=2, arch="gemma3", **kwargs)
    path = tmp_path / "recipe.json"
    result.recipe.save(path)
    fresh = tiny_model("gemma3", layers=8)
    apply_recipe(fresh, Recipe.load(path))
    pruned, replayed = state(result.model), state(fresh)
    assert pruned.keys() == replayed.keys()
    assert all(torch.equal(pruned[k], replayed[k]) for k in pruned)
    assert fresh.config.layer_types == result.model.config.layer_types


def test_same_seed_same_recipe():
    a = run("random", k=3, seed=11).recipe
    b = run("random", k=3, seed=11).recipe
    c = run("random", k=3, seed=12).recipe
    assert a.rounds == b.rounds
    assert a.rounds != c.rounds


def test_replay_checks_the_model():
    recipe = run("bi", k=1).recipe
    with pytest.raises(RecipeError, match="layers"):
        apply_recipe(tiny_model(layers=6), recipe)
    data = recipe.to_dict() | {"schema_version": 99}
    with pytest.raises(RecipeError, match="schema_version"):
        Recipe.from_dict(data)


def test_rejects_removing_too_many():
    with pytest.raises(ConfigError):
        run("bi", k=8)
