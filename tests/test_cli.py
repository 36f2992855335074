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
