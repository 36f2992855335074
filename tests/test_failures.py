"""The bad-input matrix: every row is one line naming the problem, exit code 2, no traceback,
and nothing written (no output folder, no hidden temporary folder or lock left behind).

Rows run through `prunecomp.cli.main` in-process (main releases its output lock on any exit), and
`test_a_failed_run_in_a_real_process_leaves_nothing` checks a real process. The API table checks
the typed exceptions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunecomp.cli import build_parser, main
from prunecomp.errors import ModelLoadError, NonFiniteWeights, OutputError, OutputLocked, RecipeError, RecipeMismatch
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer

SMALL = ["--calib-windows", "2", "--seqlen", "16", "--quiet"]


def _save_model(path: Path, arch: str = "llama", layers: int = 6, poison: float | None = None, seed: int = 0) -> Path:
    model = tiny_model(arch, layers=layers, eps=1e-6, seed=seed)
    if poison is not None:
        with torch.no_grad():
            model.model.layers[2].mlp.down_proj.weight[0, 0] = poison
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _save_unsupported(path: Path) -> Path:
    """A tiny BLOOM checkpoint: a causal LM family prunecomp has no spec for."""
    from prunecomp.arch import supported_model_types

    transformers = pytest.importorskip("transformers")
    if "bloom" in supported_model_types() or not hasattr(transformers, "BloomForCausalLM"):
        pytest.skip("bloom is supported (or absent) here; pick another unsupported family")
    config = transformers.BloomConfig(n_layer=2, hidden_size=16, n_head=2, vocab_size=100)
    transformers.BloomForCausalLM(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _recipe(model_dir: Path, calib: Path, tmp: Path) -> dict:
    """A valid recipe made by pruning the model (cached per test through the file system)."""
    out = tmp / "made" / "pruned"
    if not out.exists():
        assert main(["prune", str(model_dir), "--layers", "2", "--out", str(out), "--calib", str(calib), *SMALL]) == 0
    return json.loads((out / "prunecomp_recipe.json").read_text())


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _edit_recipe(key, value):
    def edit(recipe: dict) -> dict:
        recipe = dict(recipe)
        if value is _DELETE:
            recipe.pop(key)
        elif key == "rounds[0].removed":
            recipe["rounds"] = [dict(recipe["rounds"][0], removed=value)] + recipe["rounds"][1:]
        else:
            recipe[key] = value
        return recipe

    return edit


_DELETE = object()

# (id, argv template, expected text in the one error line). Placeholders: MODEL (a tiny 6-layer
# Llama folder), CALIB (a good calibration file), OUT (a fresh output path), T/<name> (a path in
# the test's folder, prepared by PREPARE[id] when needed), RECIPE (a recipe edited by RECIPES[id]).
ROWS = [
    # model
    ("model-missing-path", ["prune", "./no/such/model", "--layers", "1", "--out", "OUT"], "no such model folder"),
    ("model-not-folder-or-gguf", ["prune", "T/weights.txt", "--layers", "1", "--out", "OUT"], "is a file, not a model"),
    ("model-hub-id-offline", ["prune", "someorg/somemodel", "--layers", "1", "--out", "OUT"], "not in the Hugging Face cache"),
    ("model-unsupported-arch", ["prune", "T/bloom", "--layers", "1", "--calib", "CALIB", "--out", "OUT", *SMALL], "llama, mistral"),
    ("model-nan-weights", ["prune", "T/nan", "--layers", "1", "--calib", "CALIB", "--out", "OUT", *SMALL], "model.layers.2.mlp.down_proj.weight holds 1 NaN"),
    ("model-inf-weights", ["prune", "T/inf", "--metric", "reverse", "--layers", "1", "--calib", "CALIB", "--out", "OUT", *SMALL], "model.layers.2.mlp.down_proj.weight holds 1 Inf"),
    # layers
    ("layers-zero", ["prune", "MODEL", "--layers", "0", "--calib", "CALIB", "--out", "OUT", *SMALL], "at least 1"),
    ("layers-negative", ["prune", "MODEL", "--layers", "-2", "--calib", "CALIB", "--out", "OUT", *SMALL], "at least 1"),
    ("layers-not-a-number", ["prune", "MODEL", "--layers", "two", "--out", "OUT"], "invalid int value"),
    ("layers-all", ["prune", "MODEL", "--layers", "6", "--calib", "CALIB", "--out", "OUT", *SMALL], "cannot remove 6 of 6"),
    ("remove-out-of-range", ["prune", "MODEL", "--remove", "2,9", "--calib", "CALIB", "--out", "OUT", *SMALL], "9"),
    ("remove-duplicated", ["prune", "MODEL", "--remove", "2,2", "--calib", "CALIB", "--out", "OUT", *SMALL], "twice"),
    ("remove-negative", ["prune", "MODEL", "--remove=-1,2", "--calib", "CALIB", "--out", "OUT", *SMALL], "negative"),
    # names
    ("metric-unknown", ["prune", "MODEL", "--layers", "1", "--metric", "nope", "--out", "OUT"], "choose from bi"),
    ("estimator-unknown", ["prune", "MODEL", "--layers", "1", "--estimator", "nope", "--out", "OUT"], "invalid choice"),
    ("dataset-unknown", ["prune", "MODEL", "--layers", "1", "--calib", "nosuchset", "--out", "OUT", *SMALL], "wikitext2"),
    ("dataset-split-unknown", ["prune", "MODEL", "--layers", "1", "--calib", "wikitext2:nosplit", "--out", "OUT", *SMALL], "split"),
    # calibration files
    ("calib-missing-file", ["prune", "MODEL", "--layers", "1", "--calib", "T/missing.txt", "--out", "OUT", *SMALL], "missing.txt"),
    ("calib-empty-file", ["prune", "MODEL", "--layers", "1", "--calib", "T/empty.txt", "--out", "OUT", *SMALL], "empty.txt"),
    pytest.param("calib-binary-file", ["prune", "MODEL", "--layers", "1", "--calib", "T/binary.txt", "--out", "OUT", *SMALL],
                 "binary.txt"),
    pytest.param("calib-jsonl-bad-line", ["prune", "MODEL", "--layers", "1", "--calib", "T/badline.jsonl", "--out", "OUT", *SMALL],
                 "badline.jsonl:3"),
    pytest.param("calib-json-array", ["prune", "MODEL", "--layers", "1", "--calib", "T/array.json", "--out", "OUT", *SMALL],
                 "array.json:1"),
    ("calib-jsonl-no-text", ["prune", "MODEL", "--layers", "1", "--calib", "T/notext.jsonl", "--out", "OUT", *SMALL], "'text'"),
    ("calib-too-short", ["prune", "MODEL", "--layers", "1", "--calib", "T/short.txt", "--out", "OUT", *SMALL], "tokens"),
    # output
    ("out-is-model", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "MODEL", *SMALL], "input model"),
    ("out-inside-model", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "MODEL/sub", *SMALL], "input model"),
    ("out-non-empty", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "T/prior", *SMALL], "--overwrite"),
    ("out-overwrite-foreign-folder", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "T/userfiles", "--overwrite", *SMALL], "not a prunecomp output"),
    ("out-overwrite-working-folder", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", ".", "--overwrite", *SMALL], "refusing to replace"),
    ("out-not-writable", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "/proc/prunecomp-out", *SMALL], "cannot"),
    ("out-locked", ["prune", "MODEL", "--layers", "1", "--calib", "CALIB", "--out", "OUT", *SMALL], "another prunecomp run"),
    # recipes
    ("recipe-corrupt-json", ["apply", "MODEL", "--recipe", "T/corrupt.json", "--out", "OUT"], "not valid JSON"),
    ("recipe-json-array", ["apply", "MODEL", "--recipe", "T/recipe-array.json", "--out", "OUT"], "expected a JSON object"),
    ("recipe-unknown-version", ["apply", "MODEL", "--recipe", "RECIPE", "--out", "OUT"], "schema_version 99"),
    ("recipe-missing-rounds", ["apply", "MODEL", "--recipe", "RECIPE", "--out", "OUT"], "missing key rounds"),
    ("recipe-empty-removed", ["apply", "MODEL", "--recipe", "RECIPE", "--out", "OUT"], "non-empty list"),
    ("recipe-index-missing", ["apply", "MODEL", "--recipe", "RECIPE", "--out", "OUT"], "layer 57, which does not exist"),
    ("recipe-count-inconsistent", ["apply", "MODEL", "--recipe", "RECIPE", "--out", "OUT"], "num_layers_removed"),
    ("recipe-other-arch", ["apply", "T/qwen3", "--recipe", "RECIPE", "--out", "OUT"], "model_type 'llama'"),
    ("recipe-other-layer-count", ["apply", "T/llama8", "--recipe", "RECIPE", "--out", "OUT"], "model has 8"),
    ("recipe-other-checkpoint", ["apply", "T/llama-other", "--recipe", "RECIPE", "--out", "OUT"], "weights differ"),
]

RECIPES = {
    "recipe-unknown-version": _edit_recipe("schema_version", 99),
    "recipe-missing-rounds": _edit_recipe("rounds", _DELETE),
    "recipe-empty-removed": _edit_recipe("rounds[0].removed", []),
    "recipe-index-missing": _edit_recipe("rounds[0].removed", [57]),
    "recipe-count-inconsistent": _edit_recipe("num_layers_removed", 5),
}

PREPARE = {
    "model-not-folder-or-gguf": lambda t: _write(t / "weights.txt", "not a model"),
    "model-unsupported-arch": lambda t: _save_unsupported(t / "bloom"),
    "model-nan-weights": lambda t: _save_model(t / "nan", poison=float("nan")),
    "model-inf-weights": lambda t: _save_model(t / "inf", poison=float("inf")),
    "calib-empty-file": lambda t: _write(t / "empty.txt", ""),
    "calib-binary-file": lambda t: _write(t / "binary.txt", bytes(range(256)) * 8),
    "calib-jsonl-no-text": lambda t: _write(t / "notext.jsonl", '{"text": "fine"}\n{"body": "no text here"}\n'),
    "calib-jsonl-bad-line": lambda t: _write(t / "badline.jsonl", '{"text": "a"}\n\n{"text": "b"\n'),
    "calib-json-array": lambda t: _write(t / "array.json", [{"text": "a"}, {"text": "b"}]),
    "calib-too-short": lambda t: _write(t / "short.txt", "too short"),
    "out-non-empty": lambda t: _write(_mkdir(t / "prior") / "prunecomp_recipe.json", "{}"),
    "out-overwrite-foreign-folder": lambda t: _write(_mkdir(t / "userfiles") / "thesis.tex", "years of work"),
    "recipe-corrupt-json": lambda t: _write(t / "corrupt.json", '{"schema_version": 2, "rounds": ['),
    "recipe-json-array": lambda t: _write(t / "recipe-array.json", [{"removed": [1]}, {"removed": [2]}]),
    "recipe-other-arch": lambda t: _save_model(t / "qwen3", arch="qwen3"),
    "recipe-other-layer-count": lambda t: _save_model(t / "llama8", layers=8),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _has_option(command: str, option: str) -> bool:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return any(option in a.option_strings for a in sub.choices[command]._actions)


@pytest.fixture
def lock_holder():
    """Start a process that locks a given output and keeps it until the test ends."""
    processes = []

    def hold(out: Path) -> None:
        code = ("import sys; from prunecomp.locking import acquire_output_lock; "
                f"acquire_output_lock({str(out)!r}); print('locked', flush=True); sys.stdin.read()")
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"

    yield hold
    for process in processes:
        process.stdin.close()
        process.wait(timeout=30)


def _row_id(row) -> str:
    return row.values[0] if hasattr(row, "values") else row[0]


@pytest.mark.parametrize("row,argv,expected", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input_matrix(row, argv, expected, tiny_model_dir, sample_text_file, tmp_path, monkeypatch, capsys, lock_holder):
    if row.startswith("remove-") and not _has_option("prune", "--remove"):
        pytest.skip("this prunecomp has no --remove yet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    if row == "out-overwrite-working-folder":
        _write(tmp_path / "notes.txt", "the user's files")
    if row in PREPARE:
        PREPARE[row](tmp_path)
    if row in RECIPES or row.startswith("recipe-other-"):
        recipe = _recipe(tiny_model_dir, sample_text_file, tmp_path)
        _write(tmp_path / "recipe.json", RECIPES.get(row, lambda r: r)(recipe))
    if row == "recipe-other-checkpoint":  # same architecture and shape, other weights
        _save_model(tmp_path / "llama-other", seed=1)
    out = tmp_path / "out"
    if row == "out-locked":
        lock_holder(out)
    capsys.readouterr()

    def fill(arg: str) -> str:
        if arg in ("MODEL", "MODEL/sub"):
            return arg.replace("MODEL", str(tiny_model_dir))
        return {"CALIB": str(sample_text_file), "OUT": str(out), "RECIPE": str(tmp_path / "recipe.json")}.get(
            arg, str(tmp_path / arg[2:]) if arg.startswith("T/") else arg)

    before = _snapshot(tmp_path)
    model_before = _snapshot(tiny_model_dir)
    try:
        code = main([fill(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert code == 2, captured
    assert len(errors) == 1 and expected in errors[0], captured.err
    assert "Traceback" not in captured.err
    assert _snapshot(tmp_path) == before, "a failed run wrote something"
    assert _snapshot(tiny_model_dir) == model_before, "a failed run touched the input model"


def test_matrix_covers_every_family_of_the_issue():
    families = {_row_id(row).split("-")[0] for row in ROWS}
    assert families == {"model", "layers", "remove", "metric", "estimator", "dataset", "calib", "out", "recipe"}


def test_a_failed_run_in_a_real_process_leaves_nothing(tmp_path):
    """NaN weights are found after the output is locked: the lock file must go with the process."""
    model = _save_model(tmp_path / "nan", poison=float("nan"))
    calib = _write(tmp_path / "calib.txt", SAMPLE_TEXT)
    before = _snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "prunecomp.cli", "prune", str(model), "--layers", "1", "--calib",
                           str(calib), "--out", str(tmp_path / "new" / "out"), *SMALL],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "non-finite" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before  # not even the parent folder `new/` it created for the lock


@pytest.mark.parametrize("command", ["", "prune", "apply", "demo", "eval", "compare"])
def test_every_help_works(command, capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if command and command not in sub.choices:
        pytest.skip(f"no {command} subcommand in this install")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    assert "usage: prunecomp" in capsys.readouterr().out


def test_help_covers_all_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) <= {"prune", "apply", "demo", "eval", "compare"}, "add new subcommands to test_every_help_works"


# --- the same refusals through the API: typed exceptions --------------------------------------


def test_api_raises_typed_errors(tiny_model_dir, tmp_path, monkeypatch, lock_holder):
    from prunecomp.io import check_output_dir, load_model, resolve_source
    from prunecomp.recipe import Recipe, check_applicable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no such model folder"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("someorg/somemodel")
    with pytest.raises(NonFiniteWeights, match="down_proj"):
        load_model(str(_save_model(tmp_path / "nan", poison=float("nan"))))
    source = resolve_source(str(tiny_model_dir))
    with pytest.raises(OutputError, match="input model"):
        check_output_dir(tiny_model_dir / "sub", source)
    (tmp_path / "mine").mkdir()
    _write(tmp_path / "mine" / "a.txt", "x")
    with pytest.raises(OutputError, match="not a prunecomp output"):
        check_output_dir(tmp_path / "mine", overwrite=True)
    lock_holder(tmp_path / "busy")
    with pytest.raises(OutputLocked):
        check_output_dir(tmp_path / "busy")
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.load(_write(tmp_path / "bad.json", "{"))
    recipe = Recipe("m", "llama", 6, "bi", 1, "iterative", True, "channel_mean", 0, {}, source_fingerprint="a" * 32)
    with pytest.raises(RecipeMismatch, match="model_type"):
        check_applicable(recipe, "qwen3", 6)
    with pytest.raises(RecipeMismatch, match="--force"):
        check_applicable(recipe, "llama", 6, fingerprint="b" * 32)
    assert check_applicable(recipe, "llama", 6, fingerprint="b" * 32, force=True)  # forced: returned as a warning


def test_api_config_errors_are_value_errors():
    from prunecomp import ConfigError, PruneConfig
    from prunecomp.metrics import UnknownMetric

    with pytest.raises(ConfigError):
        PruneConfig(num_layers=0)
    with pytest.raises(UnknownMetric, match="choose from"):
        PruneConfig(metric="nope")


# --- numerical guards (pure functions the loader and the prune loop call) -------------------------


def test_numerical_guards():
    from prunecomp import guards
    from prunecomp.errors import NumericalError

    guards.check_finite(torch.ones(3), "scores")
    with pytest.raises(NumericalError, match=r"1 NaN in scores \(layer 4, round 2\)"):
        guards.check_finite(torch.tensor([1.0, float("nan")]), "scores", layer=4, round_index=1)
    with pytest.raises(NumericalError, match=r"1 Inf in scores \(current layer 2, round 1\)"):
        guards.check_finite(torch.tensor([1.0, 2.0, float("inf")]), "scores", round_index=0)
    assert guards.scale_warning(1.3) is None
    assert "outside [0.1, 10]" in guards.scale_warning(12.0, layer=3, round_index=0)
    with pytest.raises(NumericalError, match="finite positive"):
        guards.scale_warning(float("inf"))
    weight = torch.full((2, 2), 40000.0, dtype=torch.float16)
    with pytest.raises(NumericalError, match="overflows float16"):
        guards.scaled_in_float32(weight, 2.0, name="model.layers.0.mlp.down_proj.weight")
    assert guards.scaled_in_float32(weight.to(torch.bfloat16), 2.0).dtype == torch.bfloat16
    from prunecomp import resolve
    from prunecomp.compensate import fold_scale

    half = tiny_model("llama", layers=3).half()
    with torch.no_grad():
        half.model.layers[0].mlp.down_proj.weight[0, 0] = 40000.0
    with pytest.raises(NumericalError, match="overflows float16"):  # the fold itself refuses, nothing saturates
        fold_scale(resolve(half), 2, 2.0)
    model = tiny_model("llama", layers=2)
    guards.check_finite_weights(model)
    with torch.no_grad():
        model.model.norm.weight[0] = float("-inf")
    with pytest.raises(NonFiniteWeights, match=r"model\.norm\.weight holds 1 Inf"):
        guards.check_finite_weights(model)


def test_nonfinite_activations_stop_the_run_naming_the_round():
    from prunecomp import PruneConfig, prune
    from prunecomp.errors import NumericalError
    from tiny import random_windows

    model = tiny_model("llama", layers=6)
    with torch.no_grad():  # finite weights whose activations overflow float32
        model.model.layers[3].mlp.down_proj.weight.fill_(3e38)
    with pytest.raises(NumericalError, match=r"in the bi scores \(current layer \d, round 1\)"):
        prune(model, None, PruneConfig(metric="bi", num_layers=2), random_windows(2, 16))


def test_a_scale_outside_the_sane_range_is_a_warning_in_the_recipe():
    from prunecomp import PruneConfig, prune
    from tiny import random_windows

    if "remove" not in PruneConfig.__dataclass_fields__:
        pytest.skip("this prunecomp has no explicit removal")
    model = tiny_model("llama", layers=6)
    with torch.no_grad():  # layer 2 multiplies the residual stream's magnitude by far more than 10
        for writer in (model.model.layers[2].self_attn.o_proj, model.model.layers[2].mlp.down_proj):
            writer.weight.mul_(400.0)
    result = prune(model, None, PruneConfig(remove=(2,)), random_windows(2, 16))
    scale = result.recipe.rounds[0].scale
    assert scale > 10 and any("outside [0.1, 10]" in w and "layer 2" in w for w in result.recipe.warnings), (scale, result.recipe.warnings)
