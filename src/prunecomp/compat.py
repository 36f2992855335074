"""Differences between supported transformers versions: decoder layers return a tensor (5.x and
some 4.5x models) or a tuple whose first element is the hidden states (older 4.x)."""

from __future__ import annotations

import torch


def layer_output_hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def layer_input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]
