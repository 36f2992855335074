"""Typed, frozen, validated configuration."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import PrunecompError
from .compensate import AUTO, ESTIMATORS
from .engine.memory import parse_memory
from .engine.session import ENGINES
from .metrics import get_metric


class ConfigError(PrunecompError, ValueError):
    pass


# How calibration windows are cut from a source:
#   random          seeded torch offsets into the stream tokenised without specials (prunecomp's default)
#   paper           the official Prune&Comp sampler: Python's random, one BOS for the whole stream,
#                   offsets from the first 90% of it
#   document_crops  one random crop from each of num_windows distinct documents of >= seqlen tokens
#                   (the official Taylor+ calibration)
#   sleb            SLEB's data: the first num_windows *rows* of the shuffled split, joined and cut
#                   into consecutive seqlen windows
SAMPLERS = ("random", "paper", "document_crops", "sleb")
PRESETS = ("paper",)
SELECTIONS = ("metric", "compensated")


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
    sampler: str = "random"
    # Windows the compensation scale is estimated on; None: the scoring windows. Both sets are
    # prefixes of one sampled sequence, so scoring uses the first num_windows of the scale's.
    scale_windows: int | None = None
    exact: bool = False  # the named split must be the real one, not a local stand-in
    allow_substitute: bool = False  # offline, an exact split may be replaced by a documented substitute
    # document_crops only: continue the random stream the main calibration sampler left (the
    # official Taylor+ script samples its C4 crops after drawing its WikiText-2 windows).
    continue_random: bool = False

    def __post_init__(self):
        if self.num_windows < 1:
            raise ConfigError("calibration needs at least one window")
        if self.seqlen < 2:
            raise ConfigError("seqlen must be at least 2")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.scale_windows is not None and self.scale_windows < 1:
            raise ConfigError("scale_windows must be at least 1")

    @property
    def drawn_windows(self) -> int:
        return max(self.num_windows, self.scale_windows or 0)


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
    # The metric's own scoring data (the paper's Taylor+ and PPL use other text than the scale);
    # None: the first calib.num_windows calibration windows.
    score_calib: CalibConfig | None = None
    # Explicit original layer indices to remove (the metric is not used); each contiguous run is
    # compensated with its own scale.
    remove: tuple[int, ...] | None = None
    # Taylor+ / Mag+ also sum the layer's norm weights (the official code and Shortened LLaMA do).
    norm_weights: bool = False
    # Mag+ divides out the compensation folded into each writer (prunecomp's correction); False
    # scores the raw |W| of the compensated model every round, as the official code does.
    unfold_magnitude: bool = True
    # Taylor+ computes gradients in float32 even when the weights are float16/bfloat16 (lossless
    # upcast and downcast around the gradient pass).
    float32_gradients: bool = False
    preset: str | None = None
    # How statistics and the PPL metric are computed (prunecomp.engine): "layerwise" caches the
    # residual stream at every layer boundary and re-runs only the layers after each cut ("auto"
    # picks it); "memory" runs the whole model per pass. Same recipes either way.
    engine: str = "auto"
    max_memory: str | None = None  # e.g. "2GB": what the layer-wise engine may hold; the rest goes to disk
    # How each cut is compensated (prunecomp.linear_comp): "scalar" (the paper's; what compensate=True
    # means), "none" (compensate=False), or a fitted map folded into the last kept layer before the
    # cut: "linear", "scalar+linear", with -rel / -cos objectives and -down (down_proj only).
    comp: str | None = None
    # How each iterative round picks its layer: "metric" (the lowest score) or "compensated" (the
    # metric's select_top best, re-ranked by calibration loss after removal and compensation; slow).
    select: str = "metric"
    select_top: int = 6

    def __post_init__(self):
        self._check_comp()
        if self.remove is not None:
            object.__setattr__(self, "remove", tuple(int(i) for i in self.remove))
            if not self.remove:
                raise ConfigError("remove needs at least one layer index")
            if len(set(self.remove)) != len(self.remove):
                raise ConfigError(f"remove lists a layer twice: {list(self.remove)}")
            if min(self.remove) < 0:
                raise ConfigError(f"remove has a negative layer index: {list(self.remove)}")
            object.__setattr__(self, "num_layers", len(self.remove))
        get_metric(self.metric)  # raises a helpful error for unknown names
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.num_layers < 1:
            raise ConfigError("num_layers must be at least 1")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        try:
            parse_memory(self.max_memory)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.estimator not in (AUTO, *ESTIMATORS):
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose from {(AUTO, *ESTIMATORS)}")
        for name in ("protect_first", "protect_last"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0")

    def _check_comp(self) -> None:
        from .linear_comp import LinearCompError, parse_comp  # lazy: linear_comp imports the calibration code

        if self.select not in SELECTIONS:
            raise ConfigError(f"unknown select {self.select!r}; choose from {', '.join(SELECTIONS)}")
        if self.select_top < 1:
            raise ConfigError("select_top must be at least 1")
        if self.comp is None:
            return
        try:
            method = parse_comp(self.comp)
        except LinearCompError as exc:
            raise ConfigError(str(exc)) from None
        if not self.compensate and method.scalar:
            raise ConfigError(f"comp {self.comp!r} folds the scalar, which compensate=False (--no-comp) turns off")
        object.__setattr__(self, "comp", method.name)
        object.__setattr__(self, "compensate", method.scalar)  # the scalar part runs through the usual scale path

    @property
    def comp_method(self):
        """The CompMethod of each cut (`comp`, else the scalar or nothing as `compensate` says)."""
        from .linear_comp import parse_comp

        return parse_comp(self.comp or ("scalar" if self.compensate else "none"))

    @classmethod
    def paper(cls, metric: str = "bi", num_layers: int = 1, *, allow_substitute: bool = False, **overrides) -> "PruneConfig":
        """The official Prune&Comp protocol (see README, "The paper preset").

        Calibration: WikiText-2 train, official sampler, 128 x 2048 scoring windows; the scale from
        256 windows for BI and 128 otherwise, averaged per window as magcomp.py does. Taylor+
        scores 10 C4-train crops (float32 gradients); the PPL metric scores SLEB's data with SLEB's
        barrier (never the first or last layer). Taylor+ and Mag+ sum norm weights too, and Mag+
        scores the raw |W| of the compensated model. Iterative with compensation (Prune&Comp).
        """
        name = get_metric(metric).name
        exact = dict(exact=True, allow_substitute=allow_substitute)
        calib = CalibConfig(source="wikitext2:train", num_windows=128, seqlen=2048, seed=0, sampler="paper",
                            scale_windows=256 if name == "bi" else 128, **exact)
        score_calib = None
        if name == "taylor":
            score_calib = CalibConfig(source="c4:train", num_windows=10, seqlen=2048, seed=0, sampler="document_crops",
                                      continue_random=True, **exact)
        elif name == "ppl":
            score_calib = CalibConfig(source="wikitext2:train", num_windows=128, seqlen=2048, seed=0, sampler="sleb", **exact)
        settings = dict(
            metric=name, num_layers=num_layers, iterative=True, compensate=True, seed=0, calib=calib,
            score_calib=score_calib, estimator="channel_mean_windows", norm_weights=True, unfold_magnitude=False,
            float32_gradients=True, preset="paper",
        )
        if name == "ppl":
            settings |= dict(protect_first=1, protect_last=1)
        return cls(**(settings | overrides))

    def with_calibration_size(self, num_windows: int | None = None, scale_windows: int | None = None,
                              seqlen: int | None = None) -> "PruneConfig":
        """The same protocol on fewer or shorter windows (a small machine). The scale set keeps its
        ratio to the scoring set unless given; the metric's own scoring data keeps its size but
        takes the new seqlen."""
        if num_windows is None and scale_windows is None and seqlen is None:
            return self
        calib = self.calib
        num = num_windows or calib.num_windows
        if scale_windows is None and calib.scale_windows is not None:
            scale_windows = max(1, round(calib.scale_windows * num / calib.num_windows))
        calib = replace(calib, num_windows=num, scale_windows=scale_windows, seqlen=seqlen or calib.seqlen)
        score = self.score_calib
        if score is not None and seqlen is not None:
            score = replace(score, seqlen=seqlen)
        return replace(self, calib=calib, score_calib=score)

    @property
    def mode(self) -> str:
        if self.remove is not None:
            return "explicit"
        if get_metric(self.metric).contiguous_block:
            return "block"
        return "iterative" if self.iterative else "one-shot"

    def barrier(self) -> tuple[int, int]:
        metric = get_metric(self.metric)
        first = metric.protect_first if self.protect_first is None else self.protect_first
        last = metric.protect_last if self.protect_last is None else self.protect_last
        return first, last
