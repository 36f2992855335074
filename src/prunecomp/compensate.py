"""Magnitude compensation: estimate the gain a removed block provided, fold it into the weights.

All functions are pure with respect to their inputs except `fold_scale`, which edits weights
in place (in float32, cast back to the parameter dtype).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import PrunecompError
from .guards import cast_checked
from .arch import ResolvedArch, WriterTensor

ESTIMATORS = ("channel_mean", "channel_mean_windows", "token_rms")
# Estimators that need HiddenStats.window_channel_mean_abs
PER_WINDOW_ESTIMATORS = ("channel_mean_windows",)
AUTO = "auto"  # the architecture spec's default_estimator


class CompensationError(PrunecompError, ValueError):
    pass


def block_scale(stats, start: int, stop: int, estimator: str = "channel_mean") -> float:
    """The scale that stands in for layers start..stop-1, from one-pass HiddenStats.

    channel_mean (default, the paper's): mean_c E|h_stop[c]| / E|h_start[c]|.
    channel_mean_windows (the official code's averaging, magcomp.py): per window, the per-channel
    ratio of mean |h| over that window's tokens; then the mean over windows; then over channels.
    token_rms: E_t rms(h_stop) / E_t rms(h_start), the ratio of what the next RMSNorm divides by;
    it follows massive-activation channels, which the channel average deliberately down-weights.
    """
    if estimator == "channel_mean_windows":
        per_window = stats.window_channel_mean_abs
        if per_window is None:
            raise CompensationError("channel_mean_windows needs per-window statistics (capture_stats(per_window=True))")
        return windowed_channel_scale(per_window[:, start], per_window[:, stop])
    if estimator == "token_rms":
        scale = float(stats.token_rms[stop] / stats.token_rms[start])
        check_scale(scale)
        return scale
    return estimate_scale(stats.channel_mean_abs[start], stats.channel_mean_abs[stop], estimator)


def estimate_scale(mean_abs_in: torch.Tensor, mean_abs_out: torch.Tensor, estimator: str = "channel_mean") -> float:
    """Prune&Comp's channel-wise averaged magnitude gain ratio.

    `mean_abs_in[c]` is E_t|h_i[t, c]| at the input of the first removed layer, `mean_abs_out[c]`
    the same at the input of the layer that follows the removed block. The scale is
    mean_c(mean_abs_out[c] / mean_abs_in[c]). Averaging per-channel ratios keeps a few
    massive-activation channels from dominating, which a ratio of global means would not.
    """
    if estimator != "channel_mean":
        raise CompensationError(f"estimate_scale computes channel_mean, not {estimator!r}")
    num = mean_abs_out.double()
    den = mean_abs_in.double()
    if num.shape != den.shape:
        raise CompensationError(f"shape mismatch {tuple(num.shape)} vs {tuple(den.shape)}")
    if bool((den <= 0).any()):
        raise CompensationError("a channel has zero mean magnitude at the block input; cannot form a ratio")
    scale = float((num / den).mean())
    check_scale(scale)
    return scale


def windowed_channel_scale(mean_abs_in: torch.Tensor, mean_abs_out: torch.Tensor) -> float:
    """mean_c mean_w (mean_abs_out[w, c] / mean_abs_in[w, c]) for [windows, hidden] inputs."""
    num = mean_abs_out.double()
    den = mean_abs_in.double()
    if num.shape != den.shape or num.dim() != 2:
        raise CompensationError(f"expected two [windows, hidden] tensors, got {tuple(num.shape)} and {tuple(den.shape)}")
    if bool((den <= 0).any()):
        raise CompensationError("a channel has zero mean magnitude at the block input in some window; cannot form a ratio")
    scale = float((num / den).mean(dim=0).mean())
    check_scale(scale)
    return scale


def check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise CompensationError(f"compensation scale must be finite and positive, got {scale!r}")


@torch.no_grad()
def _scale_(tensor: torch.Tensor, factor: float, offset: float = 0.0) -> None:
    """tensor <- (offset + tensor) * factor - offset, computed in float32."""
    if tensor.is_meta:  # a layer still on disk: the layer-wise engine folds it when it reads the layer
        return
    if offset == 0.0 and tensor.dtype == torch.float32:  # same result, no embedding-sized temporaries
        tensor.mul_(factor)
        return
    value = (tensor.float() + offset) * factor - offset
    tensor.copy_(cast_checked(value, tensor.dtype))  # float16 saturates to Inf: refuse, don't save it


@torch.no_grad()
def scale_norm_(norm: nn.Module, factor: float, offset: float) -> None:
    """Multiply a norm's effective affine map (offset + w, and its bias) by `factor`."""
    _scale_(norm.weight, factor, offset)
    if isinstance(getattr(norm, "bias", None), torch.Tensor):
        _scale_(norm.bias, factor)


@torch.no_grad()
def scale_linear_(linear: nn.Module, factor: float) -> None:
    _scale_(linear.weight, factor)
    if getattr(linear, "bias", None) is not None:
        _scale_(linear.bias, factor)


def fold_targets(arch: ResolvedArch, before: int) -> tuple[list[WriterTensor], list[WriterTensor]]:
    """(tensors a fold before layer `before` multiplies by s, tensors it multiplies by 1/s).

    The first list holds every residual writer up to that layer: the embedding and learned position
    embeddings, then each layer's writers (linear weights and biases, fused expert parameters, norm
    writers in their offset form), each tensor once. The second is the final norm when the
    embeddings are tied (it absorbs 1/s instead of untying them), else empty.
    """
    seen: set[int] = set()
    scaled: list[WriterTensor] = []
    for entry in arch.input_writer_tensors() + [t for i in range(before) for t in arch.writer_tensors(i)]:
        if id(entry.tensor) not in seen:
            seen.add(id(entry.tensor))
            scaled.append(entry)
    inverse = arch.final_norm_tensors() if arch.is_tied() else []
    return scaled, inverse


@torch.no_grad()
def fold_tensors_(tensors: list[WriterTensor], factor: float) -> None:
    for entry in tensors:
        _scale_(entry.tensor, factor, entry.offset)


@torch.no_grad()
def fold_scale(arch: ResolvedArch, before: int, scale: float, *, require_exact: bool = True) -> None:
    """Multiply every residual writer before decoder layer `before` by `scale`.

    Afterwards the residual stream h_l for l <= before is exactly `scale` times what it was,
    and the earlier sublayers (which read it through scale-invariant norms) compute the
    same outputs. With tied embeddings the final norm absorbs 1/scale so the logits are
    unchanged; the embeddings are not untied. Families whose fold is not exact (the spec says
    why) raise InexactFold before any weight changes, unless `require_exact=False`.
    """
    check_scale(scale)
    if not 0 <= before <= arch.num_layers():
        raise IndexError(f"layer {before} out of range for {arch.num_layers()} layers")
    if scale == 1.0:
        return
    if require_exact:
        arch.require_exact_fold()
    scaled, inverse = fold_targets(arch, before)
    fold_tensors_(scaled, scale)
    fold_tensors_(inverse, 1.0 / scale)
