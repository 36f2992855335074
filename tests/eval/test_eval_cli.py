"""`prunecomp eval` end to end on a tiny checkpoint, offline."""

import json

import pytest

from prunecomp.cli import main
from test_harness import make_data
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


def test_eval_reports_ppl_with_protocol_accuracy_and_rp(tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path / "data")
    (data / "wikitext2").mkdir()
    (data / "wikitext2" / "wiki.test.raw").write_text(SAMPLE_TEXT)
    monkeypatch.setenv("PRUNECOMP_DATA", str(data))
    model_dir = tmp_path / "model"
    tiny_model("gemma3", layers=3, eps=1e-6).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)

    dense_json = tmp_path / "dense.json"
    argv = ["eval", str(model_dir), "--ppl", "wikitext2", "--eval-seqlen", "32", "--max-windows", "4",
            "--tasks", "arc_easy,piqa", "--limit", "3", "--quiet", "--json", str(dense_json)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 x 32-token windows" in out and "scored tokens" in out
    assert "arc_easy" in out and "acc_norm" in out  # piqa and arc_easy define acc_norm
    report = json.loads(dense_json.read_text())
    assert report["ppl"]["wikitext2"]["num_windows"] == 4
    assert report["harness"]["tasks"]["piqa"]["n"] == 3

    assert main(argv[:-1] + [str(tmp_path / "again.json"), "--dense-results", str(dense_json)]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    if report["harness"]["average"]:
        assert again["retained"]["rp"] == pytest.approx(100.0)
    printed = capsys.readouterr().out
    assert "RP" in printed or not report["harness"]["average"]
    # the same examples as the dense run: a paired difference of exactly zero
    assert again["paired_vs_dense"]["average"] == {"diff": 0.0, "se": 0.0, "n": 6}
    assert "vs dense" in printed and "+0.00 points ± 0.00 (paired SE over the same 6 examples)" in printed
    assert main(argv[:-3] + ["--limit", "2", "--json", str(tmp_path / "fewer.json"), "--dense-results", str(dense_json)]) == 0
    assert "no paired difference" in capsys.readouterr().out  # other examples: said, not computed


def test_vllm_backend_plumbing_gives_clear_errors(tmp_path, capsys):
    argv = ["eval", str(tmp_path), "--ppl", "", "--tasks", "copa", "--backend", "vllm"]
    assert main(argv) == 2  # not a checkpoint folder: no config.json
    assert "not a saved checkpoint" in capsys.readouterr().err
    tiny_model("llama", layers=2).save_pretrained(tmp_path / "ckpt")
    argv[1] = str(tmp_path / "ckpt")
    assert main(argv) == 2  # a checkpoint, but vllm (CUDA only) is not installed here
    assert "vllm" in capsys.readouterr().err
