"""An interrupted iterative run resumes from its last finished round (checkpoint beside --out)."""

import json

import pytest
from safetensors.torch import load_file

from prunecomp import PruneConfig, prune
from prunecomp.cli import checkpoint_path, main
from prunecomp.config import ConfigError
from prunecomp.recipe import Recipe
from tiny import SAMPLE_TEXT, random_windows, tiny_model, tiny_tokenizer


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("engine", ["memory", "layerwise"])
def test_resumed_run_equals_the_uninterrupted_one(engine):
    windows = random_windows(4, 16)
    config = PruneConfig(metric="bi", num_layers=3, engine=engine)
    full_model = tiny_model("llama", layers=8)
    full = prune(full_model, None, config, windows).recipe

    saved = []

    def kill_after_two(recipe):
        saved.append(Recipe.from_dict(json.loads(recipe.to_json())))
        if len(recipe.rounds) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        prune(tiny_model("llama", layers=8), None, config, windows, on_round=kill_after_two)
    partial = saved[-1]
    resumed_model = tiny_model("llama", layers=8)
    resumed = prune(resumed_model, None, config, windows, resume=partial).recipe
    assert [r.removed for r in resumed.rounds] == [r.removed for r in full.rounds]
    assert [r.scores for r in resumed.rounds[:2]] == [r.scores for r in partial.rounds]  # replayed, not re-scored
    assert [r.scale for r in resumed.rounds] == [r.scale for r in full.rounds]
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert a.equal(b), name


def test_a_checkpoint_from_another_run_is_refused():
    windows = random_windows(2, 16)
    partial = prune(tiny_model("llama", layers=8), None, PruneConfig(metric="bi", num_layers=1), windows).recipe
    with pytest.raises(ConfigError, match="different run"):
        prune(tiny_model("llama", layers=8), None, PruneConfig(metric="mag", num_layers=3), windows, resume=partial)


def test_cli_resume_after_an_interrupted_round(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    tiny_model("llama", layers=8, eps=1e-6).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    args = ["prune", str(model_dir), "--metric", "bi", "--layers", "3", "--calib", str(calib), "--calib-windows", "3",
            "--seqlen", "24", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    assert not checkpoint_path(tmp_path / "full").exists()  # removed once the output is saved

    import sys

    loop = sys.modules["prunecomp.prune"]  # the module (the package exports a function of the same name)

    real = loop._run_rounds

    def interrupted(*a, **kw):
        on_round = a[-1] if len(a) > 9 else kw.get("on_round")

        def stop_after_one(recipe):
            on_round(recipe)
            raise KeyboardInterrupt

        return real(*a[:9], stop_after_one)

    monkeypatch.setattr(loop, "_run_rounds", interrupted)
    out = tmp_path / "resumed"
    assert main(args + ["--out", str(out)]) == 130
    partial = Recipe.load(checkpoint_path(out))
    assert len(partial.rounds) == 1 and not out.exists()
    monkeypatch.setattr(loop, "_run_rounds", real)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert Recipe.load(out).rounds[0] == partial.rounds[0] and not checkpoint_path(out).exists()
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert Recipe.load(out).removed_layers == Recipe.load(tmp_path / "full").removed_layers
