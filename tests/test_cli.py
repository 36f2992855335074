import json

import pytest

from prunecomp.cli import main
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    tiny_model("llama", layers=6, eps=1e-6).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(SAMPLE_TEXT)
    return path


def test_prune_then_apply_gives_identical_weights(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", str(model_dir), "--metric", "bi", "--layers", "2", "--out", str(out), "--calib", str(calib_file),
                 "--calib-windows", "4", "--seqlen", "32", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "removed layers" in printed and "parameters" in printed and "time" in printed
    recipe = json.loads((out / "prunecomp_recipe.json").read_text())
    assert recipe["calibration"]["source"] == str(calib_file) and len(recipe["rounds"]) == 2

    replay = tmp_path / "replay"
    assert main(["apply", str(model_dir), "--recipe", str(out), "--out", str(replay)]) == 0
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(replay / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["prune", "MODEL", "--layers", "2", "--metric", "nope"], "unknown metric"),
        (["prune", "MODEL", "--layers", "9", "--calib", "CALIB", "--calib-windows", "2", "--seqlen", "16"], "cannot remove 9"),
        (["prune", "MODEL", "--layers", "1", "--out", "MODEL"], "input model"),
        (["apply", "MODEL", "--recipe", "/nonexistent.json", "--out", "X"], "no recipe"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, message, model_dir, calib_file, tmp_path, capsys):
    argv = [str(model_dir) if a == "MODEL" else str(calib_file) if a == "CALIB" else str(tmp_path / a) if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("prunecomp: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_remove_lists_exact_layers(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "removed"
    assert main(["prune", str(model_dir), "--remove", "3,4", "--out", str(out), "--calib", str(calib_file),
                 "--calib-windows", "2", "--seqlen", "16", "--quiet"]) == 0
    recipe = json.loads((out / "prunecomp_recipe.json").read_text())
    assert recipe["removed_layers"] == [3, 4] and recipe["mode"] == "explicit" and len(recipe["rounds"]) == 1
    assert recipe["rounds"][0]["scale"] != 1.0


@pytest.mark.parametrize("argv,message", [
    (["prune", "MODEL", "--remove", "a,b"], "comma-separated"),
    (["prune", "MODEL"], "--layers K"),
    (["prune", "MODEL", "--remove", "2,2"], "twice"),
])
def test_remove_and_layers_errors(argv, message, model_dir, capsys):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_paper_preset_flags_build_the_paper_config():
    from prunecomp.cli import _prune_config, build_parser

    args = build_parser().parse_args(["prune", "m", "--preset", "paper", "--metric", "taylor", "--layers", "5",
                                      "--calib-windows", "8", "--seqlen", "256", "--allow-substitute"])
    config = _prune_config(args)
    assert config.preset == "paper" and config.calib.sampler == "paper" and config.calib.num_windows == 8
    assert config.calib.seqlen == 256 and config.score_calib.seqlen == 256 and config.calib.allow_substitute
    assert config.norm_weights and not config.unfold_magnitude and config.iterative and config.compensate


def test_quiet_silences_transformers_bars(model_dir, calib_file, tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    try:
        assert main(["prune", str(model_dir), "--layers", "1", "--calib", str(calib_file), "--calib-windows", "2",
                     "--seqlen", "16", "--quiet", "--out", str(tmp_path / "q")]) == 0
        assert not hf_logging.is_progress_bar_enabled()
        assert "it/s]" not in capsys.readouterr().err  # no "Writing model shards" bar
    finally:
        hf_logging.enable_progress_bar()


def test_demo_takes_a_dtype():
    from prunecomp.cli import build_parser

    assert build_parser().parse_args(["demo", "--dtype", "bfloat16"]).dtype == "bfloat16"
