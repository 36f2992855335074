"""Typed, frozen, validated configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from .compensate import AUTO, ESTIMATORS
from .metrics import get_metric


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CalibConfig:
    """Calibration windows: `num_windows` x `seqlen` tokens sampled from `source` with `seed`.

    The defaults suit a laptop CPU; the paper uses 128 x 2048 (`--calib-windows 128 --seqlen 2048`).
    `add_bos=None` prepends BOS exactly when the tokenizer itself would (e.g. Gemma).
    """

    source: str = "c4:train"
    num_windows: int = 32
    seqlen: int = 256
    seed: int = 0
    add_bos: bool | None = None

    def __post_init__(self):
        if self.num_windows < 1:
            raise ConfigError("calibration needs at least one window")
        if self.seqlen < 2:
            raise ConfigError("seqlen must be at least 2")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    metric: bi | cl | taylor | mag | ppl | reverse | random.
    num_layers: how many decoder layers to remove (k).
    iterative: score, remove one layer, compensate, re-score (default), or score once (one-shot).
    compensate: fold the magnitude-gain scale into the weights (Prune&Comp) or not (baseline).
    protect_first / protect_last: layers never removed; None takes the metric's default
    (4 and 2 for Taylor+ and Mag+, 0 otherwise).
    estimator: how the scale is estimated: channel_mean (the paper's), token_rms, or auto (the
    architecture spec's choice: channel_mean for Llama-style models, token_rms for Gemma-2/3).
    """

    metric: str = "bi"
    num_layers: int = 1
    iterative: bool = True
    compensate: bool = True
    seed: int = 0
    protect_first: int | None = None
    protect_last: int | None = None
    estimator: str = AUTO
    batch_size: int = 1
    calib: CalibConfig = field(default_factory=CalibConfig)

    def __post_init__(self):
        get_metric(self.metric)  # raises a helpful error for unknown names
        if self.num_layers < 1:
            raise ConfigError("num_layers must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.estimator not in (AUTO, *ESTIMATORS):
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose from {(AUTO, *ESTIMATORS)}")
        for name in ("protect_first", "protect_last"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0")

    @property
    def mode(self) -> str:
        if get_metric(self.metric).contiguous_block:
            return "block"
        return "iterative" if self.iterative else "one-shot"

    def barrier(self) -> tuple[int, int]:
        metric = get_metric(self.metric)
        first = metric.protect_first if self.protect_first is None else self.protect_first
        last = metric.protect_last if self.protect_last is None else self.protect_last
        return first, last
