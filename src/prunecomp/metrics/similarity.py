"""Cosine-similarity metrics over the residual stream."""

from __future__ import annotations

import torch

from .base import ScoreContext


def block_influence(ctx: ScoreContext) -> torch.Tensor:
    """CosSim(BI), ShortGPT's Block Influence: E_t[1 - cos(h_l, h_{l+1})] for each layer l.

    A layer that barely rotates its input changes little; the lowest BI is pruned first.
    """
    return ctx.stats.cos_distance[1].clone()


def contiguous_similarity(ctx: ScoreContext) -> torch.Tensor:
    """CosSim(CL), LLM-Streamline's layer-block choice: for each start l, E_t[1 - cos(h_l, h_{l+n})].

    The n = block_size contiguous layers whose input and output are most similar (lowest
    distance) are removed together and compensated as one block.
    """
    return ctx.stats.cos_distance[ctx.block_size].clone()
