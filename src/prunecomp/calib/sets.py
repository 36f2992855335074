"""Calibration sets: the windows a run scores on and the windows its scale is estimated on.

Both come from one CalibConfig (the scale's windows are a prefix-extension of the scoring ones),
unless the metric has its own scoring data (PruneConfig.score_calib).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass, field

import torch

from .sources import TextSource, load_exact_text, load_text
from .windows import (
    document_crops,
    paper_windows,
    sample_windows,
    sleb_windows,
    tokenize_as_official,
    tokenize_stream,
    wants_bos,
)


@dataclass
class CalibrationSets:
    score: torch.Tensor  # [n, seqlen] windows the metric scores on
    scale: torch.Tensor  # [m, seqlen] windows the compensation scale is estimated on
    info: dict = field(default_factory=dict)  # for the recipe

    @property
    def shared(self) -> bool:
        return self.score is self.scale

    @classmethod
    def from_windows(cls, windows: torch.Tensor, scale: torch.Tensor | None = None) -> "CalibrationSets":
        info = {"source": "caller-provided windows", "num_windows": windows.shape[0], "seqlen": windows.shape[1]}
        if scale is not None:
            info["scale"] = {"source": "caller-provided windows", "num_windows": scale.shape[0], "seqlen": scale.shape[1]}
        return cls(windows, windows if scale is None else scale, info)


def _load(calib, purpose: str = "calibration") -> TextSource:
    if calib.exact:
        return load_exact_text(calib.source, purpose=purpose, allow_substitute=calib.allow_substitute)
    return load_text(calib.source, purpose=purpose)


def _describe(calib, source: TextSource, bos: bool | None, count: int) -> dict:
    info = asdict(calib) | {"resolved": source.name, "origin": source.origin, "windows_drawn": count}
    if bos is not None:
        info["add_bos"] = bos
    if source.substitute_for:
        info["substitute_for"] = source.substitute_for
    return info


# Windows that together ask for more than this many times the text's tokens mostly repeat each other.
MAX_OVERLAP = 4.0


def _coverage(stream: torch.Tensor, count: int, calib) -> dict:
    """The text's size against what the windows ask for; warns when they must overlap heavily."""
    asked = count * calib.seqlen
    info = {"text_tokens": int(stream.numel())}
    if asked > MAX_OVERLAP * stream.numel():
        message = (f"calibration text {calib.source!r} has {stream.numel():,} tokens, but {count} windows of {calib.seqlen} "
                   f"ask for {asked:,}: the windows overlap heavily (use more text, or fewer or shorter windows)")
        warnings.warn(message, stacklevel=3)
        info["warning"] = message
    return info


def draw_windows(tokenizer, calib, rng: random.Random | None = None) -> tuple[torch.Tensor, dict, random.Random | None]:
    """calib.drawn_windows windows from calib's source and sampler; returns the random stream the
    paper sampler used (so a later sampler can continue it, as the official Taylor+ script does)."""
    source = _load(calib)
    count = calib.drawn_windows
    if calib.sampler == "random":
        add_bos = wants_bos(tokenizer) if calib.add_bos is None else calib.add_bos
        bos_id = tokenizer.bos_token_id if add_bos else None
        stream = tokenize_stream(tokenizer, source)
        windows = sample_windows(stream, count, calib.seqlen, calib.seed, bos_id)
        return windows, _describe(calib, source, bos_id is not None, count) | _coverage(stream, count, calib), None
    if calib.sampler == "paper":
        rng = random.Random(calib.seed)
        stream = tokenize_as_official(tokenizer, source.joined())
        windows = paper_windows(stream, count, calib.seqlen, rng)
        info = _describe(calib, source, None, count) | {"bos": "tokenizer's own, once per stream"}
        return windows, info | _coverage(stream, count, calib), rng
    if calib.sampler == "document_crops":
        if not (calib.continue_random and rng is not None):
            rng = random.Random(calib.seed)
        windows = document_crops(tokenizer, source.documents, count, calib.seqlen, rng)
        return windows, _describe(calib, source, None, count) | {"bos": "tokenizer's own, per document"}, rng
    windows = sleb_windows(tokenizer, source.documents, count, calib.seqlen, calib.seed)  # sampler == "sleb"
    return windows, _describe(calib, source, None, windows.shape[0]) | {"rows": count}, None


def calibration_sets(tokenizer, calib, score_calib=None) -> CalibrationSets:
    """Scoring and scale windows for a run, with a description of both for the recipe."""
    windows, info, rng = draw_windows(tokenizer, calib)
    scale = windows[: calib.scale_windows] if calib.scale_windows else windows[: calib.num_windows]
    score = windows[: calib.num_windows]
    if score_calib is not None:
        score, score_info, _ = draw_windows(tokenizer, score_calib, rng)
        info = info | {"scoring": score_info}
    elif scale.shape[0] == score.shape[0]:
        scale = score  # one tensor: one statistics pass serves both
    substitutions = [d["substitute_for"] + " -> " + d["resolved"] for d in (info, info.get("scoring", {})) if d.get("substitute_for")]
    if substitutions:
        info["substitutions"] = substitutions
    return CalibrationSets(score, scale, info)
