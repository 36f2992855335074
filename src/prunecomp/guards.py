"""Numerical guards: find NaN/Inf early and name where they are.

Pure checks that raise a typed error (or return a warning string); the loader and the prune
loop call them at the points where a silent failure would otherwise be saved.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .errors import NonFiniteWeights, NumericalError

#: A compensation scale outside this range is kept but recorded as a warning in the recipe.
SANE_SCALE_RANGE = (0.1, 10.0)


def _nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(number of NaN, number of +-Inf) entries; zero for integer tensors."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.is_meta:  # meta: layers still on disk
        return 0, 0
    if bool(torch.isfinite(tensor).all()):  # the common case: one reduction, no counting
        return 0, 0
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def _describe(nan: int, inf: int) -> str:
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return " and ".join(p for p in parts if p)


def first_nonfinite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """The first (name, NaN count, Inf count) whose tensor is not all finite, or None."""
    for name, tensor in named_tensors:
        nan, inf = _nonfinite_counts(tensor.detach())
        if nan or inf:
            return name, nan, inf
    return None


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, where: str = "the model") -> None:
    """Refuse a model whose parameters or buffers hold NaN or Inf, naming the first such tensor."""
    check_finite_tensors([*model.named_parameters(), *model.named_buffers()], where)


def check_finite_tensors(named, where: str = "the model") -> None:
    """check_finite_weights over (name, tensor) pairs (the layer-wise engine streams them from disk)."""
    found = first_nonfinite(named)
    if found is not None:
        name, nan, inf = found
        raise NonFiniteWeights(
            f"{where} has non-finite weights: {name} holds {_describe(nan, inf)} values; "
            "pruning would hide the damage, so fix or re-download the checkpoint"
        )


def check_finite(tensor: torch.Tensor, what: str, *, layer: int | None = None, round_index: int | None = None) -> None:
    """Raise NumericalError when `tensor` (activations, scores, ...) holds NaN or Inf.

    For a 1-D tensor of per-layer values (scores) without `layer`, the first bad entry's position
    is named as the layer (an index into the current, partly pruned model).
    """
    nan, inf = _nonfinite_counts(tensor.detach())
    if nan or inf:
        label = "layer"
        if layer is None and tensor.dim() == 1:
            layer, label = int((~torch.isfinite(tensor)).nonzero()[0]), "current layer"
        raise NumericalError(f"{_describe(nan, inf)} in {what}{_where(layer, round_index, label)}; "
                             "stopping before anything is saved")


def _where(layer: int | None, round_index: int | None, label: str = "layer") -> str:
    parts = [f"{label} {layer}" if layer is not None else "", f"round {round_index + 1}" if round_index is not None else ""]
    text = ", ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def check_scale_finite(scale: float, *, layer: int | None = None, round_index: int | None = None) -> None:
    if not math.isfinite(scale) or scale <= 0:
        raise NumericalError(f"compensation scale {scale!r} is not a finite positive number{_where(layer, round_index)}")


def scale_warning(scale: float, *, layer: int | None = None, round_index: int | None = None,
                  sane: tuple[float, float] = SANE_SCALE_RANGE) -> str | None:
    """A warning (for the recipe and the log) when a scale lies outside the sane range, else None."""
    check_scale_finite(scale, layer=layer, round_index=round_index)
    low, high = sane
    if low <= scale <= high:
        return None
    return f"scale {scale:.4g}{_where(layer, round_index)} is outside [{low:g}, {high:g}]; check the calibration data"


@torch.no_grad()
def cast_checked(value: torch.Tensor, dtype: torch.dtype, name: str = "tensor") -> torch.Tensor:
    """Cast a float32 result (e.g. a folded weight) to `dtype`, refusing values that overflow it.

    float16 saturates to Inf above 65504, so a fold computed in float32 can be finite and still
    break once cast back; bfloat16 overflows only near float32's own range.
    """
    cast = value.to(dtype)
    if cast.is_floating_point() and not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(value).all()):
        peak = float(value.abs().max())
        raise NumericalError(f"{name} overflows {str(dtype).removeprefix('torch.')} after the fold (|w| up to {peak:.4g}); "
                             "load the model in float32 or bfloat16")
    return cast


@torch.no_grad()
def scaled_in_float32(tensor: torch.Tensor, factor: float, offset: float = 0.0, name: str = "tensor") -> torch.Tensor:
    """(offset + tensor) * factor - offset computed in float32, cast back with an overflow check."""
    value = (tensor.float() + offset) * factor - offset
    return cast_checked(value, tensor.dtype, name)
