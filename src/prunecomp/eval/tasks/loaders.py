"""Offline dataset loaders for prunecomp's shipped lm-eval tasks.

The task YAMLs next to this file point lm-eval at these functions through
``custom_dataset: !function loaders.<name>``.  lm-eval calls them as
``loader(**task_metadata, **dataset_kwargs)``; :func:`prunecomp.eval.harness.run_harness`
puts the data directory into the task metadata as ``prunecomp_data`` (falling back to
the ``$PRUNECOMP_DATA`` environment variable), so the YAMLs themselves hold no paths.

Each loader returns a :class:`datasets.DatasetDict` whose rows are already in the shape
the YAML templates expect; the prompts rebuilt from them are byte-identical to
lm-eval's own ``arc_easy`` / ``boolq`` / ``copa`` / ``piqa`` / ``mmlu`` tasks.
This module must stay importable by file path (lm-eval loads it that way), so it only
uses the standard library and ``datasets``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import datasets

DATA_ENV = "PRUNECOMP_DATA"

# Relative paths under the data directory (see each folder's SOURCE.md).
ARC_EASY_FILE = "arc_easy/arc_easy_test.mosaicml.jsonl"
BOOLQ_FILE = "boolq/boolq_val.mosaicml.jsonl"
COPA_FILE = "copa/copa_val.mosaicml.jsonl"
PIQA_FILE = "piqa/valid.jsonl"
PIQA_LABELS = "piqa/valid-labels.lst"
MMLU_DIR = "mmlu/data"


def data_root(prunecomp_data: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the explicit argument, else ``$PRUNECOMP_DATA``."""
    root = prunecomp_data or os.environ.get(DATA_ENV)
    if not root:
        raise FileNotFoundError(
            f"prunecomp's offline lm-eval tasks need a data directory: pass data_dir= to run_harness "
            f"or set ${DATA_ENV}"
        )
    return Path(root).expanduser().resolve()  # absolute: lm-eval's task files must not depend on the working folder


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing local evaluation file: {path}")
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with _need(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _mosaic(path: Path, split: str, *, prefix: str = "", choice_prefix: str = "") -> datasets.DatasetDict:
    rows = []
    for row in _jsonl(path):
        query = row["query"]
        if prefix:
            if not query.startswith(prefix):
                raise ValueError(f"{path}: query does not start with {prefix!r}: {query[:80]!r}")
            query = query[len(prefix) :]
        rows.append(
            {
                "query": query,
                "choices": [choice_prefix + c for c in row["choices"]],
                "gold": int(row["gold"]),
            }
        )
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def arc_easy(prunecomp_data: str | None = None, **_: Any) -> datasets.DatasetDict:
    """ARC-Easy test: ``query`` is ``"Question: <q>"`` (the YAML adds ``"\\nAnswer:"``)."""
    return _mosaic(data_root(prunecomp_data) / ARC_EASY_FILE, "test")


def boolq(prunecomp_data: str | None = None, **_: Any) -> datasets.DatasetDict:
    """BoolQ validation: ``query`` becomes ``"<passage>\\nQuestion: <q>?"``.

    That is lm-eval's boolq prompt minus the ``"\\nAnswer:"`` the YAML appends.
    """
    return _mosaic(data_root(prunecomp_data) / BOOLQ_FILE, "validation", prefix="Passage: ")


def copa(prunecomp_data: str | None = None, **_: Any) -> datasets.DatasetDict:
    """COPA validation.

    lm-eval's ``copa`` returns choices as ``" " + choice`` *and* keeps the default
    ``target_delimiter=" "``, so it scores ``"<premise> because" + "  <choice>"``. The choices
    are prefixed here to reproduce that exactly (same numbers as lm-eval's task).
    """
    return _mosaic(data_root(prunecomp_data) / COPA_FILE, "validation", choice_prefix=" ")


def piqa(prunecomp_data: str | None = None, **_: Any) -> datasets.DatasetDict:
    """PIQA validation from the original ``valid.jsonl`` + ``valid-labels.lst``."""
    root = data_root(prunecomp_data)
    rows = _jsonl(root / PIQA_FILE)
    labels = [int(x) for x in _need(root / PIQA_LABELS).read_text().split()]
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} examples but {len(labels)} labels")
    docs = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels)]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def _mmlu_csv(path: Path) -> list[dict[str, Any]]:
    rows = []
    with _need(path).open(encoding="utf-8", newline="") as fh:
        for rec in csv.reader(fh):
            if not rec:
                continue
            if len(rec) != 6 or rec[5].strip() not in ("A", "B", "C", "D"):
                raise ValueError(f"{path}: expected question,A,B,C,D,answer-letter, got {rec!r}")
            rows.append({"question": rec[0], "choices": rec[1:5], "answer": "ABCD".index(rec[5].strip())})
    return rows


def mmlu(prunecomp_data: str | None = None, subject: str | None = None, **_: Any) -> datasets.DatasetDict:
    """One MMLU subject: ``test`` (scored) and ``dev`` (the 5 few-shot examples)."""
    if not subject:
        raise ValueError("mmlu loader needs dataset_kwargs.subject")
    root = data_root(prunecomp_data) / MMLU_DIR
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(
                [dict(r, subject=subject) for r in _mmlu_csv(root / split / f"{subject}_{split}.csv")]
            )
            for split in ("test", "dev")
        }
    )
