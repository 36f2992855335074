import math

import pytest
import torch
import torch.nn.functional as F

from prunecomp.eval.ppl import eval_windows, evaluate_perplexity
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


@pytest.fixture
def wikitext_dir(tmp_path, monkeypatch):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(SAMPLE_TEXT)
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    return tmp_path


def test_perplexity_matches_a_hand_computation(wikitext_dir):
    model, tok = tiny_model(layers=2), tiny_tokenizer()
    seqlen = 64
    result = evaluate_perplexity(model, tok, "wikitext2", seqlen=seqlen, max_windows=5, add_bos=False)

    # by hand: join lines with "\n\n" (rows keep their newline), tokenise once, cut 5 windows
    lines = SAMPLE_TEXT.splitlines(keepends=True)
    ids = tok("\n\n".join(lines), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for w in range(5):
        window = torch.tensor(ids[w * seqlen : (w + 1) * seqlen])[None]
        with torch.no_grad():
            logits = model(window).logits[0]
        total += float(F.cross_entropy(logits[:-1], window[0, 1:], reduction="sum"))
        count += seqlen - 1
    assert result.num_windows == 5 and result.num_tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert "5 x 64-token windows" in result.protocol() and "not added" in result.protocol()


def test_bos_windows_and_caps(wikitext_dir):
    tok = tiny_tokenizer()
    windows, _, bos = eval_windows(tok, "wikitext2", seqlen=32, max_windows=3, add_bos=True)
    assert bos and windows.shape == (3, 32) and bool((windows[:, 0] == tok.bos_token_id).all())
    all_windows, _, _ = eval_windows(tok, "wikitext2", seqlen=32, add_bos=False)
    assert all_windows.shape[0] == len(tok("\n\n".join(SAMPLE_TEXT.splitlines(True)), add_special_tokens=False)["input_ids"]) // 32


def test_paper_protocol_windows(tmp_path, monkeypatch):
    import gzip
    import json

    from calib.test_paper_protocol import bos_tokenizer
    from prunecomp.calib import DataSourceError
    from prunecomp.eval.ppl import paper_eval_windows

    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" \n = A = \n \n" + " some words here . \n" * 30)
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.valid.txt").write_text(" valid line \n" * 30)
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" test line \n" * 30)
    (tmp_path / "c4").mkdir()
    with gzip.open(tmp_path / "c4" / "c4_100_domains_val_x.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "a long web page " * 20}) + "\n" + json.dumps({"text": "short"}) + "\n")
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = bos_tokenizer()
    windows, source, _ = paper_eval_windows(tok, "wikitext2", seqlen=32)
    assert windows[0, 0].item() == tok.bos_token_id and (windows == tok.bos_token_id).sum().item() == 1
    assert windows[0, 1:5].tolist() == tok("\n\n =", add_special_tokens=False)["input_ids"]  # the empty first row, joined
    _, ptb, _ = paper_eval_windows(tok, "ptb", seqlen=32)
    assert ptb.name == "ptb:validation"
    with pytest.raises(DataSourceError, match="--allow-substitute"):  # GPTQ's C4 shard is not here
        paper_eval_windows(tok, "c4", seqlen=32)
    crops, c4, _ = paper_eval_windows(tok, "c4", seqlen=32, max_windows=5, allow_substitute=True)
    assert crops.shape == (5, 32) and c4.substitute_for == "c4:validation"
