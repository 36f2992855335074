"""Recipe validation: every malformed recipe is refused with a message naming the problem."""

import json

import pytest

from prunecomp.errors import RecipeError, RecipeMismatch
from prunecomp.recipe import RECIPE_FILENAME, SCHEMA_VERSION, Recipe, Round, check_applicable


def _recipe(**changes) -> dict:
    recipe = Recipe("org/model", "llama", 6, "bi", 2, "iterative", True, "channel_mean", 0, {"source": "c4:train"},
                    rounds=[Round([3], 1.05, candidates=[0, 1, 2, 3, 4, 5], scores=[0.1] * 6), Round([4], 1.0)],
                    source_fingerprint="f" * 32, dtype="float32")
    return recipe.to_dict() | changes


def test_round_trip(tmp_path):
    path = tmp_path / RECIPE_FILENAME
    path.write_text(json.dumps(_recipe()))
    recipe = Recipe.load(tmp_path)
    assert recipe.removed_layers == [3, 4] and recipe.schema_version == SCHEMA_VERSION and recipe.dtype == "float32"
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe


def test_schema_1_recipes_still_load():
    data = _recipe(schema_version=1)
    for key in ("source_fingerprint", "dtype", "warnings"):
        data.pop(key)
    recipe = Recipe.from_dict(data)
    assert recipe.source_fingerprint is None and recipe.warnings == []


def _without(key):
    data = _recipe()
    data.pop(key)
    return data


@pytest.mark.parametrize(
    "data,message",
    [
        ([], "expected a JSON object, found a list"),
        (_recipe(schema_version=99), "schema_version 99 is not supported"),
        (_recipe(schema_version=None), "schema_version None"),
        (_without("rounds"), "missing key rounds"),
        (_without("model_type"), "missing key model_type"),
        (_recipe(surprise=1), "unknown key surprise"),
        (_recipe(rounds=[]), "non-empty list of removal steps"),
        (_recipe(rounds="3"), "non-empty list of removal steps"),
        (_recipe(rounds=[{"removed": [], "scale": 1.0}]), "'removed' must be a non-empty list"),
        (_recipe(rounds=[{"removed": ["3"], "scale": 1.0}]), "'removed' must be a non-empty list"),
        (_recipe(rounds=[{"removed": [57], "scale": 1.0}], num_layers_removed=1), "layer 57, which does not exist"),
        (_recipe(rounds=[{"removed": [-1], "scale": 1.0}], num_layers_removed=1), "layer -1, which does not exist"),
        (_recipe(rounds=[{"removed": [2], "scale": 1.0}, {"removed": [2], "scale": 1.0}]), "round 1 already removed"),
        (_recipe(rounds=[{"removed": [1, 3], "scale": 1.0}]), "not one contiguous block"),
        (_recipe(rounds=[{"removed": [1], "scale": float("nan")}], num_layers_removed=1), "finite positive"),
        (_recipe(rounds=[{"removed": [1], "scale": -2}], num_layers_removed=1), "finite positive"),
        (_recipe(rounds=[{"removed": [1]}], num_layers_removed=1), "needs 'removed' and 'scale'"),
        (_recipe(rounds=[{"removed": [1], "scale": 1, "why": "?"}], num_layers_removed=1), "unknown keys why"),
        (_recipe(rounds=[3]), "round 1 must be an object"),
        (_recipe(num_layers_removed=5), "num_layers_removed is 5 but the rounds remove 2"),
        (_recipe(num_layers_original=0), "positive integer"),
        (_recipe(num_layers_original=2, rounds=[{"removed": [0, 1], "scale": 1.0}]), "remove all 2 layers"),
    ],
)
def test_malformed_recipes_are_refused(data, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_dict(data, partial=False)


def test_unreadable_files(tmp_path):
    with pytest.raises(RecipeError, match="no recipe at"):
        Recipe.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"rounds": [')
    with pytest.raises(RecipeError, match=r"not valid JSON \(line 1"):
        Recipe.load(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(bytes(range(128, 256)))
    with pytest.raises(RecipeError, match="not a text file"):
        Recipe.load(tmp_path / "bin.json")


def test_check_applicable():
    recipe = Recipe.from_dict(_recipe())
    assert check_applicable(recipe, "llama", 6, fingerprint="f" * 32, dtype="float32") == []
    assert check_applicable(recipe, "llama", 6) == []  # nothing to compare against: accepted
    with pytest.raises(RecipeMismatch, match="model_type 'llama', the model is 'qwen3'"):
        check_applicable(recipe, "qwen3", 6, force=True)  # architecture can never be forced
    with pytest.raises(RecipeMismatch, match="6 layers, the model has 8"):
        check_applicable(recipe, "llama", 8, force=True)
    with pytest.raises(RecipeMismatch, match="pass --dtype float32"):
        check_applicable(recipe, "llama", 6, dtype="bfloat16")
    warnings = check_applicable(recipe, "llama", 6, fingerprint="0" * 32, force=True)
    assert len(warnings) == 1 and "weights differ" in warnings[0]


def test_resume_checkpoints_may_hold_fewer_rounds_than_planned(tmp_path):
    data = _recipe(num_layers_removed=4)
    with pytest.raises(RecipeError, match="num_layers_removed is 4"):
        Recipe.from_dict(data, partial=False)
    assert Recipe.from_dict(data).removed_layers == [3, 4]
    path = tmp_path / ".out.prunecomp-partial.json"
    path.write_text(json.dumps(data))
    assert Recipe.load(path).num_layers_removed == 4  # recognised by its name
    (tmp_path / RECIPE_FILENAME).write_text(json.dumps(data))
    with pytest.raises(RecipeError, match="num_layers_removed is 4"):
        Recipe.load(tmp_path)  # a finished recipe must be consistent
    with pytest.raises(RecipeError, match="num_layers_removed is 1"):
        Recipe.from_dict(_recipe(num_layers_removed=1), partial=True)  # more removed than planned: never
