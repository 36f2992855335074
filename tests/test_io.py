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


def test_output_folder_gets_normal_permissions(pruned, tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        out = save_pruned(pruned.model, None, pruned.recipe, tmp_path / "out")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not the 0700 of a temporary folder


def test_overwrite_replaces_only_prunecomp_outputs(pruned, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(SaveError, match="not a prunecomp output"):
        save_pruned(pruned.model, None, pruned.recipe, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_pruned(pruned.model, None, pruned.recipe, empty) / RECIPE_FILENAME).exists()  # empty is fine


def test_stale_temporaries_are_removed_by_the_next_save(pruned, tmp_path):
    stale = tmp_path / ".out.tmp-12345-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".out.prunecomp-lock").write_text("12345\n")  # a SIGKILLed run's lock file
    save_pruned(pruned.model, None, pruned.recipe, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nonfinite_weights_are_refused_on_load_naming_the_tensor(tmp_path):
    from prunecomp.errors import NonFiniteWeights

    model = tiny_model("llama", layers=4)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[3, 4] = float("inf")
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    with pytest.raises(NonFiniteWeights, match=r"model\.layers\.1\.self_attn\.o_proj\.weight holds 1 Inf"):
        load_model(str(tmp_path / "m"))


def test_pickle_weights_need_a_flag(tmp_path):
    from prunecomp.errors import UnsafeLoad

    model = tiny_model("llama", layers=2)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()  # leave only a pickle checkpoint
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(UnsafeLoad, match="--allow-pickle"):
        load_model(str(tmp_path / "m"))


def test_fingerprint_ignores_load_dtype_and_tells_checkpoints_apart(tmp_path):
    from prunecomp.io import weights_fingerprint

    a, b = tiny_model("llama", layers=2, seed=0), tiny_model("llama", layers=2, seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(tiny_model("llama", layers=2, seed=0).to(torch.bfloat16))
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_replay_on_another_checkpoint_is_refused_unless_forced(tmp_path):
    from prunecomp.errors import RecipeMismatch
    from prunecomp.prune import apply_recipe

    for seed in (0, 1):
        tiny_model("llama", layers=6, eps=1e-6, seed=seed).save_pretrained(tmp_path / f"m{seed}")
        tiny_tokenizer().save_pretrained(tmp_path / f"m{seed}")
    model, tokenizer, source = load_model(str(tmp_path / "m0"))
    result = prune(model, tokenizer, PruneConfig(metric="bi", num_layers=2), random_windows(3, 24))
    made = save_pruned(model, tokenizer, result.recipe, tmp_path / "made", source=source)
    recipe = Recipe.load(made)
    assert recipe.source_fingerprint == source.fingerprint and recipe.dtype == "float32"
    other, tokenizer, other_source = load_model(str(tmp_path / "m1"))
    apply_recipe(other, recipe)
    with pytest.raises(RecipeMismatch, match="--force"):
        save_pruned(other, tokenizer, recipe, tmp_path / "replay", source=other_source)
    assert not (tmp_path / "replay").exists()
    forced = Recipe.load(save_pruned(other, tokenizer, recipe, tmp_path / "replay", source=other_source, force=True))
    assert forced.source_model == other_source.name and forced.source_fingerprint == other_source.fingerprint
    assert any("forced replay" in w for w in forced.warnings)


def test_an_unreachable_hub_fails_in_one_line_without_retries(monkeypatch, capfd):
    import time

    from huggingface_hub import constants

    from prunecomp.io import LoadError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    started = time.monotonic()
    with pytest.raises(LoadError, match="cannot reach the Hugging Face hub .* not a local folder or cached"):
        load_model("someorg/not-cached-anywhere")
    assert time.monotonic() - started < 30
    assert "Retrying" not in capfd.readouterr().err


def test_paths_and_hub_ids_are_told_apart(tmp_path, monkeypatch):
    from prunecomp.io import LoadError

    monkeypatch.chdir(tmp_path)
    for name in ("./missing", "../missing", "/no/such/model", "~/no-such-model", "a/b/c", "bad name"):
        with pytest.raises(LoadError, match="no such model folder"):
            resolve_source(name)
    for name in ("org/model", "gpt2", "org/model-1.5B_v2"):
        assert resolve_source(name).path == name  # left to the hub


def _config_only(folder, config) -> str:
    """A model folder with a config.json and no weights: anything that tries to load weights fails."""
    config.save_pretrained(folder)
    return str(folder)


def test_preflight_refuses_from_the_config_before_any_weights_load(tmp_path, capsys):
    import transformers

    from prunecomp.arch import InexactFold, UnsupportedArchitecture
    from prunecomp.cli import main
    from prunecomp.io import preflight

    post_ln = _config_only(tmp_path / "opt", transformers.OPTConfig(num_hidden_layers=4, do_layer_norm_before=False))
    with pytest.raises(InexactFold, match="post-LN"):
        preflight(resolve_source(post_ln), compensate=True)
    assert preflight(resolve_source(post_ln), compensate=False).model_type == "opt"  # --no-comp may go on
    gpt2 = _config_only(tmp_path / "gpt2", transformers.GPT2Config(n_layer=2, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(UnsupportedArchitecture, match="inverse_layer_idx"):
        preflight(resolve_source(gpt2), compensate=False)
    unknown = _config_only(tmp_path / "bloom", transformers.BloomConfig(n_layer=2))
    assert preflight(resolve_source(unknown)).model_type == "bloom"  # discovered after loading, not refused here

    # through the CLI: one line naming the architecture, not a complaint about missing weights
    assert main(["prune", post_ln, "--layers", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "compensation refused for opt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_apply_checks_the_recipe_against_the_config_before_loading(pruned, tmp_path, capsys):
    from prunecomp.cli import main

    recipe = pruned.recipe
    recipe_path = tmp_path / "recipe.json"
    recipe.save(recipe_path)
    other = _config_only(tmp_path / "deeper", tiny_model("gemma3", layers=recipe.num_layers_original + 2).config)
    assert main(["apply", other, "--recipe", str(recipe_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"the recipe is for {recipe.num_layers_original} layers" in err and "Traceback" not in err
