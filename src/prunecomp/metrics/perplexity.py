"""PPL metric (SLEB-style)."""

from __future__ import annotations

import torch

from ..nll import window_nll
from ..surgery import skipped
from .base import ScoreContext
from ..progress import progress_bar


def skip_loss(ctx: ScoreContext) -> torch.Tensor:
    """PPL: mean calibration NLL of the model with layer l skipped, for each l.

    The layer whose absence hurts least (lowest loss) is removed first. Costs one pass over
    the calibration windows per candidate layer; the layer-wise engine gets the same losses from
    its cached boundaries at half that (layers l+1..L-1 only, from h_l).
    """
    if ctx.engine is not None:
        cached = ctx.engine.skip_losses(ctx.windows)
        if cached is not None:
            return cached
    losses = []
    for index in progress_bar(range(ctx.arch.num_layers()), desc="PPL metric", enabled=ctx.progress):
        with skipped(ctx.arch, index):
            losses.append(window_nll(ctx.arch.model, ctx.windows, ctx.batch_size).mean)
    return torch.tensor(losses, dtype=torch.float64)
