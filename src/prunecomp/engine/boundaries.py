"""Cached boundary states: statistics at about one calibration pass, cheap iterative rounds, cheap PPL.

The engine keeps h_l, the residual stream at the input of every current decoder layer l
(h_L after the last), for every calibration window, and runs layers one at a time, each over all
windows (so a lazily loaded layer is read once per sweep). Three facts make it cheap:

- After a round folds s into the writers before layer i and removes layers i..i+n-1, the states
  h_0..h_i are exactly s times the old ones (up to norm eps): their statistics are rescaled, not
  recomputed; only the layers after the cut run again, from s * h_i.
- Statistics for the loop (HiddenStats) are sums per boundary, so they are updated the same way.
- Skipping layer l (the PPL metric) changes nothing before l: its loss needs only layers
  l+1..L-1 run from h_l, plus the head, i.e. L(L-1)/2 layer calls per round instead of L(L-1).

Costs are counted in token-layer evaluations (decoder-layer calls x tokens), deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..arch import ResolvedArch
from ..calib.capture import HiddenStats, batches
from .forward import LayerInputs, LayerRunner, capture_layer_inputs, head_logits, module_device
from .layerwise import ResidentLayers
from .memory import BoundaryStore
from ..progress import progress_bar


@dataclass
class Cost:
    """Work done so far: token_layer_evals = sum over decoder-layer calls of the tokens they saw."""

    token_layer_evals: int = 0
    layer_calls: int = 0
    head_tokens: int = 0  # tokens pushed through the final norm and LM head (PPL metric)

    def snapshot(self) -> "Cost":
        return Cost(self.token_layer_evals, self.layer_calls, self.head_tokens)


def _cos_distance_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per window: sum over tokens of 1 - cos(a_t, b_t), in float64 from float32 values."""
    distance = 1.0 - F.cosine_similarity(a.detach().float(), b.detach().float(), dim=-1)
    return distance.sum(dim=1, dtype=torch.float64).cpu()


def to_device(value, device: torch.device):
    """Tensors inside nested tuples, lists and dicts moved to `device`; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class BoundaryEngine:
    """Boundary states of one set of calibration windows, kept in step with the loop's rounds.

    Use: `stats()` for the current model's HiddenStats, `skip_losses()` for the PPL metric, and
    `after_round(start, size, scale)` once the loop has folded `scale` before `start` and removed
    layers start..start+size-1. `layers` says where decoder layers come from (ResidentLayers for a
    model in memory, ShardLayers for one read from disk); `store` where boundary states live.
    """

    def __init__(
        self,
        arch: ResolvedArch,
        windows: torch.Tensor,
        layers=None,
        *,
        batch_size: int = 1,
        store: BoundaryStore | None = None,
        progress: bool = False,
        desc: str = "boundaries",
    ):
        self.arch = arch
        self.layers = layers if layers is not None else ResidentLayers(arch)
        self.store = store if store is not None else BoundaryStore()
        self.progress = progress
        self.desc = desc
        self.device = module_device(arch.embedding())
        self.batches = list(batches(windows, batch_size))
        self.num_windows, self.seqlen = int(windows.shape[0]), int(windows.shape[1])
        self.cost = Cost()
        self.runner = LayerRunner()
        self.kept = list(range(arch.num_layers()))  # original index of every current layer
        self._inputs: dict[tuple[int, ...], LayerInputs] = {}  # per batch shape, captured on the dense model
        self._keys: list[tuple[int, int]] = []  # store key of every computed boundary, in order
        self._multiplier: list[float] = []  # current h_l = multiplier[l] * stored h_l
        # Sums per window, so statistics of any prefix of the windows come for free (the paper's
        # scoring windows are a prefix of its scale windows: one engine serves both).
        self._abs_sum: list[torch.Tensor] = []  # float64 [windows, hidden] per boundary: sum_t |h_l[t, c]|
        self._rms_sum: list[torch.Tensor] = []  # float64 [windows] per boundary: sum_t rms(h_l[t])
        self._cos_sum: dict[tuple[int, int], torch.Tensor] = {}  # (n, l) -> [windows]: sum_t 1 - cos(h_l, h_{l+n})
        self._next_key = 0
        self._embed()

    # ------------------------------------------------------------------ boundary bookkeeping
    def _new_key(self) -> tuple[int, int]:
        self._next_key += 1
        return (id(self), self._next_key)  # engines may share one store

    def _inputs_for(self, batch: torch.Tensor) -> LayerInputs:
        return self._inputs[tuple(batch.shape)]

    @torch.no_grad()
    def _embed(self) -> None:
        """h_0 of every batch (and each batch shape's layer arguments) from stubbed forwards."""
        states = []
        for batch in self.batches:
            captured = capture_layer_inputs(self.arch, batch.to(self.device))
            self._inputs.setdefault(tuple(batch.shape), captured)  # arguments per original layer: the dense model's
            states.append(captured.hidden)
        for captured in self._inputs.values():
            captured.hidden = torch.empty(0)  # keep only the arguments
        self._append_boundary(states)

    def _append_boundary(self, states: list[torch.Tensor]) -> None:
        """Record a newly computed boundary (multiplier 1) and its magnitude statistics."""
        abs_sum, rms_sum = [], []
        for h in states:  # float32 values, float64 sums, as calib.capture does
            h = h.detach().float()
            abs_sum.append(h.abs().sum(dim=1, dtype=torch.float64).cpu())
            rms_sum.append(h.pow(2).mean(dim=-1).sqrt().sum(dim=1, dtype=torch.float64).cpu())
        key = self._new_key()
        self.store.put(key, states)
        self._keys.append(key)
        self._multiplier.append(1.0)
        self._abs_sum.append(torch.cat(abs_sum))
        self._rms_sum.append(torch.cat(rms_sum))

    def _state(self, boundary: int, batch_index: int, states: list[torch.Tensor]) -> torch.Tensor:
        multiplier = self._multiplier[boundary]
        return states[batch_index] if multiplier == 1.0 else states[batch_index] * multiplier

    def _run(self, layer, current_index: int, hidden: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        inputs = self._inputs_for(batch)
        original = self.kept[current_index]
        args, kwargs = inputs.args[original], inputs.kwargs[original]
        device = module_device(layer, self.device)
        if device != self.device:  # a layer placed elsewhere by a device map
            args, kwargs = to_device(args, device), to_device(kwargs, device)
        out = self.runner(layer, hidden.to(device), args, kwargs)
        self.cost.token_layer_evals += batch.numel()
        self.cost.layer_calls += 1
        return out

    @property
    def num_computed(self) -> int:
        return len(self._keys)

    @torch.no_grad()
    def refresh(self) -> None:
        """Compute every missing boundary, running only the layers after the last valid one."""
        total = self.arch.num_layers()
        if self.num_computed == 0:  # the embedding itself changed (a map folded before layer 0)
            self._embed()
        todo = range(self.num_computed, total + 1)
        for boundary in progress_bar(todo, desc=self.desc, enabled=self.progress and bool(todo)):
            previous = self.store.get(self._keys[boundary - 1], self.device)
            outputs, cos = [], []
            with self.layers.layer(boundary - 1) as layer:
                for b, batch in enumerate(self.batches):
                    h_in = self._state(boundary - 1, b, previous)
                    h_out = self._run(layer, boundary - 1, h_in, batch)
                    cos.append(_cos_distance_sums(h_in, h_out))
                    outputs.append(h_out)
            del previous
            self._append_boundary(outputs)
            self._cos_sum[(1, boundary - 1)] = torch.cat(cos)

    def _ensure_cos(self, n: int) -> None:
        """Cosine distances between boundaries n apart, from stored states (no layer calls)."""
        for start in range(self.num_computed - n):
            if (n, start) in self._cos_sum:
                continue
            first, last = self.store.get(self._keys[start], self.device), self.store.get(self._keys[start + n], self.device)
            self._cos_sum[(n, start)] = torch.cat(
                [_cos_distance_sums(self._state(start, b, first), self._state(start + n, b, last)) for b in range(len(self.batches))]
            )

    # ------------------------------------------------------------------ what the loop asks for
    def stats(self, block_sizes: tuple[int, ...] = (1,), per_window: bool = False, windows: int | None = None) -> HiddenStats:
        """HiddenStats of the current model over the first `windows` windows (all by default), equal
        (up to float rounding) to capture_stats' on those windows."""
        self.refresh()
        total = self.arch.num_layers()
        for n in set(block_sizes):
            self._ensure_cos(n)
        count = self.num_windows if windows is None else windows
        tokens = count * self.seqlen
        abs_sums = torch.stack([a[:count] for a in self._abs_sum], dim=1)  # [windows, L + 1, hidden]
        extra = {"window_channel_mean_abs": (abs_sums / self.seqlen).float()} if per_window else {}
        return HiddenStats(
            channel_mean_abs=abs_sums.sum(dim=0) / tokens,
            cos_distance={
                n: torch.stack([self._cos_sum[(n, start)][:count].sum() for start in range(total + 1 - n)]) / tokens
                for n in sorted(set(block_sizes))
            },
            num_tokens=tokens,
            token_rms=torch.stack([r[:count].sum() for r in self._rms_sum]) / tokens,
            **extra,
        )

    @torch.no_grad()
    def skip_losses(self) -> torch.Tensor:
        """Mean next-token NLL of the current model with layer l skipped, for every l (the PPL metric).

        Layer-major: each layer j runs once per call over the chains of every candidate l < j
        (l skipped, state carried from h_l), so a lazily loaded layer is read once.
        """
        self.refresh()
        total = self.arch.num_layers()
        chain_keys: dict[int, tuple[int, int]] = {}
        for j in progress_bar(range(1, total), desc="PPL metric (cached boundaries)", enabled=self.progress):
            with self.layers.layer(j) as layer:
                for candidate in range(j):
                    if candidate in chain_keys:
                        source, multiplier = self.store.get(chain_keys[candidate], self.device), 1.0
                    else:  # candidate j-1 starts at h_{j-1}, the input of the skipped layer
                        source, multiplier = self.store.get(self._keys[candidate], self.device), self._multiplier[candidate]
                    outputs = [
                        self._run(layer, j, source[b] if multiplier == 1.0 else source[b] * multiplier, batch)
                        for b, batch in enumerate(self.batches)
                    ]
                    del source
                    key = chain_keys.get(candidate) or self._new_key()
                    self.store.put(key, outputs)
                    chain_keys[candidate] = key
        losses = []
        for candidate in range(total):
            if candidate in chain_keys:
                finals, multiplier = self.store.get(chain_keys[candidate], self.device), 1.0
            else:  # skipping the last layer: the head reads h_{L-1}
                finals, multiplier = self.store.get(self._keys[candidate], self.device), self._multiplier[candidate]
            losses.append(self._mean_nll([f if multiplier == 1.0 else f * multiplier for f in finals]))
        for key in chain_keys.values():
            self.store.drop(key)
        return torch.tensor(losses, dtype=torch.float64)

    def _mean_nll(self, finals: list[torch.Tensor]) -> float:
        """Like nll.window_nll: summed float32 cross-entropy per batch, over positions 1..T-1."""
        total_nll, count = 0.0, 0
        returns_tuple = bool(self.runner.returns_tuple)
        for batch, final in zip(self.batches, finals):
            batch = batch.to(self.device)
            logits = head_logits(self.arch, batch, final.to(self.device), returns_tuple)[:, :-1]
            targets = batch[:, 1:]
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            total_nll += float(nll)
            count += targets.numel()
            self.cost.head_tokens += batch.numel()
        return total_nll / count

    def after_round(self, start: int, size: int, scale: float, update_layers: bool = True) -> None:
        """The loop folded `scale` before layer `start` and removed layers start..start+size-1.

        `update_layers=False` when several engines share one layer source (it is updated once)."""
        for boundary in range(min(start + 1, self.num_computed)):  # h_0..h_start are now scale * h
            self._multiplier[boundary] *= scale
            self._abs_sum[boundary] = self._abs_sum[boundary] * scale
            self._rms_sum[boundary] = self._rms_sum[boundary] * scale
        start = max(start, -1)  # -1: h_0 changed too
        for key in self._keys[start + 1 :]:
            self.store.drop(key)
        for series in (self._keys, self._multiplier, self._abs_sum, self._rms_sum):
            del series[start + 1 :]
        self._cos_sum = {(n, s): v for (n, s), v in self._cos_sum.items() if s + n <= start}
        del self.kept[start : start + size]
        if update_layers:
            self.layers.after_round(start, size, scale)

    def close(self) -> None:
        for key in self._keys:
            self.store.drop(key)
        self._keys.clear()
