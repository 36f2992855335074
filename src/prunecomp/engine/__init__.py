"""Execution engines for the pruning loop: cached boundary states, optionally with decoder layers
read one at a time from safetensors shards (models larger than memory).

The loop calls one object, a BoundaryEngine, for its statistics (`stats`), the PPL metric
(`skip_losses`) and after each round (`after_round`); where layers and activations live is the
engine's business (ResidentLayers / ShardLayers, BoundaryStore with a memory budget).
"""

from .boundaries import BoundaryEngine, Cost
from .forward import capture_layer_inputs, head_logits
from .layerwise import ResidentLayers, SafetensorsCheckpoint, ShardLayers, load_skeleton, resident_bytes
from .memory import BoundaryStore, MemoryBudgetError, MemoryPlan, parse_memory, plan_memory
from .session import ENGINES, EngineError, EngineSession, is_skeleton

__all__ = [
    "ENGINES",
    "BoundaryEngine",
    "EngineError",
    "EngineSession",
    "is_skeleton",
    "BoundaryStore",
    "Cost",
    "MemoryBudgetError",
    "MemoryPlan",
    "ResidentLayers",
    "SafetensorsCheckpoint",
    "ShardLayers",
    "capture_layer_inputs",
    "head_logits",
    "load_skeleton",
    "parse_memory",
    "plan_memory",
    "resident_bytes",
]
