"""`prunecomp compare` end to end on a tiny model, offline."""

import json
import struct

import pytest

from prunecomp.cli import main
from test_harness import make_data
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


@pytest.fixture
def setup(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data")
    (data / "wikitext2").mkdir()
    (data / "wikitext2" / "wiki.test.raw").write_text(SAMPLE_TEXT)
    (data / "ptb").mkdir()
    (data / "ptb" / "ptb.test.txt").write_text(SAMPLE_TEXT.lower())
    (data / "ptb" / "ptb.valid.txt").write_text(SAMPLE_TEXT.swapcase())
    monkeypatch.setenv("PRUNECOMP_DATA", str(data))
    model_dir = tmp_path / "model"
    tiny_model("llama", layers=8, eps=1e-6).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT.upper())
    return model_dir, calib, tmp_path / "out"


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_compare_writes_tables_and_plots(setup, capsys):
    model_dir, calib, out = setup
    argv = ["compare", str(model_dir), "--metrics", "bi,mag,cl", "--layers", "2", "--out", str(out),
            "--calib", str(calib), "--calib-windows", "3", "--seqlen", "32", "--ppl", "wikitext2,ptb",
            "--eval-seqlen", "32", "--max-windows", "3", "--tasks", "arc_easy,copa,mmlu", "--limit", "2", "--eval-protocol", "both", "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["methods"]]
    assert names[0] == "Dense"
    # the paper's 2x2 grid per metric (CL removes one block: baseline and +Prune&Comp only)
    roles = {m["name"]: (m["role"], m["mode"], m["compensate"]) for m in results["methods"]}
    assert roles["BI (baseline)"] == ("baseline (paper): one-shot, no compensation", "one-shot", False)
    assert roles["BI+Prune&Comp"] == ("Prune&Comp (paper): iterative + compensation", "iterative", True)
    assert roles["BI iterative"][1:] == ("iterative", False) and roles["BI one-shot+comp"][1:] == ("one-shot", True)
    for expected in ("Mag+ (baseline)", "Mag+ iterative", "Mag+ one-shot+comp", "Mag+ +Prune&Comp", "CL (baseline)", "CL+Prune&Comp"):
        assert expected in names
    assert len(names) == 1 + 4 + 4 + 2
    dense = results["methods"][0]
    if dense["qa"]["average"]:  # a random tiny model can score 0 on two examples
        assert dense["qa"]["rp"] == pytest.approx(100.0)
        for m in results["methods"]:
            assert m["qa"]["rp"] == pytest.approx(100 * m["qa"]["average"] / dense["qa"]["average"])
    assert set(dense["ppl"]) == {"wikitext2", "ptb", "wikitext2@paper", "ptb@paper"} and dense["mmlu"]["n"] > 0
    assert dense["ppl"]["ptb@paper"]["protocol_name"] == "paper" and "ptb.valid.txt" in dense["ppl"]["ptb@paper"]["origin"]
    for m in results["methods"][1:]:
        assert len(m["removed"]) == 2 and len(m["magnitude"]) == 7
    # all comparisons share one calibration set
    assert len(list((out / "cache").glob("calibration-*.pt"))) == 1

    md = (out / "results.md").read_text()
    assert "**default evaluation protocol**" in md and "**paper evaluation protocol**" in md
    for name in names:
        assert name in md
    for png in ("gain_ratio.png", "scores_heatmap.png", "magnitude_depth.png", "ppl_bars.png"):
        width, height = png_size(out / png)
        assert width >= 400 and height >= 250
        assert png in md

    # a re-run resumes from the cache without pruning again
    recipes = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.recipe.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.recipe.json")} == recipes
