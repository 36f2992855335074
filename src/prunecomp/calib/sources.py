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

from ..errors import PrunecompError

DATA_ENV = "PRUNECOMP_DATA"


class DataSourceError(PrunecompError, RuntimeError):
    pass


@dataclass(frozen=True)
class NamedDataset:
    name: str
    default_split: str  # for evaluation; calibration defaults to CALIBRATION_SPLIT
    joiner: str  # how documents are joined before tokenising (the usual protocol per dataset)
    local: dict[str, tuple[str, ...]]  # split -> glob patterns relative to $PRUNECOMP_DATA
    hub: dict[str, tuple]  # split -> (load_dataset args, kwargs, text field)
    # Local splits that only stand in for the hub split of the same name (other documents of the
    # same corpus). A protocol that must be exact (the paper preset) does not use them.
    stand_ins: frozenset[str] = frozenset()


# Calibration never defaults to a split that evaluation scores.
CALIBRATION_SPLIT = "train"


NAMED: dict[str, NamedDataset] = {
    "wikitext2": NamedDataset(
        "wikitext2",
        "test",
        "\n\n",
        {
            "train": ("wikitext2/wiki.train.raw",),
            "validation": ("wikitext2/wiki.valid.raw",),
            "test": ("wikitext2/wiki.test.raw",),
        },
        {
            split: (("wikitext", "wikitext-2-raw-v1"), {"split": split}, "text")
            for split in ("train", "validation", "test")
        },
    ),
    "ptb": NamedDataset(
        "ptb",
        "test",
        "\n\n",
        {"train": ("ptb/ptb.train.txt",), "validation": ("ptb/ptb.valid.txt",), "test": ("ptb/ptb.test.txt",)},
        {
            "train": (("ptb_text_only", "penn_treebank"), {"split": "train"}, "sentence"),
            "validation": (("ptb_text_only", "penn_treebank"), {"split": "validation"}, "sentence"),
            "test": (("ptb_text_only", "penn_treebank"), {"split": "test"}, "sentence"),
        },
    ),
    # Local C4: the OLMo c4-sample documents stand in for train (calibration) and the Paloma
    # C4 validation subset for validation, so calibration and evaluation never share text.
    # `1000docs` is the 1,000-document C4 sample those 30 documents were cut from (split unknown;
    # about 34 documents are long enough for 2048-token crops): local only.
    "c4": NamedDataset(
        "c4",
        "validation",
        " ",
        {
            "train": ("c4/c4-sample.*.json.gz",),
            "validation": ("c4/c4_100_domains_val*.jsonl.gz",),
            "1000docs": ("c4/c4-en-1000docs.json.gz",),
        },
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
        stand_ins=frozenset({"train", "validation"}),
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
    substitute_for: str | None = None  # the source spec this one stands in for, when substituted

    def joined(self) -> str:
        return self.joiner.join(self.documents)


def data_dir() -> Path | None:
    """$PRUNECOMP_DATA as an absolute path (a relative value is taken from the working folder)."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser().resolve() if value else None


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path}: not UTF-8 text (undecodable byte at offset {exc.start}); pass a text file") from None


def _read_jsonl(path: Path, field: str = "text") -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSourceError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataSourceError(f"{path}:{number}: expected a JSON object with a {field!r} field, "
                                      f"found a {type(record).__name__}")
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


def wikitext_rows(raw: str) -> list[str]:
    """The Hugging Face `wikitext` rows of a raw file: each line with its newline kept, and
    whitespace-only lines (the raw files' " \\n" separators) as empty rows. Joined with "\\n\\n"
    they give exactly the text the hub dataset gives."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def _local_documents(dataset: NamedDataset, split: str, root: Path) -> tuple[list[str], list[Path]] | None:
    patterns = dataset.local.get(split)
    if not patterns:
        return None
    paths = sorted(p for pattern in patterns for p in root.glob(pattern))
    if not paths:
        return None
    docs: list[str] = []
    for path in paths:
        if dataset.name == "wikitext2":
            docs.extend(wikitext_rows(path.read_text(encoding="utf-8")))
        elif dataset.name == "ptb":
            docs.extend(line.strip() for line in _read_lines(path))
        else:
            docs.extend(_read_jsonl(path))
    return docs, paths


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


# What a protocol that needs an exact split may use offline, when the user allows it.
SUBSTITUTES = {
    "wikitext2:train": "wikitext2:validation",
    "c4:train": "c4:1000docs",
    "c4:validation": "c4:validation",  # the local stand-in (Paloma's C4 validation documents)
}


def _split_spec(spec: str, purpose: str) -> tuple[NamedDataset, str] | None:
    name, _, split = spec.partition(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in NAMED:
        return None
    dataset = NAMED[name]
    default = CALIBRATION_SPLIT if purpose == "calibration" else dataset.default_split
    return dataset, SPLIT_ALIASES.get(split, split) or default


def load_text(spec: str, *, purpose: str = "evaluation", exact: bool = False) -> TextSource:
    """Resolve a source spec (dataset name[:split] or file path) to documents.

    A named dataset without a split gets the evaluation split (`purpose="evaluation"`) or the
    train split (`purpose="calibration"`), so a calibration never silently reads the text that
    `eval` scores. `exact=True` refuses local stand-in splits (see NamedDataset.stand_ins).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return read_file(path)
    resolved = _split_spec(spec, purpose)
    if resolved is None:
        if path.suffix or os.sep in spec:
            raise DataSourceError(f"no such file: {spec}")
        raise DataSourceError(f"unknown text source {spec!r}; use one of {sorted(NAMED)} (optionally :split) or a file path")
    dataset, split = resolved
    if split not in dataset.local and split not in dataset.hub:
        raise DataSourceError(f"{dataset.name} has no split {split!r}; choose from {sorted(set(dataset.local) | set(dataset.hub))}")
    root = data_dir()
    if root is not None and not (exact and split in dataset.stand_ins):
        local = _local_documents(dataset, split, root)
        if local is not None:
            docs, paths = local
            return TextSource(f"{dataset.name}:{split}", docs, dataset.joiner, ", ".join(str(p) for p in paths))
    docs = _hub_documents(dataset, split)
    return TextSource(f"{dataset.name}:{split}", docs, dataset.joiner, "huggingface hub")


def load_exact_text(spec: str, *, purpose: str = "calibration", allow_substitute: bool = False) -> TextSource:
    """The exact split a protocol names; offline, a documented substitute only when allowed."""
    try:
        return load_text(spec, purpose=purpose, exact=True)
    except DataSourceError as exc:
        resolved = _split_spec(spec, purpose)
        key = f"{resolved[0].name}:{resolved[1]}" if resolved else spec
        substitute = SUBSTITUTES.get(key)
        if substitute is None:
            raise
        if not allow_substitute:
            raise DataSourceError(
                f"{key} is needed exactly and could not be loaded ({str(exc).splitlines()[0]}); pass --allow-substitute "
                f"(API: allow_substitute=True) to use {substitute} from ${DATA_ENV} instead, recorded in the recipe"
            ) from exc
        source = load_text(substitute, purpose=purpose)
        return TextSource(source.name, source.documents, source.joiner, source.origin, substitute_for=key)
