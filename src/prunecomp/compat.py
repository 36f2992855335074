"""Differences between supported transformers majors (4.57+ and 5.x)."""

from __future__ import annotations

import torch
import transformers
from torch import nn

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# transformers 5 decoder layers return the hidden states; 4.x returns a tuple.
LAYER_RETURNS_TUPLE = TRANSFORMERS_MAJOR < 5


def layer_output_hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def layer_input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class SkippedLayer(nn.Module):
    """Stands in for a decoder layer and passes the residual stream through unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        # Keep attributes the model loop may read (e.g. attention_type), but not as a submodule.
        self.__dict__["wrapped"] = layer
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states=None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        return (hidden_states,) if LAYER_RETURNS_TUPLE else hidden_states
