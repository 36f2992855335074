"""Paper-style Markdown tables and PNG plots from a ``prunecomp compare`` results dict.

    from prunecomp.eval.report import write_report
    paths = write_report(json.load(open("results.json")), "report/")
    paths["markdown"]          # report/results.md, linking the plots that could be drawn

The tables mirror Prune&Comp (arXiv 2507.18212): perplexity per dataset (:func:`ppl_table`),
zero-shot QA with Average and RP (:func:`qa_table`), the one-shot / iterative / compensation
ablation (:func:`ablation_table`) and the removed layers per method (:func:`removed_layers_table`).
The plots (``plot_*``) show the dense model's per-layer magnitude gain ratio (the paper's
appendix Figure 1), the per-round importance scores, the hidden-state magnitude over depth and
baseline-vs-Prune&Comp perplexity. Plots use matplotlib's Agg canvas directly (no pyplot, no
windows); matplotlib is imported only when a plot is drawn.

Every function takes the results dict exactly as ``results.json`` stores it (``schema_version``
1); missing optional data (no QA, no magnitudes, a dataset absent for one method) renders as
"—" in tables and makes :func:`write_report` skip the plots that need it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ablation_table",
    "plot_gain_ratio",
    "plot_magnitude_depth",
    "plot_ppl_bars",
    "plot_scores_heatmap",
    "ppl_table",
    "qa_table",
    "removed_layers_table",
    "render_markdown",
    "write_report",
]

Results = Mapping[str, Any]
Method = Mapping[str, Any]

#: Known perplexity datasets in the paper's column order, with display names.
PPL_DATASETS: dict[str, str] = {"wikitext2": "WikiText-2", "c4": "C4", "ptb": "PTB"}
#: Display names of the paper's zero-shot QA tasks (others are shown as their key).
QA_TASK_NAMES: dict[str, str] = {
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "boolq": "BoolQ",
    "copa": "COPA",
    "hellaswag": "HellaSwag",
    "openbookqa": "OBQA",
    "piqa": "PIQA",
    "race": "RACE",
    "winogrande": "WinoGrande",
}
#: Ablation rows in display order (keys of ``results["ablation"]["rows"]``).
ABLATION_ROWS: tuple[str, ...] = ("one-shot", "+iterative", "+compensation", "+both")
#: File names of the plots written by :func:`write_report`.
PLOT_FILES: dict[str, str] = {
    "gain_ratio": "gain_ratio.png",
    "scores_heatmap": "scores_heatmap.png",
    "magnitude_depth": "magnitude_depth.png",
    "ppl_bars": "ppl_bars.png",
}
DASH = "—"
DPI = 120


# --------------------------------------------------------------------------- small helpers


def _num(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; "—" for missing, "inf"/"nan" for non-finite."""
    x = _num(value)
    if x is None:
        return DASH
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, newlines flattened)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` holds "l" or "r" per column (default: first l)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods(results: Results) -> list[Method]:
    return list(results.get("methods") or [])


def _dense(results: Results) -> Method | None:
    """The dense reference: the first method (the schema puts it first), preferring ``metric is None``."""
    methods = _methods(results)
    for m in methods:
        if m.get("metric") is None and not m.get("removed"):
            return m
    return methods[0] if methods else None


def _by_name(results: Results) -> dict[str, Method]:
    return {m["name"]: m for m in _methods(results)}


def _ppl(method: Method, dataset: str) -> float | None:
    """Perplexity of ``method`` on ``dataset``, or ``None``."""
    entry = (method.get("ppl") or {}).get(dataset)
    if isinstance(entry, Mapping):
        return _num(entry.get("perplexity"))
    return _num(entry)


def _protocol_of(key: str) -> str:
    """Perplexity keys are "dataset" (default protocol) or "dataset@protocol"."""
    return key.partition("@")[2] or "default"


def _ppl_protocols(results: Results) -> list[str]:
    seen: list[str] = []
    for m in _methods(results):
        for key in m.get("ppl") or {}:
            if _protocol_of(key) not in seen:
                seen.append(_protocol_of(key))
    return sorted(seen, key=lambda p: p != "default")


def _ppl_datasets(results: Results, protocol: str | None = None) -> list[str]:
    """Datasets with a perplexity in any method under `protocol` (default: the first reported):
    WikiText-2, C4, PTB first, then others as seen."""
    protocols = _ppl_protocols(results)
    protocol = protocol or (protocols[0] if protocols else "default")
    seen: list[str] = []
    for m in _methods(results):
        for name in m.get("ppl") or {}:
            if name not in seen and _protocol_of(name) == protocol:
                seen.append(name)
    if protocol != "default":  # order by the base dataset name
        base = {d.partition("@")[0]: d for d in seen}
        known = [base[d] for d in PPL_DATASETS if d in base]
        return known + [d for d in seen if d not in known]
    known = [d for d in PPL_DATASETS if d in seen]
    return known + [d for d in seen if d not in PPL_DATASETS]


def _dataset_label(name: str) -> str:
    base, _, protocol = name.partition("@")
    return PPL_DATASETS.get(base, base) if protocol else PPL_DATASETS.get(name, name)


def _ppl_avg(method: Method, datasets: Sequence[str]) -> float | None:
    """Mean perplexity over ``datasets``; ``None`` unless the method has every one of them."""
    values = [_ppl(method, d) for d in datasets]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _ppl_protocol(results: Results, datasets: Sequence[str]) -> str:
    """One footnote line: seqlen, windows, tokens and BOS per dataset (distinct values joined by "/")."""
    parts: list[tuple[str, str]] = []
    for d in datasets:
        fields: dict[str, list[str]] = {"seqlen": [], "windows": [], "tokens": [], "BOS": []}
        for m in _methods(results):
            entry = (m.get("ppl") or {}).get(d)
            if not isinstance(entry, Mapping):
                continue
            for key, src in (("seqlen", "seqlen"), ("windows", "num_windows"), ("tokens", "num_tokens")):
                if entry.get(src) is not None and str(entry[src]) not in fields[key]:
                    fields[key].append(str(entry[src]))
            if entry.get("substitute_for"):
                fields.setdefault("substitute for", [])
                if entry["substitute_for"] not in fields["substitute for"]:
                    fields["substitute for"].append(entry["substitute_for"])
            if "bos" in entry:
                bos = entry["bos"] if isinstance(entry["bos"], str) else ("yes" if entry["bos"] else "no")
                if bos not in fields["BOS"]:
                    fields["BOS"].append(bos)
        described = ", ".join(f"{k} {'/'.join(v)}" for k, v in fields.items() if v)
        parts.append((_dataset_label(d), described or "n/a"))
    if len(parts) > 1 and len({text for _, text in parts}) == 1:
        return f"all datasets: {parts[0][1]}"
    return "; ".join(f"{label}: {text}" for label, text in parts)


# --------------------------------------------------------------------------- QA helpers


def _qa_tasks(method: Method) -> Mapping[str, Any]:
    """The method's zero-shot QA task scores (MMLU excluded), possibly empty."""
    qa = method.get("qa")
    if not isinstance(qa, Mapping):
        return {}
    return {k: v for k, v in (qa.get("tasks") or {}).items() if k != "mmlu" and isinstance(v, Mapping)}


def _qa_score(entry: Mapping[str, Any]) -> float | None:
    """The score shown for one task: ``acc`` (fraction, not %), the quantity the harness averages.

    ``acc_norm`` stays in results.json; mixing the two would make Average differ from the harness's.
    """
    return _num(entry.get("acc"))


def _qa_average(method: Method, tasks: Sequence[str] | None = None) -> float | None:
    """Unweighted mean of the shown task scores (over ``tasks`` when given); ``None`` if there are none."""
    scores = _qa_tasks(method)
    names = [t for t in (tasks if tasks is not None else scores) if t in scores]
    values = [v for v in (_qa_score(scores[t]) for t in names) if v is not None]
    return sum(values) / len(values) if values else None


def _rp(method: Method, dense: Method | None) -> float | None:
    """Relative performance ``100 * avg(method) / avg(dense)`` over the QA tasks the two share (%)."""
    if dense is None:
        return None
    shared = [t for t in _qa_tasks(dense) if t in _qa_tasks(method)]
    if not shared:
        return None
    p, d = _qa_average(method, shared), _qa_average(dense, shared)
    return None if p is None or not d else 100.0 * p / d


def _mmlu(method: Method) -> float | None:
    mmlu = method.get("mmlu")
    return _num(mmlu.get("acc")) if isinstance(mmlu, Mapping) else None


def _pct(value: float | None) -> str:
    return _fmt(None if value is None else 100.0 * value)


# --------------------------------------------------------------------------- tables


def ppl_table(results: Results) -> str:
    """Perplexity per method (rows) and dataset (WikiText-2, C4, PTB, ... then "Avg"); "" if none.

    One table per evaluation protocol. Values have 2 decimals; "Avg" is the mean over the table's
    datasets and is "—" for a method missing any of them. A footnote gives the protocol's details.
    """
    protocols = _ppl_protocols(results)
    tables = []
    for protocol in protocols:
        datasets = _ppl_datasets(results, protocol)
        if not datasets:
            continue
        header = ["Method", *(_dataset_label(d) for d in datasets), "Avg"]
        rows = [
            [m["name"], *(_fmt(_ppl(m, d)) for d in datasets), _fmt(_ppl_avg(m, datasets))]
            for m in _methods(results)
        ]
        title = f"**{protocol} evaluation protocol**\n\n" if len(protocols) > 1 else ""
        note = f"_Perplexity (lower is better), {protocol} protocol: {_ppl_protocol(results, datasets)}._"
        tables.append(title + _md_table(header, rows) + "\n\n" + note)
    return "\n\n".join(tables)


def qa_table(results: Results) -> str:
    """Zero-shot QA accuracy (%) per task, "Average", "RP (%)" vs. the dense row, and "MMLU" if any.

    Rows are the methods with QA results; task columns are the union of tasks in first-seen
    order. Each cell is ``acc``. "Average"
    is the unweighted mean of the shown cells; RP is ``100 * Average / dense Average`` over the
    tasks both share. Returns "" when no method has QA results.
    """
    methods = [m for m in _methods(results) if _qa_tasks(m)]
    if not methods:
        return ""
    tasks: list[str] = []
    for m in methods:
        tasks += [t for t in _qa_tasks(m) if t not in tasks]
    with_mmlu = any(_mmlu(m) is not None for m in _methods(results))
    dense = _dense(results)
    header = ["Method", *(QA_TASK_NAMES.get(t, t) for t in tasks), "Average", "RP (%)"]
    header += ["MMLU"] if with_mmlu else []
    rows = []
    for m in methods:
        scores = _qa_tasks(m)
        row = [m["name"], *(_pct(_qa_score(scores[t])) if t in scores else DASH for t in tasks)]
        row += [_pct(_qa_average(m)), _fmt(_rp(m, dense))]
        row += [_pct(_mmlu(m))] if with_mmlu else []
        rows.append(row)
    metric = "acc; acc_norm is in results.json"
    dense_name = dense["name"] if dense else "the dense model"
    note = (
        f"_Accuracy ×100 ({metric}); Average = unweighted mean of the task columns; "
        f"RP = 100 × Average / Average of {dense_name} over shared tasks"
        + ("; MMLU = 5-shot accuracy ×100" if with_mmlu else "")
        + "._"
    )
    return _md_table(header, rows) + "\n\n" + note


def removed_layers_table(results: Results) -> str:
    """Per method: metric, mode, compensation, removed original layer indices and scales (4 decimals)."""
    header = ["Method", "Role", "Metric", "Mode", "Comp.", "Removed layers", "Scales", "Params", "Time (s)"]
    rows = []
    for m in _methods(results):
        removed = m.get("removed") or []
        scales = m.get("scales") or []
        comp = m.get("compensate")
        params = m.get("params")
        rows.append(
            [
                m["name"],
                m.get("role") or DASH,
                m.get("metric") or DASH,
                m.get("mode") or DASH,
                DASH if comp is None else ("yes" if comp else "no"),
                ", ".join(str(i) for i in removed) if removed else DASH,
                ", ".join(_fmt(s, 4) for s in scales) if scales else DASH,
                f"{params:,}" if isinstance(params, int) else DASH,
                _fmt(m.get("seconds"), 1),
            ]
        )
    align = ["l", "l", "l", "l", "l", "l", "l", "r", "r"]
    return _md_table(header, rows, align)


def ablation_table(results: Results) -> str:
    """The ablation for one metric: one-shot, +iterative, +compensation, +both (= Prune&Comp).

    Columns: the method name, each perplexity dataset present and its Avg, and QA Average / RP
    when any row has QA results. Rows whose method is missing from ``methods`` show "—".
    Returns "" when ``results["ablation"]`` is ``None``.
    """
    ablation = results.get("ablation")
    if not ablation:
        return ""
    by_name = _by_name(results)
    spec = ablation.get("rows") or {}
    keys = [k for k in ABLATION_ROWS if k in spec] + [k for k in spec if k not in ABLATION_ROWS]
    members = [by_name.get(spec[k]) for k in keys]
    datasets = [d for d in _ppl_datasets(results) if any(m and _ppl(m, d) is not None for m in members)]
    with_qa = any(m and _qa_tasks(m) for m in members)
    dense = _dense(results)
    header = ["Setting", "Method", *(_dataset_label(d) for d in datasets)]
    header += ["PPL Avg"] if datasets else []
    header += ["QA Average", "RP (%)"] if with_qa else []
    rows = []
    for key, m in zip(keys, members):
        row = [key, spec[key]]
        row += [_fmt(_ppl(m, d)) if m else DASH for d in datasets]
        row += [_fmt(_ppl_avg(m, datasets)) if m else DASH] if datasets else []
        row += [_pct(_qa_average(m)) if m else DASH, _fmt(_rp(m, dense)) if m else DASH] if with_qa else []
        rows.append(row)
    metric = ablation.get("metric") or "?"
    note = f"_Ablation for metric `{metric}`; +both = Prune&Comp (iterative pruning with magnitude compensation)._"
    return _md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2)) + "\n\n" + note


def _settings_md(settings: Mapping[str, Any]) -> str:
    """Settings as a bullet list; nested values as inline JSON."""
    if not settings:
        return "_No settings recorded._"
    lines = []
    for key, value in settings.items():
        if isinstance(value, (Mapping, list, tuple)):
            text = "`" + json.dumps(value, default=str) + "`"
        else:
            text = str(value)
        lines.append(f"- **{key}**: {text}")
    return "\n".join(lines)


def render_markdown(results: Results, images: Mapping[str, str | Path] | None = None) -> str:
    """The full report: title, settings, every non-empty table and image links.

    ``images`` maps plot keys (see :data:`PLOT_FILES`) to the paths to link (relative to the
    Markdown file); by default each plot whose data is present is linked by its file name.
    """
    if images is None:
        images = {key: PLOT_FILES[key] for key, (has, _) in _PLOTS.items() if has(results)}
    model = results.get("model", "model")
    L, k = results.get("num_layers"), results.get("k")
    out = [f"# Prune&Comp layer pruning: {model}", ""]
    if isinstance(L, int) and isinstance(k, int) and L:
        out += [f"Dense depth {L} layers; {k} removed ({100.0 * k / L:.1f}%) → {L - k} layers.", ""]
    out += ["## Settings", "", _settings_md(results.get("settings") or {}), ""]
    sections = [
        ("Perplexity", ppl_table(results)),
        ("Zero-shot QA", qa_table(results)),
        ("Ablation", ablation_table(results)),
        ("Removed layers", removed_layers_table(results)),
    ]
    for title, table in sections:
        if table:
            out += [f"## {title}", "", table, ""]
    titles = {
        "gain_ratio": "Dense per-layer magnitude gain ratio",
        "scores_heatmap": "Layer importance scores per round",
        "magnitude_depth": "Hidden-state magnitude over depth",
        "ppl_bars": "Perplexity: baseline vs. +Prune&Comp",
    }
    if images:
        out += ["## Plots", ""]
        for key, path in images.items():
            title = titles.get(key, key)
            out += [f"### {title}", "", f"![{title}]({Path(path).as_posix()})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- plotting


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _gain_ratio(results: Results) -> list[float]:
    return [float(x) for x in ((results.get("dense_stats") or {}).get("gain_ratio") or [])]


def _compensated(results: Results) -> list[Method]:
    return [m for m in _methods(results) if m.get("compensate") and m.get("removed")]


def plot_gain_ratio(results: Results, path: str | Path) -> Path:
    """Bar chart of the dense model's per-layer gain ratio E|h_out|/E|h_in| with a line at 1.0.

    Layers removed by each compensated (+Prune&Comp) method are marked above their bars.
    Raises ``ValueError`` when ``dense_stats["gain_ratio"]`` is missing.
    """
    ratio = _gain_ratio(results)
    if not ratio:
        raise ValueError("results have no dense_stats.gain_ratio")
    fig = _figure(max(6.4, 0.22 * len(ratio) + 2.5), 4.0)
    ax = fig.add_subplot()
    x = list(range(len(ratio)))
    ax.bar(x, ratio, color="tab:blue", alpha=0.8, label="gain ratio")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="ratio = 1")
    positive = [r for r in ratio if r > 0]
    # an embedding-to-first-layer jump (often 10x or more) would flatten every other bar
    log_scale = bool(positive) and len(positive) == len(ratio) and max(positive) / min(positive) > 4
    if log_scale:
        ax.set_yscale("log")
    markers = "v^osDP*Xph"
    top = max(ratio)
    for i, m in enumerate(_compensated(results)):
        layers = [layer for layer in m["removed"] if 0 <= layer < len(ratio)]
        if log_scale:
            ys = [ratio[layer] * 1.15 ** (i + 1) for layer in layers]
        else:
            ys = [max(ratio[layer], 0.0) + 0.06 * (i + 1) * top for layer in layers]
        ax.scatter(layers, ys, marker=markers[i % len(markers)], s=36, zorder=3, label=f"removed by {m['name']}")
    ax.set_xlabel("layer index (dense model)")
    ax.set_ylabel("E|h_out| / E|h_in|" + (" (log)" if log_scale else ""))
    ax.set_title(f"{results.get('model', '')}: per-layer magnitude gain ratio (dense)")
    ax.set_xticks(x[:: max(1, len(x) // 30)])
    ax.set_xlim(-0.7, len(ratio) - 0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _chosen_per_round(method: Method) -> list[list[int]]:
    """Original layer indices removed in each round (rounds without candidates give [])."""
    if method.get("round_removed"):
        return [list(r) for r in method["round_removed"]]
    removed = set(method.get("removed") or [])
    rounds = method.get("round_candidates") or []
    chosen: list[list[int]] = []
    taken: set[int] = set()
    for r, cands in enumerate(rounds):
        nxt = set(rounds[r + 1]) if r + 1 < len(rounds) else set()
        now = [c for c in (cands or []) if c in removed and c not in taken and c not in nxt]
        taken.update(now)
        chosen.append(now)
    return chosen


def _score_rows(method: Method, num_layers: int) -> list[list[float | None]]:
    """Per round, min-max normalised scores placed at original layer index (``None`` = blank)."""
    rows = []
    scores = method.get("round_scores") or []
    cands = method.get("round_candidates") or []
    for r, row in enumerate(scores):
        idx = cands[r] if r < len(cands) and cands[r] and len(cands[r]) == len(row or []) else None
        if idx is None and len(row or []) == num_layers:
            idx = list(range(num_layers))
        grid: list[float | None] = [None] * num_layers
        if idx is not None:
            for layer, s in zip(idx, row):
                v = _num(s)
                if v is not None and math.isfinite(v) and 0 <= layer < num_layers:
                    grid[layer] = v
        present = [v for v in grid if v is not None]
        lo, hi = (min(present), max(present)) if present else (0.0, 0.0)
        rows.append([None if v is None else (0.5 if hi == lo else (v - lo) / (hi - lo)) for v in grid])
    return rows


def _score_methods(results: Results) -> list[Method]:
    return [m for m in _methods(results) if m.get("metric") and any(m.get("round_scores") or [])]


def _num_layers(results: Results) -> int:
    L = results.get("num_layers")
    if isinstance(L, int) and L > 0:
        return L
    highest = [max(c) for m in _methods(results) for c in (m.get("round_candidates") or []) if c]
    return max([len(_gain_ratio(results)), *(h + 1 for h in highest)])


def plot_scores_heatmap(results: Results, path: str | Path) -> Path:
    """One heatmap per pruned method with importance scores: x = original layer, y = round.

    Each round's scores are min-max normalised over its candidates (scales differ per round);
    non-candidates (protected or already removed) are blank; the layer(s) removed in a round
    are marked with a red ×. Raises ``ValueError`` when no method has scores.
    """
    import numpy as np

    methods = _score_methods(results)
    L = _num_layers(results)
    if not methods or not L:
        raise ValueError("results have no per-round scores")
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    max_rounds = max(len(m["round_scores"]) for m in methods)
    panel_h = 1.3 + 0.28 * max_rounds
    fig = _figure(max(6.4, ncols * max(4.2, 0.16 * L + 1.8)), max(3.0, nrows * panel_h + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = None
    for ax, m in zip(axes.flat, methods):
        rows = _score_rows(m, L)
        data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float))
        image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                          extent=(-0.5, L - 0.5, len(rows) + 0.5, 0.5))
        for r, layers in enumerate(_chosen_per_round(m)):
            if layers:
                ax.scatter(layers, [r + 1] * len(layers), marker="x", color="red", s=30, linewidths=1.5, zorder=3)
        mode = m.get("mode")
        ax.set_title(m["name"] if not mode or mode in m["name"] else f"{m['name']} ({mode})", fontsize=9)
        ax.set_xlabel("original layer index", fontsize=8)
        ax.set_ylabel("round", fontsize=8)
        ax.set_yticks(range(1, len(rows) + 1))
        ax.tick_params(labelsize=7)
        ax.set_xlim(-0.5, L - 0.5)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="score (min-max per round)")
    title = "Layer importance scores per round (row-normalised; × = removed, blank = not a candidate)"
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _magnitude_series(results: Results) -> list[tuple[str, list[float]]]:
    """(label, magnitudes) for Dense (method entry or ``dense_stats``) and every method that has one."""
    series = []
    dense = _dense(results)
    for m in _methods(results):
        mag = m.get("magnitude")
        if m is dense and not mag:
            mag = (results.get("dense_stats") or {}).get("magnitude")
        if mag:
            series.append((m["name"], [float(v) for v in mag]))
    if dense is None and (results.get("dense_stats") or {}).get("magnitude"):
        series.insert(0, ("Dense", [float(v) for v in results["dense_stats"]["magnitude"]]))
    return series


def plot_magnitude_depth(results: Results, path: str | Path) -> Path:
    """Mean |h| at every layer boundary of each model (Dense and pruned), log y-axis.

    Raises ``ValueError`` when no model has magnitudes.
    """
    series = _magnitude_series(results)
    if not series:
        raise ValueError("results have no magnitude data")
    fig = _figure(8.0 if len(series) <= 8 else 9.5, 4.6)
    ax = fig.add_subplot()
    dense = _dense(results)
    dense_name = dense["name"] if dense else "Dense"
    by_name = _by_name(results)
    metrics = list(dict.fromkeys(by_name[n].get("metric") for n, _ in series if n in by_name and n != dense_name))
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(metrics) <= 10 else "tab20"]
    for name, mag in series:
        style: dict[str, Any] = {"color": "black", "linewidth": 2.2, "linestyle": "-"}
        if name != dense_name:
            m = by_name.get(name, {})
            style = {  # colour = metric, solid = compensated, dashed = not
                "color": palette(metrics.index(m.get("metric")) % palette.N),
                "linewidth": 1.3,
                "linestyle": "-" if m.get("compensate") else "--",
            }
        ax.plot(range(len(mag)), mag, label=name, marker="." if len(mag) <= 40 else None, markersize=4, **style)
    if all(v > 0 for _, mag in series for v in mag):
        ax.set_yscale("log")
    ax.set_xlabel("layer boundary index (0 = embeddings, in each model)")
    ax.set_ylabel("mean |h|")
    ax.set_title(f"{results.get('model', '')}: hidden-state magnitude over depth (dashed = no compensation)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _ppl_pairs(results: Results) -> list[tuple[str, Method | None, Method | None]]:
    """Per metric (first-seen order): (label, baseline, +Prune&Comp), iterative preferred over block."""
    pairs: dict[str, dict[bool, Method]] = {}
    # The paper's pair: its baseline is one-shot without compensation, Prune&Comp is iterative with it.
    ranks = {False: {"one-shot": 0, "block": 1, "iterative": 2}, True: {"iterative": 0, "block": 1}}
    for m in _methods(results):
        metric, mode, comp = m.get("metric"), m.get("mode"), m.get("compensate")
        if not metric or comp is None or mode not in ranks[bool(comp)]:
            continue
        rank = ranks[bool(comp)]
        slot = pairs.setdefault(metric, {})
        old = slot.get(bool(comp))
        if old is None or rank[mode] < rank[old.get("mode")]:
            slot[bool(comp)] = m
    out = []
    for metric, slot in pairs.items():
        base, comp = slot.get(False), slot.get(True)
        label = base["name"] if base else metric
        out.append((label, base, comp))
    return out


def _ppl_bar_datasets(results: Results) -> list[str]:
    pairs = _ppl_pairs(results)
    return [d for d in _ppl_datasets(results)
            if any(m is not None and _ppl(m, d) is not None for _, b, c in pairs for m in (b, c))]


def plot_ppl_bars(results: Results, path: str | Path) -> Path:
    """Grouped bars per metric, baseline vs. +Prune&Comp, one subplot per perplexity dataset.

    The dense perplexity is a dashed line; the y-axis is logarithmic when values span more
    than 10×. Raises ``ValueError`` when no paired method has perplexities.
    """
    pairs = _ppl_pairs(results)
    datasets = _ppl_bar_datasets(results)
    if not pairs or not datasets:
        raise ValueError("results have no baseline/+Prune&Comp perplexities")
    dense = _dense(results)
    n = len(datasets)
    side_by_side = n * len(pairs) <= 8  # few bars: datasets side by side, else stacked
    panel_w = max(3.6, 0.9 * len(pairs) + 1.5)
    if side_by_side:
        fig = _figure(max(6.4, n * panel_w), 4.4)
        axes = fig.subplots(1, n, squeeze=False)[0]
    else:
        fig = _figure(max(6.4, panel_w + 1.0), 1.0 + 3.0 * n)
        axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    width = 0.38
    for ax, d in zip(axes, datasets):
        x = list(range(len(pairs)))
        values = []
        for offset, which, color, label in ((-width / 2, 1, "tab:gray", "baseline"),
                                            (width / 2, 2, "tab:orange", "+Prune&Comp")):
            ys = [_ppl(p[which], d) if p[which] is not None else None for p in pairs]
            ys = [y if y is not None and math.isfinite(y) else None for y in ys]  # inf/nan: no bar
            xs = [xi + offset for xi, y in zip(x, ys) if y is not None]
            hs = [y for y in ys if y is not None]
            values += hs
            bars = ax.bar(xs, hs, width, color=color, label=label)
            ax.bar_label(bars, labels=[f"{h:.1f}" if h < 1e4 else f"{h:.1e}" for h in hs], fontsize=6, padding=1)
        dense_ppl = _ppl(dense, d) if dense else None
        if dense_ppl is not None and math.isfinite(dense_ppl):
            label = f"{dense['name']} ({dense_ppl:.1f})"
            ax.axhline(dense_ppl, color="black", linestyle="--", linewidth=1, label=label)
            values.append(dense_ppl)
        finite = [v for v in values if v > 0 and math.isfinite(v)]
        if finite and max(finite) / min(finite) > 10:
            ax.set_yscale("log")
            ax.set_ylim(top=max(finite) * 3)  # room for the bar labels
        elif finite:
            ax.set_ylim(0, max(finite) * 1.12)
        tilt = len(pairs) > 3
        ax.set_xticks(x, [p[0] for p in pairs], rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
        ax.set_title(_dataset_label(d))
        ax.set_ylabel("perplexity (lower is better)")
        ax.legend(fontsize=7, loc="upper left")
    k = results.get("k")
    title = f"{results.get('model', '')}: perplexity after removing {k} layers, baseline vs. +Prune&Comp"
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


#: key -> (has-data predicate, plot function); the order is the report's order.
_PLOTS: dict[str, tuple[Callable[[Results], bool], Callable[[Results, str | Path], Path]]] = {
    "gain_ratio": (lambda r: bool(_gain_ratio(r)), plot_gain_ratio),
    "scores_heatmap": (lambda r: bool(_score_methods(r)) and _num_layers(r) > 0, plot_scores_heatmap),
    "magnitude_depth": (lambda r: bool(_magnitude_series(r)), plot_magnitude_depth),
    "ppl_bars": (lambda r: bool(_ppl_pairs(r)) and bool(_ppl_bar_datasets(r)), plot_ppl_bars),
}


def write_report(results: Results, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.md`` and every plot whose data is present into ``out_dir``.

    Returns the written paths: ``"markdown"`` plus one key per plot (see :data:`PLOT_FILES`).
    A plot that lacks data, or fails (e.g. matplotlib not installed), is skipped with a log
    message and not linked from the Markdown.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key, (has_data, plot) in _PLOTS.items():
        if not has_data(results):
            log.info("report: skipping %s (no data)", key)
            continue
        try:
            written[key] = plot(results, out / PLOT_FILES[key])
        except Exception as exc:  # a plot must never cost the tables
            log.warning("report: could not draw %s: %s", key, exc)
    markdown = render_markdown(results, {k: p.name for k, p in written.items()})
    md_path = out / "results.md"
    md_path.write_text(markdown, encoding="utf-8")
    return {"markdown": md_path, **written}
