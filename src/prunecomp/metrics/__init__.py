"""Layer-importance metrics and their registry."""

from __future__ import annotations

from ..errors import PrunecompError
from .base import Metric, ScoreContext
from .baselines import random_scores, reverse_order
from .perplexity import skip_loss
from .similarity import block_influence, contiguous_similarity
from .weights import magnitude, taylor

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("bi", "CosSim(BI): 1 - cos(input, output) per layer (ShortGPT)", block_influence, needs_stats=True),
        Metric(
            "cl",
            "CosSim(CL): most similar contiguous block of k layers (LLM-Streamline)",
            contiguous_similarity,
            needs_stats=True,
            contiguous_block=True,
        ),
        Metric("taylor", "Taylor+: sum |W * dL/dW| per layer, first 4 / last 2 kept", taylor, protect_first=4, protect_last=2),
        Metric("mag", "Mag+: sum |W| per layer, first 4 / last 2 kept", magnitude, protect_first=4, protect_last=2),
        Metric("ppl", "PPL: calibration loss with the layer skipped (SLEB-style)", skip_loss),
        Metric("reverse", "Reverse-order: drop the deepest layers", reverse_order),
        Metric("random", "Random: seeded random choice", random_scores),
    )
}
ALIASES = {
    "cossim_bi": "bi",
    "cossim(bi)": "bi",
    "shortgpt": "bi",
    "cossim_cl": "cl",
    "cossim(cl)": "cl",
    "streamline": "cl",
    "taylor+": "taylor",
    "mag+": "mag",
    "magnitude": "mag",
    "sleb": "ppl",
    "reverse-order": "reverse",
}


class UnknownMetric(PrunecompError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def get_metric(name: str) -> Metric:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return METRICS[key]
    except KeyError:
        raise UnknownMetric(f"unknown metric {name!r}; choose from {', '.join(METRICS)}") from None


__all__ = ["METRICS", "Metric", "ScoreContext", "UnknownMetric", "get_metric"]
