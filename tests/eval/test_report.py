"""Tests for prunecomp.eval.report: Markdown tables and PNG plots from a synthetic results dict."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from prunecomp.eval import report  # noqa: E402

L, K = 8, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ppl(value: float) -> dict:
    return {"perplexity": value, "num_tokens": 4080, "num_windows": 16, "seqlen": 256, "bos": False}


def _iterative_rounds(removed_in_order: list[int]) -> tuple[list, list]:
    """Scores/candidates for iterative pruning: layer 0 and the last layer protected (None)."""
    scores, cands = [], []
    alive = list(range(L))
    for r, chosen in enumerate(removed_in_order):
        cands.append(list(alive))
        scores.append([None if i in (0, L - 1) else (0.1 if i == chosen else 0.5 + 0.1 * i + r) for i in alive])
        alive.remove(chosen)
    return scores, cands


def _method(name, metric, mode, comp, removed_order, ppl, qa=None, mmlu=None, magnitude=None):
    if mode == "one-shot":
        cands = [list(range(L))]
        scores = [[None if i in (0, L - 1) else (0.1 if i in removed_order else 1.0 + i) for i in range(L)]]
    else:
        scores, cands = _iterative_rounds(removed_order)
    return {
        "name": name,
        "metric": metric,
        "mode": mode,
        "compensate": comp,
        "removed": sorted(removed_order),
        "scales": [1.2345678, 0.98765] if comp else [],
        "round_scores": scores,
        "round_candidates": cands,
        "params": 100_000,
        "seconds": 1.5,
        "ppl": ppl,
        "qa": qa,
        "mmlu": mmlu,
        "magnitude": magnitude,
    }


def _qa(arc_norm: float, boolq: float) -> dict:
    tasks = {"arc_easy": {"acc": arc_norm, "acc_norm": arc_norm - 0.1, "n": 100}, "boolq": {"acc": boolq, "n": 100}}
    return {"tasks": tasks, "average": (arc_norm + 0.1 + boolq) / 2}


def make_results() -> dict:
    dense = _method("Dense", None, None, None, [], {"wikitext2": _ppl(20.0), "c4": _ppl(30.0), "ptb": _ppl(40.0)},
                    qa=_qa(0.5, 0.7), mmlu={"acc": 0.3, "n": 570}, magnitude=[1.0 * 1.5**i for i in range(L + 1)])
    dense.update(round_scores=[], round_candidates=[], scales=[])
    full = lambda a, b, c: {"wikitext2": _ppl(a), "c4": _ppl(b), "ptb": _ppl(c)}  # noqa: E731
    methods = [
        dense,
        _method("BI", "bi", "iterative", False, [5, 3], full(80.0, 90.0, 120.0), qa=_qa(0.35, 0.55)),
        _method("BI+Prune&Comp", "bi", "iterative", True, [5, 2], full(40.0, 50.0, 70.0), qa=_qa(0.4, 0.5),
                mmlu={"acc": 0.28, "n": 570}, magnitude=[1.0 * 1.5**i for i in range(L - K + 1)]),
        _method("Taylor+", "taylor", "iterative", False, [6, 1],
                {"wikitext2": _ppl(900.0), "ptb": _ppl(1500.0)}),  # no C4
        _method("Taylor++Prune&Comp", "taylor", "iterative", True, [6, 4], full(60.0, 70.0, 95.0)),
        _method("BI (one-shot)", "bi", "one-shot", False, [3, 5], full(85.0, 95.0, 125.0), qa=_qa(0.3, 0.5)),
        _method("BI+Prune&Comp (one-shot)", "bi", "one-shot", True, [3, 5], full(45.0, 55.0, 75.0)),
    ]
    return {
        "schema_version": 1,
        "model": "tiny-llama",
        "num_layers": L,
        "k": K,
        "settings": {"calibration": {"dataset": "wikitext2", "samples": 8}, "ppl_seqlen": 256, "tasks": ["arc_easy", "boolq"]},
        "methods": methods,
        "ablation": {"metric": "bi", "rows": {"one-shot": "BI (one-shot)", "+iterative": "BI",
                                              "+compensation": "BI+Prune&Comp (one-shot)", "+both": "BI+Prune&Comp"}},
        "dense_stats": {"gain_ratio": [3.0, 1.2, 1.1, 1.05, 1.02, 1.1, 1.3, 2.0],
                        "magnitude": [1.0 * 1.5**i for i in range(L + 1)]},
    }


@pytest.fixture
def results() -> dict:
    return json.loads(json.dumps(make_results()))  # exactly what results.json would hold


def _row(table: str, name: str) -> list[str]:
    """Cells of the table row whose first (or second, for the ablation) cell is ``name``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if name in cells[:2]:
            return cells
    raise AssertionError(f"no row {name!r} in\n{table}")


def _png_shape(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    img = imread(path)
    return img.shape[1], img.shape[0]


def test_ppl_table_has_every_method_and_handles_missing_dataset(results):
    table = report.ppl_table(results)
    for m in results["methods"]:
        assert _row(table, m["name"])
    header = _row(table, "Method")
    assert header[1:] == ["WikiText-2", "C4", "PTB", "Avg"]
    assert _row(table, "Dense")[1:] == ["20.00", "30.00", "40.00", "30.00"]
    taylor = _row(table, "Taylor+")
    assert taylor[2] == report.DASH and taylor[4] == report.DASH  # missing C4 -> no Avg
    assert "seqlen 256" in table and "windows 16" in table and "tokens 4080" in table and "BOS no" in table


def test_qa_table_rp_and_columns(results):
    table = report.qa_table(results)
    qa_names = [m["name"] for m in results["methods"] if m["qa"]]
    for name in qa_names:
        assert _row(table, name)
    assert "Taylor+" not in table
    header = _row(table, "Method")
    assert header[1:] == ["ARC-e", "BoolQ", "Average", "RP (%)", "MMLU"]
    dense = _row(table, "Dense")
    assert dense[1:] == ["50.00", "70.00", "60.00", "100.00", "30.00"]  # acc, not acc_norm, as the harness average
    # BI+Prune&Comp: (40 + 50) / 2 = 45 -> RP = 45 / 60 = 75 %
    comp = _row(table, "BI+Prune&Comp")
    assert comp[1:] == ["40.00", "50.00", "45.00", "75.00", "28.00"]
    # BI: (35 + 55) / 2 = 45 as well; no MMLU
    assert _row(table, "BI")[3:] == ["45.00", "75.00", report.DASH]
    assert "acc; acc_norm is in results.json" in table


def test_qa_table_empty_without_qa(results):
    for m in results["methods"]:
        m["qa"] = None
    assert report.qa_table(results) == ""


def test_removed_layers_and_ablation_tables(results):
    removed = report.removed_layers_table(results)
    for m in results["methods"]:
        assert _row(removed, m["name"])
    row = _row(removed, "BI+Prune&Comp")
    assert row[5] == "2, 5" and row[6] == "1.2346, 0.9877"

    ablation = report.ablation_table(results)
    for setting, name in results["ablation"]["rows"].items():
        cells = _row(ablation, name)
        assert cells[0] == setting
    assert _row(ablation, "Setting")[2:] == ["WikiText-2", "C4", "PTB", "PPL Avg", "QA Average", "RP (%)"]
    both = _row(ablation, "BI+Prune&Comp")
    assert both[2:] == ["40.00", "50.00", "70.00", "53.33", "45.00", "75.00"]
    assert _row(ablation, "BI+Prune&Comp (one-shot)")[-2:] == [report.DASH, report.DASH]
    assert [line.split("|")[1].strip() for line in ablation.splitlines()[2:6]] == list(report.ABLATION_ROWS)

    results["ablation"] = None
    assert report.ablation_table(results) == ""


def test_chosen_per_round_follows_candidates(results):
    by_name = {m["name"]: m for m in results["methods"]}
    assert report._chosen_per_round(by_name["BI+Prune&Comp"]) == [[5], [2]]
    assert report._chosen_per_round(by_name["BI (one-shot)"]) == [[3, 5]]
    rows = report._score_rows(by_name["BI"], L)
    assert rows[0][0] is None and rows[0][L - 1] is None  # protected
    assert rows[1][5] is None  # removed in round 0
    assert min(v for v in rows[0] if v is not None) == 0.0 and max(v for v in rows[0] if v is not None) == 1.0


def test_write_report_full(results, tmp_path):
    paths = report.write_report(results, tmp_path / "out")
    assert set(paths) == {"markdown", *report.PLOT_FILES}
    for key, file_name in report.PLOT_FILES.items():
        assert paths[key] == tmp_path / "out" / file_name
        width, height = _png_shape(paths[key])
        assert width >= 400 and height >= 250, (key, width, height)
    md = paths["markdown"].read_text()
    assert md.startswith("# Prune&Comp layer pruning: tiny-llama")
    for file_name in report.PLOT_FILES.values():
        assert f"]({file_name})" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert all((tmp_path / "out" / link).is_file() for link in links)
    for section in ("## Settings", "## Perplexity", "## Zero-shot QA", "## Ablation", "## Removed layers"):
        assert section in md
    assert "**ppl_seqlen**: 256" in md
    for m in results["methods"]:
        assert m["name"] in md


def test_write_report_with_missing_data(results, tmp_path):
    sparse = copy.deepcopy(results)
    sparse["dense_stats"] = {}
    sparse["ablation"] = None
    for m in sparse["methods"]:
        m["magnitude"] = None
        m["qa"] = None
        m["mmlu"] = None
    paths = report.write_report(sparse, tmp_path)
    assert set(paths) == {"markdown", "scores_heatmap", "ppl_bars"}
    md = paths["markdown"].read_text()
    assert "gain_ratio.png" not in md and "magnitude_depth.png" not in md
    assert "## Zero-shot QA" not in md and "## Ablation" not in md

    bare = {"schema_version": 1, "model": "m", "num_layers": L, "k": K, "settings": {},
            "methods": [{"name": "Dense", "metric": None, "mode": None, "compensate": None, "removed": [],
                         "scales": [], "round_scores": [], "round_candidates": [], "params": 1, "seconds": 0.0,
                         "ppl": {}, "qa": None, "mmlu": None, "magnitude": None}],
            "ablation": None, "dense_stats": {"gain_ratio": [], "magnitude": []}}
    paths = report.write_report(bare, tmp_path / "bare")
    assert set(paths) == {"markdown"}
    md = paths["markdown"].read_text()
    assert "## Removed layers" in md and "## Plots" not in md
    assert report.ppl_table(bare) == ""


def test_plot_functions_raise_without_data(tmp_path):
    empty = {"methods": [], "dense_stats": {}}
    for plot in (report.plot_gain_ratio, report.plot_scores_heatmap, report.plot_magnitude_depth, report.plot_ppl_bars):
        with pytest.raises(ValueError):
            plot(empty, tmp_path / "x.png")


def test_render_markdown_default_links_follow_data(results):
    md = report.render_markdown(results)
    assert all(f"]({f})" in md for f in report.PLOT_FILES.values())
    results["dense_stats"] = {}
    md = report.render_markdown(results)
    assert "gain_ratio.png" not in md
    assert "magnitude_depth.png" in md  # methods still carry magnitudes


def test_non_finite_perplexity_does_not_crash(results, tmp_path):
    by_name = {m["name"]: m for m in results["methods"]}
    by_name["BI"]["ppl"]["wikitext2"]["perplexity"] = float("inf")
    by_name["Taylor+"]["ppl"]["ptb"]["perplexity"] = float("nan")
    paths = report.write_report(results, tmp_path)
    assert "ppl_bars" in paths
    table = report.ppl_table(results)
    assert _row(table, "BI")[1] == "inf" and _row(table, "Taylor+")[3] == "nan"
