"""Per-architecture specs: the only place that knows attribute paths.

Each ArchSpec answers: where the decoder layers are, which modules write into the
residual stream, how norms are parameterised, and which config keys follow the
layer count. Everything else in prunecomp goes through `resolve(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

__all__ = ["ArchSpec", "ResolvedArch", "SPECS", "UnsupportedArchitecture", "resolve", "supported_model_types"]


class UnsupportedArchitecture(ValueError):
    pass


def _slice_max_window_layers(config, kept: list[int]) -> None:
    """Qwen2/3: layers with index >= max_window_layers use sliding windows (when enabled).

    Keep the same layers on the same side of the boundary after removal.
    """
    old = getattr(config, "max_window_layers", None)
    if isinstance(old, int):
        config.max_window_layers = sum(1 for idx in kept if idx < old)


@dataclass(frozen=True)
class ArchSpec:
    """How one family of decoder-only models is laid out.

    Paths are dotted attribute paths from the *ForCausalLM module (or from a decoder layer
    for the `layer_*` fields).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embedding: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    base_model: str = "model"
    # Residual writers inside a decoder layer. Linear writers scale weight and bias;
    # norm writers scale their effective weight (offset + w) and bias.
    layer_linear_writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    layer_norm_writers: tuple[str, ...] = ()
    # Norms compute (norm_offset + w) * x_hat: 0 for Llama-style, 1 for Gemma's (1 + w).
    norm_offset: float = 0.0
    # Config lists with one entry per layer, sliced on removal.
    per_layer_config_keys: tuple[str, ...] = ("layer_types",)
    # Further config rewrites on removal: fn(config, kept_current_indices).
    config_adjusters: tuple[Callable, ...] = field(default=())
    # Scale estimator used when the config says "auto" (see compensate.block_scale).
    default_estimator: str = "channel_mean"


LLAMA_LIKE = dict(layer_linear_writers=("self_attn.o_proj", "mlp.down_proj"))
GEMMA_LIKE = dict(
    # Gemma-2/3 normalise each sublayer's output before the residual add, so the post-norms
    # (not o_proj/down_proj) are what writes the stream. Their weight is applied as (1 + w).
    layer_linear_writers=(),
    layer_norm_writers=("post_attention_layernorm", "post_feedforward_layernorm"),
    norm_offset=1.0,
    # Measured on Gemma-3-270M (BI, k=3, README): the paper's channel average over-estimates the
    # gain (small channels grow fastest under fixed-RMS post-normed updates, while a few massive
    # channels set the RMS the next norm divides by) and made perplexity worse than no compensation;
    # the token-RMS ratio made it better.
    default_estimator="token_rms",
)

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), config_adjusters=(_slice_max_window_layers,), **LLAMA_LIKE),
    ArchSpec("qwen3", ("qwen3",), config_adjusters=(_slice_max_window_layers,), **LLAMA_LIKE),
    ArchSpec("gemma2", ("gemma2",), **GEMMA_LIKE),
    ArchSpec("gemma3", ("gemma3_text",), **GEMMA_LIKE),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in SPECS for t in spec.model_types)


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class ResolvedArch:
    """An ArchSpec bound to one model instance."""

    spec: ArchSpec
    model: nn.Module

    @property
    def config(self):
        return self.model.config

    def layers(self) -> nn.ModuleList:
        return _get(self.model, self.spec.layers)

    def set_layers(self, layers: nn.ModuleList) -> None:
        parent_path, _, name = self.spec.layers.rpartition(".")
        setattr(_get(self.model, parent_path) if parent_path else self.model, name, layers)

    def num_layers(self) -> int:
        return len(self.layers())

    def embedding(self) -> nn.Embedding:
        return _get(self.model, self.spec.embedding)

    def final_norm(self) -> nn.Module:
        return _get(self.model, self.spec.final_norm)

    def base_model(self) -> nn.Module:
        return _get(self.model, self.spec.base_model)

    def is_tied(self) -> bool:
        out = self.model.get_output_embeddings()
        return out is not None and out.weight is self.embedding().weight

    def layer_writers(self, index: int) -> tuple[list[nn.Module], list[nn.Module]]:
        """(linear writers, norm writers) of decoder layer `index`."""
        layer = self.layers()[index]
        linears = [_get(layer, p) for p in self.spec.layer_linear_writers]
        norms = [_get(layer, p) for p in self.spec.layer_norm_writers]
        return linears, norms

    def parameter_count(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def resolve(model: nn.Module) -> ResolvedArch:
    model_type = _model_type(model)
    for spec in SPECS:
        if model_type in spec.model_types:
            resolved = ResolvedArch(spec, model)
            try:
                resolved.layers()
                resolved.embedding()
                resolved.final_norm()
            except AttributeError as exc:  # e.g. a *Model without an LM head, or a multimodal wrapper
                raise UnsupportedArchitecture(
                    f"{type(model).__name__} (model_type {model_type!r}) does not have the layout of the "
                    f"{spec.family} spec ({exc}); load it with AutoModelForCausalLM"
                ) from exc
            return resolved
    raise UnsupportedArchitecture(
        f"unsupported architecture {model_type!r}; supported model_types: {', '.join(supported_model_types())}"
    )


def norm_has_bias(norm: nn.Module) -> bool:
    return isinstance(getattr(norm, "bias", None), torch.Tensor)
