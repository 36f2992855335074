import gzip
import json

import pytest
import torch

from prunecomp.calib import DataSourceError, consecutive_windows, load_text, sample_windows, tokenize_stream, wants_bos
from tiny import tiny_tokenizer


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    assert load_text(str(tmp_path / "a.txt")).documents == ["line one", "line two"]
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write(json.dumps({"text": "doc 1"}) + "\n" + json.dumps({"text": "doc 2"}) + "\n")
    source = load_text(str(tmp_path / "b.jsonl"))
    assert source.documents == ["doc 1", "doc 2"] and source.joined() == "doc 1\n\ndoc 2"
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert load_text(str(tmp_path / "c.jsonl.gz")).documents == ["zipped"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "d.parquet")
    assert load_text(str(tmp_path / "d.parquet")).documents == ["p1", "p2"]
    with open(tmp_path / "e.jsonl", "w") as f:
        f.write(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataSourceError, match="text"):
        load_text(str(tmp_path / "e.jsonl"))


def test_named_dataset_from_the_data_dir(tmp_path, monkeypatch):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" a b c \n d e \n")
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    source = load_text("ptb")
    assert source.documents == ["a b c", "d e"] and source.joined() == "a b c\n\nd e"
    assert source.origin == str((tmp_path / "ptb" / "ptb.test.txt").resolve())  # absolute: replayable from anywhere


def test_a_relative_data_dir_is_resolved_to_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text("x\n")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("PRUNECOMP_DATA", tmp_path.name)
    assert load_text("ptb").origin == str((tmp_path / "ptb" / "ptb.test.txt").resolve())


def test_calibration_defaults_to_the_train_split(tmp_path, monkeypatch):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text("test text\n")
    (tmp_path / "ptb" / "ptb.train.txt").write_text("train text\n")
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    assert load_text("ptb").name == "ptb:test"  # evaluation's default
    assert load_text("ptb", purpose="calibration").documents == ["train text"]


def test_wikitext_rows_match_the_hub_dataset():
    from prunecomp.calib.sources import wikitext_rows

    raw = " \n = Title = \n \n Body text . \n"
    rows = wikitext_rows(raw)
    # the hub's rows: blank lines are empty strings, text lines keep their newline
    assert rows == ["", " = Title = \n", "", " Body text . \n"]
    assert "\n\n".join(rows) == "\n\n = Title = \n\n\n\n\n Body text . \n"


def test_exact_splits_refuse_stand_ins_unless_substitution_is_allowed(tmp_path, monkeypatch):
    from prunecomp.calib.sources import load_exact_text

    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.valid.raw").write_text(" \n valid text \n")
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match="--allow-substitute"):
        load_exact_text("wikitext2:train")
    source = load_exact_text("wikitext2:train", allow_substitute=True)
    assert source.name == "wikitext2:validation" and source.substitute_for == "wikitext2:train"


def test_offline_hub_failure_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNECOMP_DATA", str(tmp_path))  # empty: falls through to the hub
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match="PRUNECOMP_DATA"):
        load_text("wikitext2:train")
    with pytest.raises(DataSourceError, match="unknown text source"):
        load_text("nonsense")


def test_windows_are_seeded_and_bos_is_optional():
    stream = torch.arange(1000)
    a = sample_windows(stream, 4, 16, seed=1)
    assert a.shape == (4, 16) and torch.equal(a, sample_windows(stream, 4, 16, seed=1))
    assert not torch.equal(a, sample_windows(stream, 4, 16, seed=2))
    assert bool(((a[:, 1:] - a[:, :-1]) == 1).all())  # contiguous text
    b = sample_windows(stream, 2, 16, seed=1, bos_id=7)
    assert b.shape == (2, 16) and bool((b[:, 0] == 7).all())
    c = consecutive_windows(stream, 100, max_windows=3)
    assert torch.equal(c.flatten(), torch.arange(300))
    assert consecutive_windows(stream, 100).shape == (10, 100)
    with pytest.raises(ValueError):
        sample_windows(torch.arange(5), 1, 16, seed=0)


def test_tokenize_stream_adds_no_specials():
    tok = tiny_tokenizer()
    from prunecomp.calib import TextSource

    ids = tokenize_stream(tok, TextSource("t", ["ab", "c"], "\n\n", "test"))
    assert ids.tolist() == tok("ab\n\nc", add_special_tokens=False)["input_ids"]
    assert isinstance(wants_bos(tok), bool)


def test_real_data_dir_layout(data_dir):
    for spec in ("wikitext2", "ptb:valid", "ptb:test", "c4:train", "c4:validation"):
        source = load_text(spec)
        assert len(source.documents) > 5, spec
    # calibration (c4 train) and evaluation (c4 validation) never share documents
    assert not set(load_text("c4:train").documents) & set(load_text("c4:validation").documents)
