"""Run decoder layers one at a time with exactly the inputs the model's own forward gives them.

Position embeddings, attention masks (sliding or full per layer type) and embedding scaling are
computed by the base model's forward. Rather than re-implementing them per architecture, the
decoder layers are swapped for stubs that record what they receive; one cheap forward (embedding
and mask construction only) then yields h_0 and every layer's keyword arguments. The same stubs,
returning a chosen hidden state, let the model's own head (final norm, LM head, logit soft-capping)
turn any boundary state into logits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import ResolvedArch
from ..compat import layer_input_hidden, layer_output_hidden


class _StopForward(Exception):
    """Raised by the last stub: nothing after the decoder layers is needed."""


class _Stub(nn.Module):
    def __init__(self, index: int, real: nn.Module, behaviour):
        super().__init__()
        self.index = index
        self._behaviour = behaviour
        for attribute in ("attention_type", "layer_type", "is_sliding", "sliding_window"):  # read by some base forwards
            if hasattr(real, attribute):
                setattr(self, attribute, getattr(real, attribute))

    def forward(self, *args, **kwargs):
        return self._behaviour(self.index, args, kwargs)


@contextmanager
def stubbed_layers(arch: ResolvedArch, behaviour):
    """Temporarily replace the decoder layers by stubs calling `behaviour(index, args, kwargs)`."""
    real = arch.layers()
    arch.set_layers(nn.ModuleList([_Stub(i, layer, behaviour) for i, layer in enumerate(real)]))
    try:
        yield
    finally:
        arch.set_layers(real)


@dataclass
class LayerInputs:
    """What the base model's forward passes to each decoder layer for one batch shape."""

    hidden: torch.Tensor  # h_0 of the batch it was captured from
    args: list[tuple] = field(default_factory=list)  # positional arguments after hidden_states, per layer
    kwargs: list[dict] = field(default_factory=list)  # keyword arguments, per layer


@torch.no_grad()
def capture_layer_inputs(arch: ResolvedArch, input_ids: torch.Tensor) -> LayerInputs:
    """h_0 and every current layer's extra arguments for `input_ids`, from one stubbed forward."""
    num_layers = arch.num_layers()
    captured = LayerInputs(hidden=torch.empty(0))

    def record(index, args, kwargs):
        hidden = layer_input_hidden(args, kwargs)
        if isinstance(hidden, (tuple, list)):  # a previous stub's tuple, when the loop does not unpack
            hidden = hidden[0]
        if index == 0:
            captured.hidden = hidden
        captured.args.append(tuple(args[1:]))
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        if index == num_layers - 1:
            raise _StopForward
        return (hidden,)  # a tuple works whether the loop unpacks [0] or passes it on (unwrapped above)

    with stubbed_layers(arch, record):
        try:
            arch.base_model()(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
    if len(captured.kwargs) != num_layers:
        raise RuntimeError(f"captured inputs for {len(captured.kwargs)} of {num_layers} decoder layers")
    return captured


class LayerRunner:
    """Calls one decoder layer and remembers whether this transformers returns a tuple."""

    def __init__(self):
        self.returns_tuple: bool | None = None

    def __call__(self, layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        output = layer(hidden, *args, **kwargs)
        self.returns_tuple = isinstance(output, (tuple, list))
        return layer_output_hidden(output)


@torch.no_grad()
def head_logits(arch: ResolvedArch, input_ids: torch.Tensor, final_hidden: torch.Tensor, returns_tuple: bool) -> torch.Tensor:
    """Logits of the model's own head (final norm, LM head, soft-capping) applied to `final_hidden`,
    the state after the last decoder layer, for the windows `input_ids`."""

    def emit(index, args, kwargs):
        return (final_hidden,) if returns_tuple else final_hidden

    with stubbed_layers(arch, emit):
        return arch.model(input_ids=input_ids, use_cache=False).logits


def module_device(module: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    for tensor in module.parameters():
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device(fallback)
