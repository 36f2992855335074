"""Removing decoder layers: the ModuleList, the config and the KV-cache layer indices."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .arch import ResolvedArch
from .compat import layer_input_hidden


def remove_layers(arch: ResolvedArch, indices: list[int]) -> None:
    """Delete decoder layers at the given *current* indices and make the model consistent.

    Slices num_hidden_layers and the spec's per-layer config lists, applies the spec's config
    adjusters, and renumbers every `layer_idx` so the KV cache lines up in memory and after reload.
    """
    layers = arch.layers()
    total = len(layers)
    drop = sorted(set(indices))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= total:
        raise IndexError(f"cannot remove layers {drop} from a model with {total} layers")
    if len(drop) >= total:
        raise ValueError("refusing to remove every decoder layer")
    kept = [i for i in range(total) if i not in set(drop)]
    arch.set_layers(nn.ModuleList([layers[i] for i in kept]))

    config = arch.config
    for key in arch.spec.per_layer_config_keys:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)):
            if len(values) != total:
                raise ValueError(f"config.{key} has {len(values)} entries for {total} layers")
            setattr(config, key, [values[i] for i in kept])
    for adjust in arch.spec.config_adjusters:
        adjust(config, kept)
    config.num_hidden_layers = len(kept)
    renumber_layer_indices(arch)


def renumber_layer_indices(arch: ResolvedArch) -> None:
    for new_index, layer in enumerate(arch.layers()):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index


@contextmanager
def skipped(arch: ResolvedArch, index: int):
    """Make decoder layer `index` pass its input through (for skip-one-layer metrics).

    Hooks replace the layer's output with its input in whatever form the installed transformers
    returns (tensor or tuple), so no assumption about the layer's return type is needed.
    """
    layer = arch.layers()[index]
    seen = {}

    def remember(module, args, kwargs):
        seen["hidden"] = layer_input_hidden(args, kwargs)

    def pass_through(module, args, output):
        hidden = seen.pop("hidden")
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layer.register_forward_pre_hook(remember, with_kwargs=True), layer.register_forward_hook(pass_through)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
