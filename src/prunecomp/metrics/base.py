"""What every metric receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..arch import ResolvedArch
from ..calib.capture import HiddenStats


@dataclass
class ScoreContext:
    arch: ResolvedArch
    windows: torch.Tensor
    stats: HiddenStats | None  # filled when the metric declares needs_stats
    block_size: int = 1
    batch_size: int = 1
    seed: int = 0
    round_index: int = 0
    progress: bool = False
    # Product of the compensation scales folded so far into each current layer's residual writers.
    # Weight-based metrics divide it out so the fold (a reparameterisation) does not move scores.
    writer_scales: list[float] | None = None
    norm_weights: bool = False  # Taylor+/Mag+ also score the layer's norm weights
    # The loop's execution engine (prunecomp.engine.session.EngineSession): metrics that can reuse
    # its cached boundary states ask it first (it answers None when it has none).
    engine: object | None = None

    def writer_scale(self, index: int) -> float:
        return 1.0 if self.writer_scales is None else self.writer_scales[index]


@dataclass(frozen=True)
class Metric:
    """A layer-importance metric. `score` returns one value per candidate start index of the
    current model (lower = less important = removed first)."""

    name: str
    summary: str
    score: Callable[[ScoreContext], torch.Tensor]
    needs_stats: bool = False
    protect_first: int = 0  # default barrier: layers never chosen at the start...
    protect_last: int = 0  # ...and at the end of the current model
    contiguous_block: bool = False  # scores blocks of `block_size` layers (CosSim(CL))
