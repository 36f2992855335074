"""`prunecomp compare`: the paper's experiment for one model, as one resumable run.

The dense model, each metric's baseline and +Prune&Comp, and the four-row ablation for one
metric share one set of calibration windows. Each method's recipe and evaluation are cached in
the output folder, so an interrupted run resumes where it stopped and a re-run is cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..arch import resolve
from ..calib.capture import capture_stats
from ..config import CalibConfig, PruneConfig
from ..metrics import get_metric
from ..prune import apply_recipe, calibration_windows, prune
from ..recipe import Recipe
from .ppl import eval_windows, evaluate_perplexity
from ..progress import progress_bar

SCHEMA_VERSION = 1
DISPLAY = {"bi": "BI", "cl": "CL", "taylor": "Taylor+", "mag": "Mag+", "ppl": "PPL", "reverse": "Reverse", "random": "Random"}
COMP = "+Prune&Comp"


@dataclass(frozen=True)
class EvalSettings:
    ppl_datasets: tuple[str, ...] = ("wikitext2", "c4", "ptb")
    # Perplexity protocols to report: "default" (keys "wikitext2", ...) and/or "paper" ("wikitext2@paper", ...)
    protocols: tuple[str, ...] = ("default",)
    allow_substitute: bool = False
    seqlen: int = 2048
    max_windows: int | None = None
    tasks: tuple[str, ...] = ()  # lm-eval QA tasks; "mmlu" may be included
    limit: int | None = None
    batch_size: int = 1
    magnitude_windows: int = 4  # eval windows used for the depth profile of |h|


@dataclass(frozen=True)
class Method:
    name: str
    metric: str | None
    iterative: bool = True
    compensate: bool = True
    role: str = ""  # the row's place in the paper's grid

    @property
    def key(self) -> str:
        return "dense" if self.metric is None else f"{self.metric}-{'it' if self.iterative else 'os'}-{'comp' if self.compensate else 'plain'}"


@dataclass(frozen=True)
class CompareConfig:
    metrics: tuple[str, ...] = ("bi", "taylor", "mag", "ppl", "cl")
    num_layers: int = 1
    ablation_metric: str | None = "bi"
    seed: int = 0
    calib: CalibConfig = field(default_factory=CalibConfig)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    batch_size: int = 1
    estimator: str = "auto"
    # "paper": every method runs PruneConfig.paper (the official protocol's data and details),
    # shrunk to `calib`'s window count and seqlen when those differ from the paper's.
    preset: str | None = None


# The paper's grid per metric: its "baseline" is the one-shot ranking without compensation, its
# "+Prune&Comp" is iterative with compensation; the other two rows are the ablations.
GRID = (
    (False, False, "baseline (paper): one-shot, no compensation"),
    (True, False, "ablation: iterative only"),
    (False, True, "ablation: compensation only (one-shot)"),
    (True, True, "Prune&Comp (paper): iterative + compensation"),
)


def method_name(metric: str, iterative: bool, compensate: bool) -> str:
    display = DISPLAY.get(metric, metric)
    comp = " " + COMP if display.endswith("+") else COMP  # "Taylor+ +Prune&Comp", not "Taylor++Prune&Comp"
    if get_metric(metric).contiguous_block:  # one block: no one-shot/iterative distinction
        return display + (comp if compensate else " (baseline)")
    if compensate:
        return display + (comp if iterative else " one-shot+comp")
    return display + (" iterative" if iterative else " (baseline)")


def plan_methods(config: CompareConfig) -> tuple[list[Method], dict | None]:
    """Dense, then the paper's 2x2 grid per metric (one row pair for the block metric CL)."""
    methods = [Method("Dense", None, role="dense")]
    for metric in config.metrics:
        metric = get_metric(metric).name
        for iterative, compensate, role in GRID:
            if get_metric(metric).contiguous_block:
                if not iterative:
                    continue
                role = "Prune&Comp (paper)" if compensate else "baseline (paper)"
            methods.append(Method(method_name(metric, iterative, compensate), metric, iterative, compensate, role))
    ablation = None
    if config.ablation_metric:
        metric = get_metric(config.ablation_metric).name
        if get_metric(metric).contiguous_block:
            raise ValueError("the ablation needs a per-layer metric; CosSim(CL) removes one block")
        rows = {}
        for label, iterative, compensate in (("one-shot", False, False), ("+iterative", True, False),
                                             ("+compensation", False, True), ("+both", True, True)):
            rows[label] = method_name(metric, iterative, compensate)
            if rows[label] not in {m.name for m in methods}:
                methods.append(Method(rows[label], metric, iterative, compensate))
        ablation = {"metric": metric, "rows": rows}
    return methods, ablation


def _fingerprint(model_name: str, config: CompareConfig) -> str:
    data = {"model": model_name, "k": config.num_layers, "seed": config.seed, "estimator": config.estimator,
            "calib": asdict(config.calib)}
    if config.preset:
        data["preset"] = config.preset
    data = json.dumps(data, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _magnitude_profile(model, windows) -> list[float]:
    return capture_stats(resolve(model), windows).magnitude().tolist()


def _evaluate(model, tokenizer, settings: EvalSettings, magnitude_windows, progress: bool) -> dict:
    result: dict = {"ppl": {}, "qa": None, "mmlu": None}
    for protocol in settings.protocols:
        for dataset in settings.ppl_datasets:
            ppl = evaluate_perplexity(model, tokenizer, dataset, settings.seqlen, settings.max_windows,
                                      settings.batch_size, progress=progress, protocol=protocol,
                                      allow_substitute=settings.allow_substitute)
            result["ppl"][ppl_key(dataset, protocol)] = ppl.to_dict()
    if settings.tasks:
        from .harness import run_harness

        harness = run_harness(model, tokenizer, list(settings.tasks), limit=settings.limit, batch_size=settings.batch_size)
        qa = harness.qa
        if qa:
            result["qa"] = {
                "tasks": {name: {"acc": s.acc, "acc_norm": s.acc_norm, "n": s.n, "source": s.source} for name, s in qa.items()},
                "average": harness.average,
            }
        if harness.mmlu is not None:
            result["mmlu"] = {"acc": harness.mmlu.acc, "n": harness.mmlu.n, "num_fewshot": harness.mmlu.num_fewshot}
    result["magnitude"] = _magnitude_profile(model, magnitude_windows)
    return result


def ppl_key(dataset: str, protocol: str) -> str:
    return dataset if protocol == "default" else f"{dataset}@{protocol}"


def _prune_config(config: CompareConfig, method: Method) -> PruneConfig:
    common = dict(iterative=method.iterative, compensate=method.compensate, batch_size=config.batch_size)
    if config.preset == "paper":
        if config.estimator != "auto":
            common["estimator"] = config.estimator
        paper = PruneConfig.paper(method.metric, config.num_layers, allow_substitute=config.calib.allow_substitute, **common)
        return paper.with_calibration_size(config.calib.num_windows, config.calib.scale_windows, config.calib.seqlen)
    return PruneConfig(metric=method.metric, num_layers=config.num_layers, seed=config.seed, estimator=config.estimator,
                       calib=config.calib, **common)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_compare(model, tokenizer, model_name: str, config: CompareConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the comparison; writes results.json, results.md and the plots into out_dir."""
    out = Path(out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(model_name, config)
    methods, ablation = plan_methods(config)

    windows_path = cache / f"calibration-{fingerprint}.pt"
    if windows_path.exists():
        saved = torch.load(windows_path)
        windows, calib_info = saved["windows"], saved["info"]
    else:
        windows, calib_info = calibration_windows(tokenizer, config.calib)
        torch.save({"windows": windows, "info": calib_info}, windows_path)

    settings = config.evaluation
    first_dataset = settings.ppl_datasets[0] if settings.ppl_datasets else "wikitext2"
    magnitude_windows = eval_windows(tokenizer, first_dataset, settings.seqlen, settings.magnitude_windows)[0]
    dense_arch = resolve(model)
    dense_stats = capture_stats(dense_arch, windows, progress=progress, desc="dense stats")
    rows = []
    for method in progress_bar(methods, desc="compare", enabled=progress, leave=True):
        entry_path = cache / f"{method.key}-{fingerprint}.json"
        recipe_path = cache / f"{method.key}-{fingerprint}.recipe.json"
        if entry_path.exists():  # labels come from today's plan, numbers from the cache
            rows.append(json.loads(entry_path.read_text()) | {"name": method.name, "role": method.role})
            continue
        started = time.perf_counter()
        candidate = model if method.metric is None else copy.deepcopy(model)
        recipe = None
        if method.metric is not None:
            if recipe_path.exists():  # pruned before, evaluation was interrupted: replay, no calibration
                recipe = Recipe.load(recipe_path)
                apply_recipe(candidate, recipe)
            else:
                prune_config = _prune_config(config, method)
                # The paper preset draws each metric's own data (scale windows, Taylor+ crops, SLEB rows).
                calibration = None if config.preset else windows
                recipe = prune(candidate, tokenizer, prune_config, calibration, source_model=model_name, progress=progress).recipe
                if calibration is not None:
                    recipe.calibration = calib_info | {k: v for k, v in recipe.calibration.items() if k not in calib_info
                                                       and k not in ("source", "num_windows", "seqlen")}
                recipe.save(recipe_path)
        prune_seconds = time.perf_counter() - started
        entry = {
            "name": method.name,
            "role": method.role,
            "metric": method.metric,
            "mode": recipe.mode if recipe else None,
            "compensate": method.compensate if method.metric else None,
            "removed": recipe.removed_layers if recipe else [],
            "scales": [r.scale for r in recipe.rounds] if recipe else [],
            "round_scores": [r.scores for r in recipe.rounds] if recipe else [],
            "round_candidates": [r.candidates for r in recipe.rounds] if recipe else [],
            "round_removed": [r.removed for r in recipe.rounds] if recipe else [],
            "params": resolve(candidate).parameter_count(),
            "seconds": prune_seconds,
        }
        entry |= _evaluate(candidate, tokenizer, settings, magnitude_windows, progress)
        entry["eval_seconds"] = time.perf_counter() - started - prune_seconds
        _write_json(entry_path, entry)
        rows.append(entry)
        del candidate

    preset_calibration = {}  # metric -> what its recipes were calibrated on (the preset draws each metric's own data)
    for method in methods if config.preset else ():
        recipe_path = cache / f"{method.key}-{fingerprint}.recipe.json"
        if method.metric and method.metric not in preset_calibration and recipe_path.exists():
            preset_calibration[method.metric] = Recipe.load(recipe_path).calibration
    results = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "num_layers": dense_arch.num_layers(),
        "k": config.num_layers,
        "settings": {
            # with a preset, calib_info only feeds the dense statistics of the plots; each metric's own
            # calibration (from its recipe) is what the pruning used
            "calibration": ({"dense statistics (plots only)": calib_info} | preset_calibration if config.preset
                            else calib_info),
            "evaluation": asdict(settings),
            "metrics": list(config.metrics),
            "estimator": config.estimator,
            "preset": config.preset,
            "seed": config.seed,
        },
        "methods": rows,
        "ablation": ablation,
        "dense_stats": {"gain_ratio": dense_stats.gain_ratio().tolist(), "magnitude": dense_stats.magnitude().tolist()},
    }
    _add_retained(results)
    _write_json(out / "results.json", results)
    from .report import write_report

    write_report(results, out)
    return results


def _add_retained(results: dict) -> None:
    """RP (%) of each method's QA average against the dense model's, as in the paper."""
    dense = results["methods"][0]
    dense_avg = (dense.get("qa") or {}).get("average")
    for entry in results["methods"]:
        qa = entry.get("qa")
        if qa and dense_avg:
            qa["rp"] = 100.0 * qa["average"] / dense_avg
