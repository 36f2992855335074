import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunecomp import PruneConfig, Recipe, prune
from prunecomp.io import ModelSource, SaveError, check_output_dir, load_model, resolve_source, save_pruned
from prunecomp.recipe import RECIPE_FILENAME
from tiny import random_windows, tiny_model, tiny_tokenizer


@pytest.fixture
def pruned():
    model = tiny_model("gemma3", layers=6, eps=1e-6)
    result = prune(model, tiny_tokenizer(), PruneConfig(metric="bi", num_layers=2), random_windows(3, 24))
    return result


def test_checkpoint_round_trip(pruned, tmp_path):
    out = save_pruned(pruned.model, tiny_tokenizer(), pruned.recipe, tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", RECIPE_FILENAME, "README.md", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and len(config["layer_types"]) == 4
    recipe = Recipe.load(out)
    assert recipe.rounds == pruned.recipe.rounds and recipe.versions["transformers"]
    assert recipe.calibration["num_windows"] == 3
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = random_windows(1, 20)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, pruned.model(ids).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out)("ab")["input_ids"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_refuses_existing_and_input_folders(pruned, tmp_path):
    save_pruned(pruned.model, None, pruned.recipe, tmp_path / "exists")
    with pytest.raises(SaveError, match="overwrite"):
        save_pruned(pruned.model, None, pruned.recipe, tmp_path / "exists")
    source = ModelSource("m", str(tmp_path / "model"))
    (tmp_path / "model").mkdir()
    for bad in (tmp_path / "model", tmp_path / "model" / "sub", tmp_path):
        with pytest.raises(SaveError, match="input model"):
            check_output_dir(bad, source, overwrite=True)
    out = save_pruned(pruned.model, None, pruned.recipe, tmp_path / "exists", overwrite=True)
    assert (out / "model.safetensors").exists()


def test_a_failed_save_leaves_nothing_that_looks_complete(pruned, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Recipe, "save", explode)
    with pytest.raises(OSError):
        save_pruned(pruned.model, None, pruned.recipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_source_resolution(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    source = resolve_source(str(tmp_path / "m.gguf"))
    assert source.gguf_file == "m.gguf" and source.local_dir == tmp_path.resolve()
    assert resolve_source(str(tmp_path)).gguf_file == "m.gguf"  # the only gguf in a folder without config.json
    assert resolve_source("org/model").path == "org/model"


def test_load_error_is_clean(tmp_path):
    from prunecomp.io import LoadError

    with pytest.raises(LoadError):
        load_model(str(tmp_path / "missing.gguf"))
