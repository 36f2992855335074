"""Per-architecture specs: the only place that knows attribute paths.

Each ArchSpec answers: where the decoder layers are, which tensors write into the residual stream,
how norms are parameterised, which config keys follow the layer count, and whether the
compensation fold is exact for the family. `resolve(model)` binds the table's row to a model, or
for an unknown model type, a discovered spec that passed its invariance self-check on that model.
"""

from __future__ import annotations

import weakref

from torch import nn

from .discover import discover
from .spec import (
    ArchSpec,
    InexactFold,
    ResolvedArch,
    UnsupportedArchitecture,
    WriterTensor,
    get_path,
    inexact_fold,
    norm_has_bias,
    resolve_writer_path,
)
from .table import SPECS, slice_max_window_layers, spec_for, supported_model_types

__all__ = [
    "ArchSpec",
    "InexactFold",
    "ResolvedArch",
    "SPECS",
    "UnsupportedArchitecture",
    "WriterTensor",
    "check_config",
    "discover",
    "get_path",
    "norm_has_bias",
    "resolve",
    "resolve_writer_path",
    "slice_max_window_layers",
    "supported_model_types",
]

# Discovered specs, per model object: the self-check runs once per model, and the spec stays
# valid after layers are removed (paths do not change).
_DISCOVERED: "weakref.WeakKeyDictionary[nn.Module, ArchSpec]" = weakref.WeakKeyDictionary()


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def _check_layout(resolved: ResolvedArch) -> ResolvedArch:
    spec, model = resolved.spec, resolved.model
    try:
        resolved.layers()
        resolved.embedding()
        resolved.final_norm()
    except AttributeError as exc:  # e.g. a *Model without an LM head, or a multimodal wrapper
        raise UnsupportedArchitecture(
            f"{type(model).__name__} (model_type {_model_type(model)!r}) does not have the layout of the "
            f"{spec.family} spec ({exc}); load it with AutoModelForCausalLM"
        ) from exc
    check_config(spec, model.config, compensate=False)
    return resolved


def check_config(spec: ArchSpec, config, *, compensate: bool) -> None:
    """Refuse what the config alone decides: an unsupported variant, or an inexact fold when compensating."""
    reason = spec.unsupported_reason(config) if spec.unsupported_reason else None
    if reason:
        raise UnsupportedArchitecture(f"cannot prune this {spec.family} model: {reason}")
    reason = spec.inexact_reason(config) if spec.inexact_reason else None
    if reason and compensate:
        raise inexact_fold(spec, reason)


def resolve(model: nn.Module, *, allow_discovery: bool = True) -> ResolvedArch:
    """The architecture of `model`: its table row, else a self-checked discovered spec.

    Discovery needs a causal LM with input and output embeddings; when its self-check fails, the
    UnsupportedArchitecture error names the modules it could not classify.
    """
    model_type = _model_type(model)
    spec = spec_for(model_type)
    if spec is not None:
        return _check_layout(ResolvedArch(spec, model))
    if model in _DISCOVERED:
        return ResolvedArch(_DISCOVERED[model], model)
    if not allow_discovery or not hasattr(model, "get_input_embeddings"):
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r}; supported model_types: {', '.join(supported_model_types())}"
        )
    try:
        resolved = discover(model)
    except UnsupportedArchitecture as exc:
        raise UnsupportedArchitecture(f"{exc}; table model_types: {', '.join(supported_model_types())}") from None
    _DISCOVERED[model] = resolved.spec
    return resolved
