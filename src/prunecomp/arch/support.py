"""The README's architecture support table, rendered from the spec table so the two cannot drift."""

from __future__ import annotations

from .spec import ArchSpec
from .table import SPECS, keep_sparse_layers_sparse, slice_max_window_layers

ADJUSTED_KEYS = {
    slice_max_window_layers: "`max_window_layers`",
    keep_sparse_layers_sparse: "`mlp_only_layers` + `decoder_sparse_step`",
}


class _Defaults:
    """A config with no attributes: refusals that depend on a setting report their default case."""


def _paths(paths: tuple[str, ...]) -> str:
    shown = []
    for path in paths:
        alternatives = [f"`{p}`" for p in path.rstrip("?").split("|")]
        shown.append(" or ".join(alternatives) + (" (if present)" if path.endswith("?") else ""))
    return "; ".join(shown)


def _writers(spec: ArchSpec) -> str:
    parts = []
    if spec.layer_linear_writers:
        parts.append(_paths(spec.layer_linear_writers))
    if spec.layer_norm_writers:
        form = "(1 + w)" if spec.norm_offset else "w"
        parts.append(f"norms {_paths(spec.layer_norm_writers)} in the {form} form")
    return "; ".join(parts)


def _input_writers(spec: ArchSpec) -> str:
    return "; ".join([f"`{spec.embedding}`", *(f"`{p.rstrip('?')}`" for p in spec.input_writers)])


def _tied(spec: ArchSpec) -> str:
    if spec.norm_offset:
        return f"`{spec.final_norm}`: (1 + w)/S - 1"
    return f"`{spec.final_norm}`: weight (and bias) / S"


def _keys(spec: ArchSpec) -> str:
    keys = [f"`{k}`" for k in spec.per_layer_config_keys] + [ADJUSTED_KEYS.get(a, a.__name__) for a in spec.config_adjusters]
    return ", ".join(["`num_hidden_layers`", *keys])


def _status(spec: ArchSpec) -> str:
    reason = spec.inexact_reason(_Defaults()) if spec.inexact_reason else None
    return "**refused**" if reason else "exact"


def support_table() -> str:
    """Markdown: one row per family of the architecture table."""
    lines = [
        "| family (`model_type`) | writers in each layer | writers of h_0 | tied embeddings: 1/S goes to | config that follows removal (lists sliced when present) | fold | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in SPECS:
        types = ", ".join(f"`{t}`" for t in spec.model_types)
        lines.append(
            f"| {spec.family} ({types}) | {_writers(spec)} | {_input_writers(spec)} | {_tied(spec)} | {_keys(spec)} "
            f"| {_status(spec)} | {spec.notes} |"
        )
    return "\n".join(lines)


def families_by_status() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {"exact": [], "refused": []}
    for spec in SPECS:
        groups["refused" if "refused" in _status(spec) else "exact"].append(spec.family)
    return groups
