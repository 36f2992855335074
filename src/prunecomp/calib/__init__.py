"""Calibration and evaluation data: sources, windows and one-pass hidden-state statistics."""

from .sources import DATA_ENV, DataSourceError, TextSource, load_text
from .windows import consecutive_windows, sample_windows, tokenize_stream, wants_bos

__all__ = [
    "DATA_ENV",
    "DataSourceError",
    "TextSource",
    "load_text",
    "consecutive_windows",
    "sample_windows",
    "tokenize_stream",
    "wants_bos",
]
