"""The paper preset's samplers reproduce the official scripts' draws (same calls, same order)."""

import gzip
import json
import random

import numpy as np
import pytest
import torch

from prunecomp.calib.sets import calibration_sets
from prunecomp.calib.windows import document_crops, gptq_c4_crops, paper_windows, shuffled_rows, sleb_windows, tokenize_as_official
from prunecomp.config import CalibConfig
from tiny import tiny_tokenizer


def bos_tokenizer():
    """The tiny character tokenizer, but adding BOS like Llama-3's does with tokenizer(text)."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_one_bos_for_the_whole_stream():
    tok = bos_tokenizer()
    ids = tokenize_as_official(tok, "abc\n\ndef")
    assert ids[0].item() == tok.bos_token_id and (ids == tok.bos_token_id).sum().item() == 1


def test_paper_windows_are_the_official_offsets():
    stream = torch.arange(10_000)
    windows = paper_windows(stream, 6, 64, random.Random(0))
    reference = random.Random(0)
    starts = [reference.randint(0, int(10_000 * 0.9) - 64 - 1) for _ in range(6)]
    assert torch.equal(windows, torch.stack([stream[s : s + 64] for s in starts]))
    assert int(windows.max()) < 9_000  # the last 10% is never sampled
    with pytest.raises(ValueError, match="need at least"):
        paper_windows(torch.arange(50), 1, 64, random.Random(0))


def test_scale_windows_extend_the_scoring_windows(tmp_path, monkeypatch):
    text = tmp_path / "calib.txt"
    text.write_text("".join(f"sentence number {i} about nothing.\n" for i in range(400)))
    tok = tiny_tokenizer()
    sets = calibration_sets(tok, CalibConfig(source=str(text), num_windows=4, scale_windows=8, seqlen=32, sampler="paper"))
    assert sets.score.shape == (4, 32) and sets.scale.shape == (8, 32) and not sets.shared
    assert torch.equal(sets.scale[:4], sets.score)  # BI scores on the first 128 of the scale's 256
    same = calibration_sets(tok, CalibConfig(source=str(text), num_windows=4, seqlen=32))
    assert same.shared and same.info["windows_drawn"] == 4


def _reference_crops(tok, docs, n, seqlen, rng):
    """The official Taylor+ draw order, written out independently."""
    out, history = [], []
    for _ in range(n):
        while True:
            i = rng.randint(0, len(docs) - 1)
            ids = tok(docs[i])["input_ids"]
            if len(ids) >= seqlen and i not in history:
                history.append(i)
                break
        j = rng.randint(0, len(ids) - seqlen)
        out.append(ids[j : j + seqlen])
    return torch.tensor(out)


def test_document_crops_follow_the_official_draws_and_continue_the_stream():
    tok = bos_tokenizer()
    docs = ["short"] * 5 + [f"document {k} " * (5 + k) for k in range(8)]
    rng = random.Random(0)
    [rng.randint(0, 999) for _ in range(3)]  # the WikiText-2 window draws that come first
    crops = document_crops(tok, docs, 4, 40, rng)
    reference_rng = random.Random(0)
    [reference_rng.randint(0, 999) for _ in range(3)]
    assert torch.equal(crops, _reference_crops(tok, docs, 4, 40, reference_rng))
    with pytest.raises(ValueError, match="documents of at least"):
        document_crops(tok, docs, 20, 40, random.Random(0))


def test_gptq_c4_crops_allow_repeats_and_leave_one_token():
    tok = tiny_tokenizer()
    docs = ["x" * 50, "tiny"]
    crops = gptq_c4_crops(tok, docs, 5, 30, seed=0)
    assert crops.shape == (5, 30)  # one long document, sampled five times


def test_sleb_data_is_the_shuffled_head_joined_and_cut():
    rows = [f"row {i}" if i % 3 else "" for i in range(50)]
    order = np.random.default_rng(0).permutation(50).tolist()
    assert shuffled_rows(rows, 0) == [rows[i] for i in order]
    tok = tiny_tokenizer()
    windows = sleb_windows(tok, rows, 20, 16, seed=0)
    stream = tok("\n\n".join(rows[i] for i in order[:20]))["input_ids"]
    assert torch.equal(windows.flatten(), torch.tensor(stream[: windows.numel()]))
    assert windows.shape[0] == len(stream) // 16


def write_paper_data(root):
    """A local data folder with WikiText-2 train (exact) and the 1000-document C4 file."""
    (root / "wikitext2").mkdir(parents=True)
    lines = []
    for i in range(300):
        lines += [" \n", f" = Heading {i} = \n", " \n", f" Paragraph {i} says something plain about item {i} . \n"]
    (root / "wikitext2" / "wiki.train.raw").write_text("".join(lines))
    (root / "wikitext2" / "wiki.valid.raw").write_text("".join(lines[:600]))
    (root / "c4").mkdir()
    with gzip.open(root / "c4" / "c4-en-1000docs.json.gz", "wt") as handle:
        for i in range(30):
            handle.write(json.dumps({"text": f"web page {i} " * (3 + i)}) + "\n")


def test_heavily_overlapping_windows_warn(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("a short text of a few hundred characters. " * 8)
    with pytest.warns(UserWarning, match="overlap heavily"):
        sets = calibration_sets(tiny_tokenizer(), CalibConfig(source=str(text), num_windows=32, seqlen=64))
    assert "overlap heavily" in sets.info["warning"] and sets.info["text_tokens"] < 400


def test_windows_longer_than_the_models_positions_are_refused(tmp_path):
    from prunecomp import PruneConfig, prune
    from prunecomp.config import ConfigError
    from tiny import tiny_model

    text = tmp_path / "calib.txt"
    text.write_text("plenty of words " * 2000)
    with pytest.raises(ConfigError, match="exceed the model's 256 positions"):
        prune(tiny_model("llama", layers=4), tiny_tokenizer(), PruneConfig(calib=CalibConfig(source=str(text), seqlen=1000)))
