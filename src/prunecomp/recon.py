"""Reconstruction compensation (`--comp scalar+recon`): refit the kept layers to the dense stream.

The per-cut maps of `linear_comp` are fitted during the loop against the *pruned* model's own
stream, so each cut's error is inherited by the next fit. Here the cuts are made with the scalar
(or nothing), and once the layers are chosen every kept layer from the last one before the first
cut to the end gets linear_comp's map on its writers, fitted so that the stream after it matches
the *dense* model's stream at the same place (the input of the next kept layer's original index,
or the last layer's output). Errors of earlier cuts and refits are then corrected, not compounded.

Each fit is `linear_comp.fit_cut` (ridge towards the identity, chosen on held-out windows, so a
layer whose map does not help on held-out windows is left alone) and each fold is exact, so the
checkpoint is a plain layer-pruned model.

Cost: the dense stream at every layer boundary is captured once before pruning ((L + 1)·N·d
float32 for N calibration tokens: 0.6 GB for SmolLM2 at 32 × 256 tokens); the refit runs the
pruned model layer by layer once, plus one more run of each refitted layer after its fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import ResolvedArch
from .calib.capture import batches, model_device
from .compat import layer_input_hidden, layer_output_hidden
from .engine.forward import LayerRunner, capture_layer_inputs
from .engine.memory import MemoryBudgetError, human
from .engine.session import available_memory
from .linear_comp import CompMethod, CutCapture, CutMap, _hooks, fit_cut, fold_cut_map, map_writers
from .progress import progress_bar


@dataclass
class DenseStreams:
    """The dense model's residual stream on the calibration tokens (first tokens skipped).

    states[i]: [N, d] float32, the input of layer i; states[L]: the last layer's output.
    window: [N] the calibration window of each token (the held-out split uses it).
    """

    states: list[torch.Tensor]
    window: torch.Tensor


def _flatten(hidden: torch.Tensor, skip: int) -> torch.Tensor:
    return hidden[:, skip:].reshape(-1, hidden.shape[-1]).float().cpu()


def _window_ids(windows: torch.Tensor, skip: int) -> torch.Tensor:
    return torch.arange(windows.shape[0]).repeat_interleave(windows.shape[1] - skip)


def dense_stream_bytes(arch: ResolvedArch, windows: torch.Tensor, method: CompMethod) -> int:
    """What `capture_dense_streams` holds: (L + 1) boundaries x N tokens x d, float32."""
    tokens = windows.shape[0] * max(windows.shape[1] - method.skip_first_tokens, 0)
    return (arch.num_layers() + 1) * tokens * arch.embedding().weight.shape[-1] * 4


def check_dense_stream_memory(needed: int, free: int | None) -> None:
    """Refuse before any work when the dense streams would take more than half of the free memory
    (the refit needs as much again for the pruned model's activations and the fits)."""
    if free is not None and needed > free // 2:
        raise MemoryBudgetError(
            f"--comp *recon* keeps the dense model's stream at every layer boundary: {human(needed)} for these "
            f"calibration windows, more than half of the free memory ({human(free)}); use fewer --scale-windows or "
            "--calib-windows, a shorter --seqlen, or --comp scalar+linear (no dense stream)")


@torch.no_grad()
def capture_dense_streams(arch: ResolvedArch, windows: torch.Tensor, method: CompMethod, batch_size: int = 1,
                          progress: bool = False) -> DenseStreams:
    """One hooked calibration pass of the (still dense) model recording every boundary."""
    check_dense_stream_memory(dense_stream_bytes(arch, windows, method), available_memory())
    layers = arch.layers()
    count = len(layers)
    skip = method.skip_first_tokens
    parts: list[list[torch.Tensor]] = [[] for _ in range(count + 1)]

    def keep_input(index):
        return lambda module, args, kwargs: parts[index].append(_flatten(layer_input_hidden(args, kwargs), skip))

    handles = [layer.register_forward_pre_hook(keep_input(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(
        lambda module, args, output: parts[count].append(_flatten(layer_output_hidden(output), skip))))
    device = model_device(arch.model)
    with _hooks(handles):
        for batch in progress_bar(list(batches(windows, batch_size)), desc="recon: dense stream", enabled=progress):
            arch.base_model()(input_ids=batch.to(device), use_cache=False)
    return DenseStreams([torch.cat(p) for p in parts], _window_ids(windows, skip))


def layers_to_refit(kept: list[int], num_original: int) -> list[int]:
    """Current indices of the kept layers from the last one before the first cut to the end
    (nothing when nothing was removed; every kept layer when layer 0 was)."""
    removed = sorted(set(range(num_original)) - set(kept))
    if not removed:
        return []
    return [c for c, original in enumerate(kept) if original >= removed[0] - 1]


@torch.no_grad()
def reconstruct(arch: ResolvedArch, windows: torch.Tensor, kept: list[int], num_original: int, dense: DenseStreams,
                method: CompMethod, batch_size: int = 1, progress: bool = False,
                layers: list[int] | None = None) -> dict[int, CutMap]:
    """Fit and fold the map of every current layer in `layers` (default: `layers_to_refit`), in
    order; returns them keyed by original layer index (each CutMap's `layer` is its current index)."""
    skip = method.skip_first_tokens
    refit = set(layers_to_refit(kept, num_original) if layers is None else layers)
    device = model_device(arch.model)
    chunks = [batch.to(device) for batch in batches(windows, batch_size)]
    inputs = [capture_layer_inputs(arch, batch) for batch in chunks]
    hidden = [captured.hidden for captured in inputs]
    run = LayerRunner()
    maps: dict[int, CutMap] = {}
    for current, layer in enumerate(progress_bar(arch.layers(), desc="recon: refit layers", enabled=progress)):
        if current in refit:
            kind, modules, names = map_writers(arch, current, method)
            seen: dict[int, torch.Tensor] = {}
            writers, outputs = [], []
            handles = [m.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, out)) for i, m in
                       enumerate(modules)]
            with _hooks(handles):
                for h, captured in zip(hidden, inputs):
                    outputs.append(_flatten(run(layer, h, captured.args[current], captured.kwargs[current]), skip))
                    writers.append(torch.stack([_flatten(seen[i], skip) for i in range(len(modules))], dim=1))
            following = kept[current + 1] if current + 1 < len(kept) else num_original
            capture = CutCapture(torch.cat(writers), torch.cat(outputs), dense.states[following], dense.window, names, kind)
            fitted = fit_cut(capture, 1.0, method, current)
            fold_cut_map(arch, fitted)
            maps[kept[current]] = fitted
        hidden = [run(layer, h, captured.args[current], captured.kwargs[current]) for h, captured in zip(hidden, inputs)]
    return maps
