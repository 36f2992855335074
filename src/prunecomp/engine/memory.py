"""Memory budgets and where boundary activations live (device, CPU memory or disk).

The layer-wise engine keeps the residual stream of every calibration window at every decoder
boundary. A `BoundaryStore` holds them within a byte budget and spills the rest to files in a
temporary folder, so the engine's footprint is about one layer plus what the budget allows.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrunecompError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class MemoryBudgetError(PrunecompError, ValueError):
    pass


def parse_memory(text: str | int | None) -> int | None:
    """'2GB' -> 2e9 bytes, '500MB' -> 5e8, '1.5GiB' -> 1.5 * 2**30; None or 'auto' -> None (no limit)."""
    if text is None or isinstance(text, int):
        return text
    cleaned = text.strip().upper().replace(" ", "")
    if cleaned in ("", "AUTO", "NONE"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]I?B|B)?", cleaned)
    if not match or (match.group(2) or "") not in UNITS:
        raise MemoryBudgetError(f"cannot read memory size {text!r}; write it like 2GB or 500MB")
    value = int(float(match.group(1)) * UNITS[match.group(2) or ""])
    if value <= 0:
        raise MemoryBudgetError(f"memory size must be positive, got {text!r}")
    return value


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def human(num_bytes: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{int(num_bytes)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """What the engine decided to keep where, for the message it prints."""

    budget: int | None
    resident_bytes: int  # weights that stay loaded (embedding, final norm, head; or the whole model)
    layer_bytes: int  # one decoder layer's weights while it runs
    boundary_bytes: int  # one boundary: every calibration window's hidden states
    activation_capacity: int | None  # bytes of boundaries kept in memory; None = unlimited
    origin: str = "--max-memory"  # where the budget came from

    def describe(self, engine: str, device: str) -> str:
        if self.activation_capacity is None:
            where = "all boundary activations in memory"
        else:
            slots = self.activation_capacity // max(self.boundary_bytes, 1)
            where = f"up to {slots} boundaries ({human(self.activation_capacity)}) in memory, the rest on disk"
        budget = "no memory limit" if self.budget is None else f"budget {human(self.budget)} ({self.origin})"
        return (
            f"engine: {engine} on {device}, {budget}: resident weights {human(self.resident_bytes)}, "
            f"one layer {human(self.layer_bytes)}, one boundary {human(self.boundary_bytes)}; {where}"
        )


def plan_memory(budget: int | None, resident_bytes: int, layer_bytes: int, boundary_bytes: int,
                origin: str = "--max-memory") -> MemoryPlan:
    """Split the budget: resident weights, one layer, two working boundaries (a layer's input and
    output), and whatever is left for cached boundaries. Raises when even that does not fit."""
    if budget is None:
        return MemoryPlan(None, resident_bytes, layer_bytes, boundary_bytes, None)
    fixed = resident_bytes + layer_bytes + 2 * boundary_bytes
    if fixed > budget:
        raise MemoryBudgetError(
            f"--max-memory {human(budget)} is too small: one layer ({human(layer_bytes)}), the embedding and head "
            f"({human(resident_bytes)}) and two boundaries of activations ({human(2 * boundary_bytes)}) need "
            f"{human(fixed)}; raise it or use fewer/shorter calibration windows"
        )
    return MemoryPlan(budget, resident_bytes, layer_bytes, boundary_bytes, budget - fixed, origin)


class BoundaryStore:
    """Named lists of tensors (one per batch) kept in memory up to `capacity` bytes, then on disk.

    `capacity=None` keeps everything in memory. Spilled entries are written with torch.save to a
    private temporary folder that `close()` (or garbage collection of the store) removes.
    """

    def __init__(self, capacity: int | None = None, spill_dir: str | Path | None = None, home: str | torch.device | None = None):
        self.capacity = capacity
        self.home = None if home is None else torch.device(home)  # where in-memory entries live (None: as given)
        self._memory: dict[object, list[torch.Tensor]] = {}
        self._disk: dict[object, Path] = {}
        self._bytes = 0
        self._spill_parent = spill_dir
        self._folder: Path | None = None
        self.spilled_writes = 0

    @property
    def bytes_in_memory(self) -> int:
        return self._bytes

    def __contains__(self, key) -> bool:
        return key in self._memory or key in self._disk

    def put(self, key, tensors: list[torch.Tensor]) -> None:
        self.drop(key)
        if self.home is not None:
            tensors = [t.to(self.home) for t in tensors]
        size = tensor_bytes(tensors)
        if self.capacity is None or self._bytes + size <= self.capacity:
            self._memory[key] = tensors
            self._bytes += size
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="prunecomp-boundaries-", dir=self._spill_parent))
        path = self._folder / f"{len(self._disk)}-{self.spilled_writes}.pt"
        torch.save([t.cpu() for t in tensors], path)
        self._disk[key] = path
        self.spilled_writes += 1

    def get(self, key, device: torch.device | str | None = None) -> list[torch.Tensor]:
        if key in self._memory:
            tensors = self._memory[key]
        elif key in self._disk:
            tensors = torch.load(self._disk[key], weights_only=True)
        else:
            raise KeyError(key)
        return tensors if device is None else [t.to(device) for t in tensors]

    def drop(self, key) -> None:
        if key in self._memory:
            self._bytes -= tensor_bytes(self._memory.pop(key))
        if key in self._disk:
            self._disk.pop(key).unlink(missing_ok=True)

    def close(self) -> None:
        self._memory.clear()
        self._disk.clear()
        self._bytes = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
