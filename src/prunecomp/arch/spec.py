"""ArchSpec (how a family is laid out) and ResolvedArch (a spec bound to one model).

Paths are dotted attribute paths. Writer paths inside a decoder layer use a small syntax so one
row covers every layout a family has had across transformers versions and layer kinds:

- ``a.b.c``   an attribute path to a module or a parameter;
- ``a.*.c``   ``*`` stands for every child of a ModuleList (per-expert modules);
- ``x|y``     alternatives, the first that resolves wins (fused experts in 5.x, a ModuleList in 4.x,
              a dense MLP in the layers a MoE model keeps dense);
- ``x?``      optional: nothing when no alternative resolves (a shared expert only sparse layers have).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PrunecompError


class UnsupportedArchitecture(PrunecompError, ValueError):
    """The model's layout is unknown, or layers cannot be removed from it."""


class InexactFold(UnsupportedArchitecture):
    """The family's residual stream is not read through scale-invariant norms only: no exact fold."""


@dataclass(frozen=True)
class WriterTensor:
    """One tensor the compensation fold multiplies: tensor <- (offset + tensor) * s - offset."""

    name: str
    tensor: torch.Tensor
    offset: float = 0.0


@dataclass(frozen=True)
class ArchSpec:
    """How one family of decoder-only models is laid out.

    Paths start at the *ForCausalLM module, except the ``layer_*`` writer paths, which start at a
    decoder layer (see the module docstring for their syntax).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embedding: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    base_model: str = "model"
    # Other modules that write the first residual state h_0 together with the embedding
    # (learned position embeddings).
    input_writers: tuple[str, ...] = ()
    # Residual writers inside a decoder layer. Linear-like writers scale weight and bias (any
    # layout: nn.Linear, GPT-2's Conv1D); a path naming a parameter (fused experts) scales it whole.
    layer_linear_writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    # Norm writers scale their effective weight (norm_offset + w) and their bias.
    layer_norm_writers: tuple[str, ...] = ()
    # Norms compute (norm_offset + w) * x_hat: 0 for Llama-style, 1 for Gemma's (1 + w).
    norm_offset: float = 0.0
    # Config lists with one entry per layer, sliced on removal.
    per_layer_config_keys: tuple[str, ...] = ("layer_types",)
    # Further config rewrites on removal: fn(config, kept_current_indices).
    config_adjusters: tuple[Callable, ...] = field(default=())
    # Scale estimator used when the config says "auto" (see compensate.block_scale).
    default_estimator: str = "channel_mean"
    # fn(config) -> None when the fold is exact for this config, else the one-line reason it is not.
    inexact_reason: Callable[[Any], str | None] | None = None
    # fn(config) -> None when layers can be removed at all, else the reason they cannot.
    unsupported_reason: Callable[[Any], str | None] | None = None
    # What the support table says about this row (parallel blocks, multipliers, ...).
    notes: str = ""


def get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _expand(root, parts: list[str], prefix: str) -> list[tuple[str, Any]]:
    if not parts:
        return [(prefix, root)]
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(root, (nn.ModuleList, nn.Sequential)):
            raise AttributeError(f"{prefix or 'layer'} is not a ModuleList")
        found = []
        for index, child in enumerate(root):
            found += _expand(child, rest, f"{prefix}.{index}" if prefix else str(index))
        return found
    child = getattr(root, head)  # AttributeError when absent: the alternative does not apply
    if child is None:
        raise AttributeError(f"{prefix}.{head} is None")
    return _expand(child, rest, f"{prefix}.{head}" if prefix else head)


def resolve_writer_path(root: nn.Module, path: str) -> list[tuple[str, Any]]:
    """[(dotted name, module or parameter)] for one writer path (see the module docstring)."""
    optional = path.endswith("?")
    alternatives = path.rstrip("?").split("|")
    for alternative in alternatives:
        try:
            return _expand(root, alternative.split("."), "")
        except AttributeError:
            continue
    if optional:
        return []
    raise UnsupportedArchitecture(f"no module or parameter at {path!r} in {type(root).__name__}")


def _module_tensors(name: str, module: nn.Module, offset: float) -> list[WriterTensor]:
    tensors = []
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        tensors.append(WriterTensor(f"{name}.weight", weight, offset))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        tensors.append(WriterTensor(f"{name}.bias", bias, 0.0))
    return tensors


def _as_tensors(name: str, obj, offset: float) -> list[WriterTensor]:
    if isinstance(obj, torch.Tensor):  # a parameter named directly (fused experts)
        return [WriterTensor(name, obj, 0.0)]
    return _module_tensors(name, obj, offset)


@dataclass
class ResolvedArch:
    """An ArchSpec bound to one model instance."""

    spec: ArchSpec
    model: nn.Module

    @property
    def config(self):
        return self.model.config

    def layers(self) -> nn.ModuleList:
        return get_path(self.model, self.spec.layers)

    def set_layers(self, layers: nn.ModuleList) -> None:
        parent_path, _, name = self.spec.layers.rpartition(".")
        setattr(get_path(self.model, parent_path) if parent_path else self.model, name, layers)

    def num_layers(self) -> int:
        return len(self.layers())

    def embedding(self) -> nn.Embedding:
        return get_path(self.model, self.spec.embedding)

    def final_norm(self) -> nn.Module:
        return get_path(self.model, self.spec.final_norm)

    def base_model(self) -> nn.Module:
        return get_path(self.model, self.spec.base_model)

    def is_tied(self) -> bool:
        out = self.model.get_output_embeddings()
        return out is not None and out.weight is self.embedding().weight

    def _layer_objects(self, index: int, paths: tuple[str, ...]) -> list[tuple[str, Any]]:
        layer = self.layers()[index]
        found = []
        for path in paths:
            found += resolve_writer_path(layer, path)
        return found

    def layer_writers(self, index: int) -> tuple[list[nn.Module], list[nn.Module]]:
        """(linear-like writer modules, norm writer modules) of decoder layer `index`.

        Writers given as bare parameters (fused MoE experts) are not modules and are not listed
        here; `writer_tensors` lists every tensor the fold touches.
        """
        linears = [obj for _, obj in self._layer_objects(index, self.spec.layer_linear_writers) if isinstance(obj, nn.Module)]
        norms = [obj for _, obj in self._layer_objects(index, self.spec.layer_norm_writers)]
        return linears, norms

    def writer_tensors(self, index: int) -> list[WriterTensor]:
        """Every tensor of decoder layer `index` that writes the residual stream, with its offset."""
        prefix = f"{self.spec.layers}.{index}"
        tensors = []
        for name, obj in self._layer_objects(index, self.spec.layer_linear_writers):
            tensors += _as_tensors(f"{prefix}.{name}", obj, 0.0)
        for name, obj in self._layer_objects(index, self.spec.layer_norm_writers):
            tensors += _module_tensors(f"{prefix}.{name}", obj, self.spec.norm_offset)
        return tensors

    def weight_matrices(self, index: int) -> list[tuple[str, torch.Tensor, bool]]:
        """(name, tensor, is_writer) for every weight matrix of decoder layer `index`.

        Any weight with two or more dimensions counts: nn.Linear, GPT-2's Conv1D and fused 3-D
        expert tensors alike. `is_writer` marks the ones the compensation fold scales, so
        weight-based metrics can divide the folded scale back out.
        """
        writers = {id(t.tensor) for t in self.writer_tensors(index)}
        layer = self.layers()[index]
        return [
            (name, p, id(p) in writers)
            for name, p in layer.named_parameters()
            if p.dim() >= 2 and not name.endswith("bias")  # GPT-OSS's per-expert biases are [E, hidden]
        ]

    def input_writer_tensors(self) -> list[WriterTensor]:
        """The tensors that write h_0: the embedding and any learned position embedding."""
        tensors = [WriterTensor(f"{self.spec.embedding}.weight", self.embedding().weight)]
        for path in self.spec.input_writers:
            for name, obj in resolve_writer_path(self.model, path):
                tensors += _as_tensors(name, obj, 0.0)
        return tensors

    def final_norm_tensors(self) -> list[WriterTensor]:
        """The final norm's affine tensors; with tied embeddings they absorb 1/S."""
        return _module_tensors(self.spec.final_norm, self.final_norm(), self.spec.norm_offset)

    def inexact_reason(self) -> str | None:
        """None when folding a scale is exact for this model, else why it is not (one line)."""
        reason = self.spec.inexact_reason(self.config) if self.spec.inexact_reason else None
        if reason is None and self.is_tied() and not any(t.name.endswith("weight") for t in self.final_norm_tensors()):
            reason = "the embeddings are tied and the final norm has no weight to absorb 1/scale"
        return reason

    def require_exact_fold(self) -> None:
        reason = self.inexact_reason()
        if reason:
            raise inexact_fold(self.spec, reason)

    def parameter_count(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


def norm_has_bias(norm: nn.Module) -> bool:
    return isinstance(getattr(norm, "bias", None), torch.Tensor)


def inexact_fold(spec: ArchSpec, reason: str) -> InexactFold:
    """The one refusal of compensation for a family whose fold is not exact here."""
    return InexactFold(f"compensation refused for {spec.family}: {reason}; prune with compensate=False (--no-comp)")
