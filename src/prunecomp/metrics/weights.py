"""Weight-based metrics from Shortened LLaMA (Kim et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

from ..calib.capture import batches, model_device
from .base import ScoreContext
from ..progress import progress_bar


def _layer_linears(ctx: ScoreContext, index: int) -> list[tuple[nn.Parameter, float]]:
    """(weight, divisor) for every weight matrix of a layer.

    Residual writers carry the compensation scales folded into them so far; dividing by that
    product scores the layer as it was before the fold, so compensating an earlier cut does not
    make the layers before it look more important (otherwise iterative Mag+/Taylor+ drift towards
    removing ever deeper layers).
    """
    scale = ctx.writer_scale(index)  # every weight matrix: Linear, GPT-2's Conv1D, fused 3-D experts
    return [(p, scale if is_writer else 1.0) for _, p, is_writer in ctx.arch.weight_matrices(index)]


def _layer_norms(ctx: ScoreContext, index: int) -> list[tuple[nn.Parameter, float, float]]:
    """(weight, folded scale, offset) for every norm of a layer (input, post-attention, q/k norms).

    A norm is any non-Linear module whose own weight is one vector. Only norm *writers* (Gemma's
    post-norms) carry folded compensation; their effective weight is offset + w.
    """
    layer = ctx.arch.layers()[index]
    writers = {id(m) for m in ctx.arch.layer_writers(index)[1]}
    scale = ctx.writer_scale(index)
    offset = ctx.arch.spec.norm_offset
    norms = []
    for module in layer.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) or not isinstance(weight, nn.Parameter) or weight.dim() != 1:
            continue
        norms.append((weight, scale, offset) if id(module) in writers else (weight, 1.0, 0.0))
    return norms


def _layer_matrices(ctx: ScoreContext, index: int) -> list[tuple[nn.Parameter, float]]:
    """(weight, divisor) for what Taylor+ scores: the Linear weights, plus the norm weights when
    ctx.norm_weights (as the official Taylor+/Mag+ and Shortened LLaMA do)."""
    entries = _layer_linears(ctx, index)
    if ctx.norm_weights:
        entries += [(weight, 1.0) for weight, _, _ in _layer_norms(ctx, index)]
    return entries


def _norm_magnitude(weight: torch.Tensor, scale: float, offset: float) -> float:
    """sum |w| of a norm weight as it was before `scale` was folded into its (offset + w) form."""
    w = weight.detach().double()
    return float(((w + offset) / scale - offset).abs().sum())


def magnitude(ctx: ScoreContext) -> torch.Tensor:
    """Mag+: sum of |W| over every weight matrix of the layer (and its norm weights when
    ctx.norm_weights); compensation folded into writers is divided out unless ctx.writer_scales is None."""
    with torch.no_grad():
        scores = []
        for index in range(ctx.arch.num_layers()):
            total = sum(float(w.detach().float().abs().sum()) / divisor for w, divisor in _layer_linears(ctx, index))
            if ctx.norm_weights:
                total += sum(_norm_magnitude(w, scale, offset) for w, scale, offset in _layer_norms(ctx, index))
            scores.append(total)
        return torch.tensor(scores, dtype=torch.float64)


def taylor(ctx: ScoreContext) -> torch.Tensor:
    """Taylor+: sum of |W * dL/dW| over every weight matrix of the layer.

    L is the mean next-token loss on the calibration windows; the first-order Taylor term
    estimates how much the loss changes if the layer's weights are zeroed. Unlike Mag+, no
    correction for folded compensation is needed: scaling a writer by s scales dL/dW by about
    1/s (the stream it feeds is read through norms), so |W * dL/dW| is nearly unchanged.

    Cost: one forward and one backward per batch, about three forward passes a round. Only the
    scored weights get gradients (the embeddings and LM head get none), summed in float32 on the
    model's device, and the model is not copied.
    """
    unscaled = ScoreContext(ctx.arch, ctx.windows, ctx.stats, norm_weights=ctx.norm_weights)
    matrices = [_layer_matrices(unscaled, index) for index in range(ctx.arch.num_layers())]
    gradients = _loss_gradients(
        ctx.arch.model, [w for group in matrices for w, _ in group], ctx.windows, ctx.batch_size, ctx.progress,
        desc=f"round {ctx.round_index + 1}: taylor",
    )
    with torch.no_grad():
        scores = [
            sum(float((w.detach().float() * gradients[id(w)]).abs().sum()) / divisor
                for w, divisor in group if id(w) in gradients)
            for group in matrices
        ]
    return torch.tensor(scores, dtype=torch.float64)


def _loss_gradients(
    model: nn.Module, params: list[nn.Parameter], windows: torch.Tensor, batch_size: int, progress: bool, desc: str
) -> dict[int, torch.Tensor]:
    """id(p) -> float32 dL/dp for the given parameters, L the mean next-token loss over `windows`.

    Every other parameter is frozen for the duration (so autograd builds no graph for them);
    requires_grad flags are restored and .grad cleared on exit. Float32 parameters accumulate in
    their own .grad; others are summed into float32 buffers after each batch, so half-precision
    gradients are never accumulated in half precision.
    """
    wanted = {id(p): p for p in params}
    previous = [(p, p.requires_grad) for p in model.parameters()]
    device = model_device(model)
    total_tokens = windows.shape[0] * (windows.shape[1] - 1)
    sums: dict[int, torch.Tensor] = {}
    try:
        for p, _ in previous:
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        with torch.enable_grad():
            for batch in progress_bar(list(batches(windows, batch_size)), desc=desc, enabled=progress):
                batch = batch.to(device)
                logits = model(input_ids=batch, use_cache=False).logits
                loss = nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
                )
                (loss / total_tokens).backward()
                del logits, loss
                for key, p in wanted.items():
                    if p.grad is not None and p.grad.dtype != torch.float32:
                        sums[key] = sums[key].add_(p.grad) if key in sums else p.grad.float()
                        p.grad = None
        for key, p in wanted.items():
            if p.grad is not None:  # float32 parameters: autograd summed into .grad
                sums[key] = p.grad.detach()
        return sums
    finally:
        for p, requires_grad in previous:
            p.grad = None
            p.requires_grad_(requires_grad)
