"""One-pass statistics of the residual stream at every decoder-layer boundary.

h_l is the input of decoder layer l (h_0 is the embedding output) and h_L the output of the
last layer, before the final norm. One forward pass over the calibration windows gathers,
for every boundary, the per-channel mean |h| and the mean cosine distance between h_l and
h_{l+n} for the requested block sizes n.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..arch import ResolvedArch
from ..compat import layer_input_hidden, layer_output_hidden
from ..progress import progress_bar


@dataclass
class HiddenStats:
    channel_mean_abs: torch.Tensor  # [L + 1, hidden], float64: row l is E_t |h_l[t, c]|
    cos_distance: dict[int, torch.Tensor]  # n -> [L + 1 - n]: E_t (1 - cos(h_l, h_{l+n}))
    num_tokens: int
    token_rms: torch.Tensor | None = None  # [L + 1], float64: E_t rms(h_l[t, :]), what the next norm divides by
    # [windows, L + 1, hidden], float32: E_t |h_l[t, c]| per calibration window (only when asked for;
    # the official scale averages per-window ratios)
    window_channel_mean_abs: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.channel_mean_abs.shape[0] - 1

    def magnitude(self) -> torch.Tensor:
        """Mean |h_l| over tokens and channels, per boundary l = 0..L."""
        return self.channel_mean_abs.mean(dim=1)

    def gain_ratio(self) -> torch.Tensor:
        """Per-layer channel-averaged gain E|h_{l+1}| / E|h_l| (appendix Figure 1 of the paper)."""
        m = self.channel_mean_abs
        return (m[1:] / m[:-1]).mean(dim=1)


class _Accumulator:
    def __init__(self, num_layers: int, block_sizes: tuple[int, ...], per_window: bool = False):
        self.num_layers = num_layers
        self.per_window = per_window
        self.window_means: list[torch.Tensor] = []  # per batch: [batch, L + 1, hidden]
        self.block_sizes = tuple(sorted(set(block_sizes)))
        self.window = max(self.block_sizes, default=0)
        self.abs_sum: torch.Tensor | None = None
        self.rms_sum = torch.zeros(num_layers + 1, dtype=torch.float64)
        self.cos_sum = {n: torch.zeros(num_layers + 1 - n, dtype=torch.float64) for n in self.block_sizes}
        self.tokens = 0
        self._recent: dict[int, torch.Tensor] = {}

    def begin_batch(self) -> None:
        self._recent.clear()
        self._batch_means: dict[int, torch.Tensor] = {}

    def end_batch(self) -> None:
        if self.per_window and self._batch_means:
            self.window_means.append(torch.stack([self._batch_means[l] for l in range(self.num_layers + 1)], dim=1))

    def observe(self, index: int, hidden: torch.Tensor) -> None:
        h = hidden.detach().float()
        flat_abs = h.abs().sum(dim=tuple(range(h.dim() - 1)), dtype=torch.float64).cpu()
        if self.abs_sum is None:
            self.abs_sum = torch.zeros(self.num_layers + 1, h.shape[-1], dtype=torch.float64)
        self.abs_sum[index] += flat_abs
        self.rms_sum[index] += h.pow(2).mean(dim=-1).sqrt().sum(dtype=torch.float64).cpu()
        if self.per_window:  # [batch, hidden]: mean over each window's tokens
            self._batch_means[index] = h.abs().reshape(h.shape[0], -1, h.shape[-1]).mean(dim=1).cpu()
        if index == 0:
            self.tokens += h.numel() // h.shape[-1]
        for n in self.block_sizes:
            earlier = self._recent.get(index - n)
            if earlier is not None:
                distance = 1.0 - F.cosine_similarity(earlier, h, dim=-1)
                self.cos_sum[n][index - n] += distance.sum(dtype=torch.float64).cpu()
        self._recent[index] = h
        self._recent.pop(index - self.window, None)

    def result(self) -> HiddenStats:
        if self.abs_sum is None or self.tokens == 0:
            raise RuntimeError("no hidden states were captured")
        return HiddenStats(
            channel_mean_abs=self.abs_sum / self.tokens,
            cos_distance={n: s / self.tokens for n, s in self.cos_sum.items()},
            num_tokens=self.tokens,
            token_rms=self.rms_sum / self.tokens,
            window_channel_mean_abs=torch.cat(self.window_means) if self.window_means else None,
        )


@contextmanager
def residual_hooks(arch: ResolvedArch, callback):
    """Call `callback(l, h_l)` for every boundary l = 0..L during forward passes.

    Hooks are removed on exit, even when the forward pass raises.
    """
    layers = arch.layers()
    last = len(layers) - 1
    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(
                layer.register_forward_pre_hook(
                    lambda module, args, kwargs, index=index: callback(index, layer_input_hidden(args, kwargs)),
                    with_kwargs=True,
                )
            )
        handles.append(layers[last].register_forward_hook(lambda m, a, out: callback(last + 1, layer_output_hidden(out))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def batches(windows: torch.Tensor, batch_size: int):
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def capture_stats(
    arch: ResolvedArch,
    windows: torch.Tensor,
    block_sizes: tuple[int, ...] = (1,),
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "calibration",
    per_window: bool = False,
) -> HiddenStats:
    """Run the base model (no LM head) over `windows` once and return HiddenStats.

    per_window: also keep each window's per-channel mean |h| at every boundary.
    """
    accumulator = _Accumulator(arch.num_layers(), block_sizes, per_window)
    base = arch.base_model()
    device = model_device(arch.model)
    with residual_hooks(arch, accumulator.observe):
        for batch in progress_bar(list(batches(windows, batch_size)), desc=desc, enabled=progress):
            accumulator.begin_batch()
            base(input_ids=batch.to(device), use_cache=False)
            accumulator.end_batch()
    return accumulator.result()
