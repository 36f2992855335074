"""The one object the pruning loop talks to for statistics and the PPL metric.

engine="memory": the straightforward path: one full forward pass of the model per statistics
request and per PPL candidate (the reference every fast path is tested against).
engine="layerwise": cached boundary states, one decoder layer at a time, only the layers after a
cut re-run; layers come from memory or, for a skeleton from `load_skeleton`, from safetensors shards.
engine="auto": layerwise.
"""

from __future__ import annotations

import sys

import torch

from ..arch import ResolvedArch
from ..calib.capture import HiddenStats, capture_stats
from ..errors import PrunecompError
from .boundaries import BoundaryEngine, Cost
from .forward import module_device
from .layerwise import ResidentLayers, ShardLayers, resident_bytes
from .memory import BoundaryStore, MemoryBudgetError, MemoryPlan, human, parse_memory, plan_memory

ENGINES = ("auto", "memory", "layerwise")
WEIGHT_METRICS = ("taylor", "mag")  # read the layers' weights directly, so need them in memory


class EngineError(PrunecompError, ValueError):
    pass


def is_skeleton(arch: ResolvedArch) -> bool:
    """True for a model from load_skeleton: its decoder layers' weights are on the meta device."""
    return any(p.device.type == "meta" for p in arch.layers().parameters())


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no /proc)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def is_prefix(windows: torch.Tensor, superset: torch.Tensor) -> bool:
    """True when `windows` are the first windows of `superset` (same length, same tokens)."""
    return (windows.dim() == superset.dim() == 2 and windows.shape[1] == superset.shape[1]
            and windows.shape[0] <= superset.shape[0] and torch.equal(windows, superset[: windows.shape[0]]))


class EngineSession:
    """Statistics and PPL losses for the loop's current model, kept in step with its rounds."""

    def __init__(self, arch: ResolvedArch, engine: str = "auto", batch_size: int = 1, progress: bool = False,
                 max_memory: str | int | None = None, metric: str | None = None, spill_dir: str | None = None,
                 superset: torch.Tensor | None = None):
        """`superset`: windows of which other requested sets may be prefixes (the scale windows, whose
        first windows are the scoring ones): statistics of a prefix then come from its engine."""
        if engine not in ENGINES:
            raise EngineError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
        self.arch = arch
        self.kind = "memory" if engine == "memory" else "layerwise"
        self._undecided = engine == "auto"  # auto settles on the first request, when the windows are known
        self.metric = metric
        self.batch_size = batch_size
        self.progress = progress
        self.budget = parse_memory(max_memory)
        self.spill_dir = spill_dir
        self.lazy = is_skeleton(arch)
        if self.lazy and self.kind == "memory":
            raise EngineError("this model's layers are not in memory (a layer-wise skeleton): use engine 'layerwise' or 'auto'")
        checkpoint = getattr(arch.model, "prunecomp_checkpoint", None)
        if self.lazy and metric in WEIGHT_METRICS:
            raise EngineError(_whole_model_message(metric, checkpoint))
        if self.lazy and checkpoint is None:
            raise EngineError("a model with weights on the meta device needs its checkpoint: load it with engine.load_skeleton")
        self.layers = ShardLayers(arch, checkpoint, module_device(arch.embedding())) if self.lazy else ResidentLayers(arch)
        self.store: BoundaryStore | None = None
        self.plan: MemoryPlan | None = None
        self._engines: dict[int, tuple[torch.Tensor, BoundaryEngine]] = {}
        self._memory_cost = Cost()
        self.superset = superset

    # ------------------------------------------------------------------ planning
    def _open_store(self, windows: torch.Tensor, hidden_dtype: torch.dtype) -> BoundaryStore:
        hidden = self.arch.embedding().weight.shape[-1]
        boundary = windows.numel() * hidden * torch.empty((), dtype=hidden_dtype).element_size()
        resident = resident_bytes(self.arch.model)
        layer = self.layers.layer_bytes() if self.lazy else 0  # a resident model's layers are in `resident`
        budget = self.budget
        if budget is None:  # no limit given: keep boundaries in memory up to half of what is free, then disk
            free = available_memory()
            budget = None if free is None else resident + layer + 2 * boundary + free // 2
        try:
            origin = "--max-memory" if self.budget is not None else "no --max-memory: half of the free memory for boundaries"
            self.plan = plan_memory(budget, resident, layer, boundary, origin)
        except MemoryBudgetError as exc:
            if not self.lazy and self.budget is not None:
                raise MemoryBudgetError(f"{exc}. The model is held in memory ({human(resident)}; GGUF inputs are "
                                        "dequantised first): prune a safetensors checkpoint with --engine layerwise") from None
            raise
        device = module_device(self.arch.embedding())
        home = "cpu" if device.type != "cpu" else None  # cached boundaries wait in CPU memory, not on the GPU
        if self.progress or self.lazy or self.budget is not None:
            where = "layers from safetensors shards" if self.lazy else "model in memory"
            print(f"prunecomp: {self.plan.describe(f'layer-wise ({where})', str(device))}", file=sys.stderr)
        return BoundaryStore(self.plan.activation_capacity, self.spill_dir, home)

    def _engine(self, windows: torch.Tensor, desc: str) -> BoundaryEngine:
        entry = self._engines.get(id(windows))
        if entry is None:
            if self.store is None:
                self.store = self._open_store(windows, self.arch.embedding().weight.dtype)
            engine = BoundaryEngine(self.arch, windows, self.layers, batch_size=self.batch_size, store=self.store,
                                    progress=self.progress, desc=desc)
            entry = self._engines[id(windows)] = (windows, engine)  # keeps `windows` alive, so its id stays unique
        return entry[1]

    # ------------------------------------------------------------------ what the loop calls
    def _decide(self, windows: torch.Tensor) -> None:
        """engine auto with the model in memory: cache boundaries only when they fit comfortably in free
        memory (a quarter of it); otherwise whole-model passes, which need no cache and no disk."""
        if not self._undecided:
            return
        self._undecided = False
        if self.lazy or self.budget is not None:
            return
        tokens = windows.numel()
        if self.superset is not None and not is_prefix(windows, self.superset):
            tokens += self.superset.numel()
        elif self.superset is not None:
            tokens = max(tokens, self.superset.numel())
        weight = self.arch.embedding().weight
        boundaries = (2 if self.metric == "ppl" else 1) * (self.arch.num_layers() + 1)  # PPL also keeps its chains
        needed = boundaries * tokens * weight.shape[-1] * weight.element_size()
        free = available_memory()
        if free is not None and needed > free // 4:
            self.kind = "memory"
            print(f"prunecomp: engine auto: cached boundaries would need {human(needed)} (free memory {human(free)}); "
                  "using whole-model passes (--engine layerwise --max-memory SIZE caches them with a disk spill)",
                  file=sys.stderr)

    def stats(self, windows: torch.Tensor, block_sizes: tuple[int, ...] = (1,), *, desc: str = "calibration",
              per_window: bool = False) -> HiddenStats:
        self._decide(windows)
        if self.kind == "memory":
            extra = {"per_window": True} if per_window else {}
            self._memory_cost.token_layer_evals += windows.numel() * self.arch.num_layers()
            self._memory_cost.layer_calls += -(-windows.shape[0] // self.batch_size) * self.arch.num_layers()
            return capture_stats(self.arch, windows, block_sizes, self.batch_size, self.progress, desc=desc, **extra)
        if self.superset is not None and windows is not self.superset and is_prefix(windows, self.superset):
            engine = self._engine(self.superset, desc)
            return engine.stats(block_sizes, per_window=per_window, windows=windows.shape[0])
        return self._engine(windows, desc).stats(block_sizes, per_window=per_window)

    def skip_losses(self, windows: torch.Tensor) -> torch.Tensor | None:
        """PPL-metric losses from cached boundaries, or None on the memory engine (the metric runs itself)."""
        self._decide(windows)
        if self.kind == "memory":
            return None
        return self._engine(windows, "boundaries").skip_losses()

    def after_round(self, start: int, size: int, scale: float) -> None:
        """Call after the loop's apply_round(arch, kept, start, size, scale)."""
        for _, engine in self._engines.values():
            engine.after_round(start, size, scale, update_layers=False)
        self.layers.after_round(start, size, scale)

    @property
    def cost(self) -> Cost:
        """Token-layer evaluations of the statistics and PPL work done so far (all window sets)."""
        total = self._memory_cost.snapshot()
        for _, engine in self._engines.values():
            total.token_layer_evals += engine.cost.token_layer_evals
            total.layer_calls += engine.cost.layer_calls
            total.head_tokens += engine.cost.head_tokens
        return total

    def close(self) -> None:
        for _, engine in self._engines.values():
            engine.close()
        self._engines.clear()
        if self.store is not None:
            self.store.close()


def _whole_model_message(metric: str, checkpoint) -> str:
    """Why a weight metric cannot run layer by layer, with the memory it needs instead."""
    need = ""
    if checkpoint is not None:
        weights = checkpoint.nbytes(list(checkpoint.weight_map))
        if metric == "taylor":  # Taylor+ holds a gradient beside every weight
            need = f" (about {human(2 * weights)}: {human(weights)} of weights plus as much for their gradients)"
        else:
            need = f" (about {human(weights)} of weights)"
    return (f"metric {metric!r} reads every layer's weights at once, so it needs the whole model in memory{need}; "
            "the layer-wise engine supports bi, cl, ppl, reverse and random: load the model in memory "
            "(--engine memory) for it")
