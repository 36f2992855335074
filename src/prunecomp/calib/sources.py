"""Text sources for calibration and perplexity: named datasets, local files, $PRUNECOMP_DATA.

A source spec is either a dataset name with an optional split (`wikitext2`, `ptb:valid`,
`c4:validation`) or a path to a .txt / .jsonl(.gz) / .json.gz / .parquet file. Named datasets
are read from the directory in $PRUNECOMP_DATA when the files are there, and otherwise
through `datasets` from the Hugging Face hub.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "PRUNECOMP_DATA"


class DataSourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class NamedDataset:
    name: str
    default_split: str
    joiner: str  # how documents are joined before tokenising (the usual protocol per dataset)
    local: dict[str, tuple[str, ...]]  # split -> glob patterns relative to $PRUNECOMP_DATA
    hub: dict[str, tuple]  # split -> (load_dataset args, kwargs, text field)


NAMED: dict[str, NamedDataset] = {
    "wikitext2": NamedDataset(
        "wikitext2",
        "test",
        "\n\n",
        {"test": ("wikitext2/wiki.test.raw",)},
        {
            split: (("wikitext", "wikitext-2-raw-v1"), {"split": split}, "text")
            for split in ("train", "validation", "test")
        },
    ),
    "ptb": NamedDataset(
        "ptb",
        "test",
        "\n\n",
        {"validation": ("ptb/ptb.valid.txt",), "test": ("ptb/ptb.test.txt",)},
        {
            "train": (("ptb_text_only", "penn_treebank"), {"split": "train"}, "sentence"),
            "validation": (("ptb_text_only", "penn_treebank"), {"split": "validation"}, "sentence"),
            "test": (("ptb_text_only", "penn_treebank"), {"split": "test"}, "sentence"),
        },
    ),
    # Local C4: the OLMo c4-sample documents stand in for train (calibration) and the Paloma
    # C4 validation subset for validation, so calibration and evaluation never share text.
    "c4": NamedDataset(
        "c4",
        "validation",
        " ",
        {"train": ("c4/c4-sample.*.json.gz",), "validation": ("c4/c4_100_domains_val*.jsonl.gz",)},
        {
            "train": (
                ("allenai/c4",),
                {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"},
                "text",
            ),
            "validation": (
                ("allenai/c4",),
                {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}, "split": "validation"},
                "text",
            ),
        },
    ),
}
ALIASES = {"wikitext": "wikitext2", "wikitext-2": "wikitext2", "wiki": "wikitext2", "penn": "ptb"}
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


@dataclass(frozen=True)
class TextSource:
    """Documents plus how the standard protocol joins them."""

    name: str
    documents: list[str]
    joiner: str
    origin: str  # where they came from, for reports

    def joined(self) -> str:
        return self.joiner.join(self.documents)


def data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def _read_jsonl(path: Path, field: str = "text") -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if field not in record:
                raise DataSourceError(f"{path}:{number}: no {field!r} field (keys: {sorted(record)})")
            docs.append(record[field])
    return docs


def _read_parquet(path: Path, field: str = "text") -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataSourceError("reading .parquet needs pyarrow: pip install pyarrow") from exc
    table = pq.read_table(path)
    if field not in table.column_names:
        raise DataSourceError(f"{path}: no {field!r} column (columns: {table.column_names})")
    return [str(x) for x in table.column(field).to_pylist()]


def read_file(path: Path) -> TextSource:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
        docs = _read_jsonl(path)
        joiner = "\n\n"
    elif name.endswith(".parquet"):
        docs = _read_parquet(path)
        joiner = "\n\n"
    elif name.endswith((".txt", ".raw")):
        docs = _read_lines(path)
        joiner = "\n"  # a plain text file is used as it is
    else:
        raise DataSourceError(f"{path}: unsupported file type; use .txt, .jsonl, .jsonl.gz or .parquet")
    if not docs:
        raise DataSourceError(f"{path}: no text found")
    return TextSource(path.stem, docs, joiner, str(path))


def _local_documents(dataset: NamedDataset, split: str, root: Path) -> list[str] | None:
    patterns = dataset.local.get(split)
    if not patterns:
        return None
    paths = sorted(p for pattern in patterns for p in root.glob(pattern))
    if not paths:
        return None
    docs: list[str] = []
    for path in paths:
        if dataset.name == "wikitext2":
            # Rows of the HF dataset are the raw file's lines with their newline kept.
            docs.extend(path.read_text(encoding="utf-8").splitlines(keepends=True))
        elif dataset.name == "ptb":
            docs.extend(line.strip() for line in _read_lines(path))
        else:
            docs.extend(_read_jsonl(path))
    return docs


def _hub_documents(dataset: NamedDataset, split: str) -> list[str]:
    if split not in dataset.hub:
        raise DataSourceError(f"{dataset.name} has no split {split!r}; choose from {sorted(dataset.hub)}")
    args, kwargs, field = dataset.hub[split]
    try:
        import datasets
    except ImportError as exc:
        raise DataSourceError(
            f"{dataset.name}:{split} is not in ${DATA_ENV} and loading it from the hub needs `datasets` "
            "(pip install datasets)"
        ) from exc
    try:
        data = datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # network, auth, renamed repos: all end the same way for the user
        raise DataSourceError(
            f"could not load {dataset.name}:{split} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline? Point ${DATA_ENV} at a local data "
            "folder or pass a .txt/.jsonl/.parquet file"
        ) from exc
    return [str(x) for x in data[field]]


def load_text(spec: str) -> TextSource:
    """Resolve a source spec (dataset name[:split] or file path) to documents."""
    path = Path(spec).expanduser()
    if path.is_file():
        return read_file(path)
    name, _, split = spec.partition(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in NAMED:
        if path.suffix or os.sep in spec:
            raise DataSourceError(f"no such file: {spec}")
        raise DataSourceError(f"unknown text source {spec!r}; use one of {sorted(NAMED)} (optionally :split) or a file path")
    dataset = NAMED[name]
    split = SPLIT_ALIASES.get(split, split) or dataset.default_split
    root = data_dir()
    if root is not None:
        docs = _local_documents(dataset, split, root)
        if docs is not None:
            return TextSource(f"{name}:{split}", docs, dataset.joiner, f"${DATA_ENV} ({root})")
    docs = _hub_documents(dataset, split)
    return TextSource(f"{name}:{split}", docs, dataset.joiner, "huggingface hub")
