"""Weight-based metrics from Shortened LLaMA (Kim et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

from ..calib.capture import batches, model_device
from .base import ScoreContext


def _layer_matrices(layer: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of a decoder layer (every nn.Linear weight; norms are excluded)."""
    return [m.weight for m in layer.modules() if isinstance(m, nn.Linear)]


def magnitude(ctx: ScoreContext) -> torch.Tensor:
    """Mag+: sum of |W| over every weight matrix of the layer."""
    with torch.no_grad():
        return torch.tensor(
            [sum(float(w.detach().float().abs().sum()) for w in _layer_matrices(layer)) for layer in ctx.arch.layers()],
            dtype=torch.float64,
        )


def taylor(ctx: ScoreContext) -> torch.Tensor:
    """Taylor+: sum of |W * dL/dW| over every weight matrix of the layer.

    L is the mean next-token loss on the calibration windows; the first-order Taylor term
    estimates how much the loss changes if the layer's weights are zeroed.
    """
    model = ctx.arch.model
    layers = ctx.arch.layers()
    matrices = [_layer_matrices(layer) for layer in layers]
    tracked = {id(p) for group in matrices for p in group}
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    device = model_device(model)
    total_tokens = ctx.windows.shape[0] * (ctx.windows.shape[1] - 1)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in tracked)
            p.grad = None
        with torch.enable_grad():
            for batch in batches(ctx.windows, ctx.batch_size):
                batch = batch.to(device)
                logits = model(input_ids=batch, use_cache=False).logits
                loss = nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
                )
                (loss / total_tokens).backward()
        with torch.no_grad():
            scores = [
                sum(float((w.detach().float() * w.grad.float()).abs().sum()) for w in group if w.grad is not None)
                for group in matrices
            ]
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(previous[name])
    return torch.tensor(scores, dtype=torch.float64)
