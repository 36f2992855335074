"""Simple baselines."""

from __future__ import annotations

import torch

from .base import ScoreContext


def reverse_order(ctx: ScoreContext) -> torch.Tensor:
    """Reverse-order: the deepest remaining layer scores lowest, so layers go last-first."""
    return torch.arange(ctx.arch.num_layers(), 0, -1, dtype=torch.float64)


def random_scores(ctx: ScoreContext) -> torch.Tensor:
    """Random: uniform scores from a generator seeded by (seed, round), reproducible."""
    generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.round_index)
    return torch.rand(ctx.arch.num_layers(), generator=generator, dtype=torch.float64)
