"""The Prune&Comp loop: score, choose, compensate, remove, repeat."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .arch import ResolvedArch, resolve
from .calib.capture import HiddenStats
from .calib.sets import CalibrationSets, calibration_sets
from .compensate import AUTO, PER_WINDOW_ESTIMATORS, block_scale, fold_scale
from .config import CalibConfig, ConfigError, PruneConfig
from .engine.session import EngineSession, is_skeleton
from .linear_comp import (MAPS_FILENAME, CutMap, compensated_choice, cut_map_from_tensors, fit_round, fold_cut_map,
                          recon_key)
from .metrics import Metric, ScoreContext, get_metric
from .recipe import Recipe, RecipeError, Round, library_versions, now
from .surgery import remove_layers
from . import guards
from .progress import progress_bar
from .recon import capture_dense_streams, reconstruct

NOTE_LAST = "block ends at the last layer: the final norm is scale-invariant, so no compensation is needed"
NOTE_DISABLED = "compensation disabled (--no-comp)"


@dataclass
class PruneResult:
    model: torch.nn.Module
    recipe: Recipe
    dense_stats: HiddenStats | None  # statistics of the unpruned model, when they were gathered
    params_before: int
    params_after: int
    seconds: float
    # round index -> the fitted map folded at that cut (comp with a linear part); save them with
    # linear_comp.save_maps(result.maps, out / MAPS_FILENAME) so `apply_recipe` can replay them.
    maps: dict[int, CutMap] = field(default_factory=dict)
    # original layer index -> the map --comp *recon* folded into that kept layer (saved in the same file:
    # save_maps(result.maps, out / MAPS_FILENAME, recon=result.recon_maps))
    recon_maps: dict[int, CutMap] = field(default_factory=dict)


def calibration_windows(tokenizer, calib: CalibConfig) -> tuple[torch.Tensor, dict]:
    """Seeded calibration windows (the scoring set) plus a description of them for the recipe."""
    sets = calibration_sets(tokenizer, calib)
    return sets.score, sets.info


def resolve_estimator(config: PruneConfig, arch: ResolvedArch) -> str:
    if config.estimator != AUTO:
        return config.estimator
    estimator = arch.spec.default_estimator
    if config.preset == "paper" and estimator == "channel_mean":
        return "channel_mean_windows"  # the official averaging of the same ratio
    return estimator


def apply_round(arch: ResolvedArch, kept: list[int], start: int, size: int, scale: float) -> None:
    """Fold `scale` into the writers before current layer `start`, then remove `size` layers there.

    `kept` (original indices of the current layers) is updated in place. Replaying a recipe
    runs exactly this, so replays are bitwise identical.
    """
    fold_scale(arch, start, scale)
    remove_layers(arch, list(range(start, start + size)))
    del kept[start : start + size]


def _block_scale(stats: HiddenStats | None, start: int, size: int, num_layers: int, compensate: bool, estimator: str):
    if not compensate:
        return 1.0, NOTE_DISABLED
    if start + size == num_layers:
        return 1.0, NOTE_LAST
    return block_scale(stats, start, start + size, estimator), None


def _announce(calib: CalibrationSets, progress: bool) -> None:
    for line in calib.info.get("substitutions", []):
        print(f"prunecomp: substituted calibration data (recorded in the recipe): {line}", file=sys.stderr)


def _masked_scores(scores: torch.Tensor, num_layers: int, block: int, barrier: tuple[int, int]) -> torch.Tensor:
    """Scores with candidates inside the barrier set to +inf."""
    first, last = barrier
    masked = scores.clone().double()
    for start in range(masked.numel()):
        if start < first or start + block > num_layers - last:
            masked[start] = math.inf
    if torch.isinf(masked).all():
        raise ConfigError(f"no layer can be removed: the barrier keeps the first {first} and last {last} of {num_layers}")
    return masked


@contextmanager
def _float32_weights(model):
    """Upcast float16/bfloat16 weights to float32 and back: lossless both ways when nothing is
    changed in between, so gradients can be taken in float32 without a model copy."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield
        return
    model.float()
    try:
        yield
    finally:
        model.to(dtype)


def _scale_stats(session: EngineSession, calib: CalibrationSets, block: int, config: PruneConfig, estimator: str,
                 progress: bool, desc: str, score_stats: HiddenStats | None = None) -> HiddenStats | None:
    """Statistics the compensation scale is estimated from (None when not compensating)."""
    if not config.compensate:
        return None
    if score_stats is not None and calib.shared:
        return score_stats
    return session.stats(calib.scale, (block,), desc=desc, per_window=estimator in PER_WINDOW_ESTIMATORS)


def _score_round(session: EngineSession, metric: Metric, config: PruneConfig, calib: CalibrationSets, estimator: str,
                 round_index: int, block: int, progress: bool, writer_scales: list[float] | None = None):
    """Scores, barrier-masked scores, and the statistics for the scale, for one round."""
    arch = session.arch
    stats = None
    desc = f"round {round_index + 1}: stats"
    if metric.needs_stats or (config.compensate and calib.shared):
        stats = session.stats(calib.score, (block,), desc=desc, per_window=calib.shared and estimator in PER_WINDOW_ESTIMATORS)
    ctx = ScoreContext(arch, calib.score, stats, block, config.batch_size, config.seed, round_index, progress,
                       writer_scales if config.unfold_magnitude else None, norm_weights=config.norm_weights, engine=session)
    gradients = _float32_weights(arch.model) if config.float32_gradients and metric.name == "taylor" else nullcontext()
    with gradients:
        scores = metric.score(ctx).double().cpu()
    guards.check_finite(scores, f"the {metric.name} scores", round_index=round_index)  # NaN activations surface here
    return scores, _masked_scores(scores, arch.num_layers(), block, config.barrier()), stats


def _round(removed, scale, note, kept, masked: torch.Tensor, scores: torch.Tensor) -> Round:
    return Round(
        removed=list(removed),
        scale=scale,
        scale_note=note,
        candidates=[kept[i] for i in range(scores.numel())],
        scores=[None if math.isinf(m) or math.isnan(s) else float(s) for s, m in zip(scores.tolist(), masked.tolist())],
    )


def _contiguous_runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices -> [(start, size)] of maximal contiguous runs."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return [(s, n) for s, n in runs]


def prune(
    model: torch.nn.Module,
    tokenizer,
    config: PruneConfig,
    calibration: torch.Tensor | CalibrationSets | None = None,
    *,
    source_model: str | None = None,
    progress: bool = False,
    resume: Recipe | None = None,
    on_round: Callable[[Recipe], None] | None = None,
) -> PruneResult:
    """Remove `config.num_layers` decoder layers from `model` in place and return it with its recipe.

    `calibration` is a LongTensor of token windows [n, seqlen] (scoring and scale alike) or a
    CalibrationSets; when omitted, windows are drawn from `config.calib` (and `config.score_calib`).
    `on_round(recipe)` is called after every iterative round (checkpointing); `resume` is such a
    partial recipe of the same run: its rounds are replayed (not re-scored) and the run goes on.
    """
    started = time.perf_counter()
    arch = resolve(model)
    if config.compensate:
        arch.require_exact_fold()  # a family whose fold is not exact is refused before any work
    metric = get_metric(config.metric)
    total = arch.num_layers()
    if config.num_layers >= total:
        raise ConfigError(f"cannot remove {config.num_layers} of {total} layers")
    if config.remove is not None and max(config.remove) >= total:
        raise ConfigError(f"remove: layer {max(config.remove)} does not exist; the model has layers 0..{total - 1}")
    positions = getattr(model.config, "max_position_embeddings", None)
    longest = max(c.seqlen for c in (config.calib, config.score_calib) if c is not None)
    if calibration is None and isinstance(positions, int) and longest > positions:
        raise ConfigError(f"calibration windows of {longest} tokens exceed the model's {positions} positions; lower --seqlen")
    if calibration is None:
        calibration = calibration_sets(tokenizer, config.calib, config.score_calib)
    elif isinstance(calibration, torch.Tensor):
        calibration = CalibrationSets.from_windows(calibration)
    _announce(calibration, progress)
    params_before = arch.parameter_count()
    estimator = resolve_estimator(config, arch)
    recipe = Recipe(
        source_model=source_model or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        model_type=model.config.model_type,
        num_layers_original=total,
        metric="explicit" if config.remove is not None else metric.name,
        num_layers_removed=config.num_layers,
        mode=config.mode,
        compensate=config.compensate,
        estimator=estimator,
        seed=config.seed,
        calibration=calibration.info | _protocol(config),
        versions=library_versions(),
        created=now(),
    )
    kept = list(range(total))
    method = config.comp_method
    if method.fits_maps and is_skeleton(arch):
        raise ConfigError(f"comp {config.comp!r} fits its maps on a model held in memory; load it in memory (--engine memory)")
    if resume is not None:
        _replay_partial(arch, kept, recipe, resume, config)
    dense = capture_dense_streams(arch, calibration.scale, method, config.batch_size, progress) if method.recon else None
    session = EngineSession(arch, config.engine, config.batch_size, progress, config.max_memory, metric.name,
                            superset=calibration.scale)  # scoring windows that are a prefix of the scale's share its engine
    maps: dict[int, CutMap] = {}
    try:
        dense_stats = _run_rounds(session, metric, config, calibration, estimator, recipe, kept, progress, maps, on_round)
    finally:
        session.close()
    if maps:
        recipe.calibration["comp_rounds"] = {str(i): m.describe() for i, m in maps.items()}
    recon_maps = {}
    if dense is not None:
        recon_maps = reconstruct(arch, calibration.scale, kept, total, dense, method, config.batch_size, progress)
        del dense
        guards.check_finite_weights(arch.model, where="after the refit to the dense stream, the model")
        recipe.calibration["comp_recon"] = {str(o): m.describe() for o, m in recon_maps.items()}
    return PruneResult(model, recipe, dense_stats, params_before, arch.parameter_count(), time.perf_counter() - started,
                       maps, recon_maps)


def _run_rounds(session: EngineSession, metric: Metric, config: PruneConfig, calibration: CalibrationSets, estimator: str,
                recipe: Recipe, kept: list[int], progress: bool, maps: dict[int, CutMap],
                on_round: Callable[[Recipe], None] | None = None) -> HiddenStats | None:
    """The rounds of one run; returns the dense model's statistics when they were gathered."""
    arch = session.arch
    total = arch.num_layers()
    dense_stats = None
    k = config.num_layers
    method = config.comp_method

    def cut(start: int, size: int, scale: float) -> None:
        fitted = fit_round(arch, calibration.scale, start, size, scale, method, config.batch_size)
        if fitted is not None:  # folded into layer start - 1 before the scale (they commute) and the removal
            fold_cut_map(arch, fitted)
            maps[len(recipe.rounds) - 1] = fitted
        warning = guards.scale_warning(scale, layer=kept[start], round_index=len(recipe.rounds) - 1)
        if warning:
            recipe.warnings.append(warning)
        apply_round(arch, kept, start, size, scale)
        guards.check_finite_weights(arch.model, where=f"after the fold of round {len(recipe.rounds)}, the model")
        session.after_round(start, size, scale)  # the engine's cached states follow the model
        if fitted is not None:
            session.after_round(start - 1, 0, 1.0)  # the map changed h_start: the engine recomputes it

    if config.mode == "explicit":  # the given original indices; one scale per contiguous run
        dense_stats = _scale_stats(session, calibration, 1, config, estimator, progress, "scale stats")
        no_scores = torch.full((total,), math.nan, dtype=torch.float64)
        for start, size in reversed(_contiguous_runs(list(config.remove))):  # deepest first keeps indices valid
            scale, note = _block_scale(dense_stats, start, size, total, config.compensate, estimator)
            recipe.rounds.append(_round(list(range(start, start + size)), scale, note, [], no_scores[:0], no_scores[:0]))
            cut(start, size, scale)
    elif config.mode == "block":  # CosSim(CL): one contiguous block of k layers, compensated together
        scores, masked, stats = _score_round(session, metric, config, calibration, estimator, 0, k, progress)
        start = int(torch.argmin(masked))
        dense_stats = _scale_stats(session, calibration, k, config, estimator, progress, "scale stats", stats) or stats
        scale, note = _block_scale(dense_stats, start, k, total, config.compensate, estimator)
        recipe.rounds.append(_round(kept[start : start + k], scale, note, kept, masked, scores))
        cut(start, k, scale)
    elif config.mode == "one-shot":  # score once, remove the k lowest, one scale per contiguous run
        scores, masked, stats = _score_round(session, metric, config, calibration, estimator, 0, 1, progress)
        chosen = torch.argsort(masked, stable=True)[:k].tolist()
        if any(math.isinf(masked[i]) for i in chosen):
            raise ConfigError(f"the barrier leaves fewer than {k} removable layers")
        dense_stats = _scale_stats(session, calibration, 1, config, estimator, progress, "scale stats", stats) or stats
        original_kept = list(kept)
        for start, size in reversed(_contiguous_runs(chosen)):  # deepest first keeps earlier indices valid
            scale, note = _block_scale(dense_stats, start, size, total, config.compensate, estimator)
            recipe.rounds.append(_round(original_kept[start : start + size], scale, note, original_kept, masked, scores))
            cut(start, size, scale)
    else:  # iterative: re-score after every removal
        # compensation folded so far into each current layer's writers (by earlier, resumed rounds too)
        writer_scales = [math.prod(r.scale for r in recipe.rounds if min(r.removed) > j) for j in kept]
        for round_index in progress_bar(range(len(recipe.rounds), k), desc=f"pruning ({metric.name})", enabled=progress, leave=True,
                                initial=len(recipe.rounds), total=k):
            scores, masked, stats = _score_round(session, metric, config, calibration, estimator, round_index, 1, progress,
                                                 writer_scales)
            scale_stats = _scale_stats(session, calibration, 1, config, estimator, progress,
                                       f"round {round_index + 1}: scale stats", stats)
            dense_stats = dense_stats or scale_stats or stats
            if config.select == "compensated":
                num = arch.num_layers()
                start, _ = compensated_choice(
                    arch.model, calibration.scale, masked, method,
                    lambda i: _block_scale(scale_stats, i, 1, num, config.compensate, estimator)[0],
                    config.select_top, config.batch_size)
            else:
                start = int(torch.argmin(masked))
            scale, note = _block_scale(scale_stats, start, 1, arch.num_layers(), config.compensate, estimator)
            recipe.rounds.append(_round([kept[start]], scale, note, kept, masked, scores))
            cut(start, 1, scale)
            writer_scales = [w * scale for w in writer_scales[:start]] + writer_scales[start + 1 :]
            if on_round is not None:  # a consistent recipe of the rounds so far
                on_round(replace(recipe, rounds=list(recipe.rounds), num_layers_removed=len(recipe.removed_layers)))
    return dense_stats


# What must agree between a partial recipe and the run that resumes it.
RESUME_KEYS = ("model_type", "num_layers_original", "metric", "mode", "compensate", "estimator", "seed")


def _replay_partial(arch: ResolvedArch, kept: list[int], recipe: Recipe, partial: Recipe, config: PruneConfig) -> None:
    """Replay the finished rounds of an interrupted iterative run of the same configuration."""
    if config.mode != "iterative":
        raise ConfigError(f"only iterative runs checkpoint rounds; this run is {config.mode}")
    if config.comp_method.fits_maps:
        raise ConfigError(f"resume replays scalar compensation only; rerun --comp {config.comp_method.name} from the start")
    mismatched = [key for key in RESUME_KEYS if getattr(partial, key) != getattr(recipe, key)]
    if partial.calibration != recipe.calibration:
        mismatched.append("calibration")
    if mismatched:
        raise ConfigError(f"the checkpoint is from a different run ({', '.join(mismatched)} differ); "
                          "delete it or rerun with the same settings")
    if len(partial.rounds) >= config.num_layers:
        raise ConfigError("the checkpoint already has every round; nothing to resume")
    for step in partial.rounds:
        start = kept.index(step.removed[0])
        apply_round(arch, kept, start, len(step.removed), step.scale)
        recipe.rounds.append(step)


def _protocol(config: PruneConfig) -> dict:
    """The scoring details a recipe records beside its calibration."""
    details = {"preset": config.preset}
    if config.metric in ("taylor", "mag"):
        details["norm_weights"] = config.norm_weights
    if config.metric == "mag":
        details["magnitude"] = "unfolded (compensation divided out)" if config.unfold_magnitude else "raw |W| (official)"
    if config.float32_gradients and config.metric == "taylor":
        details["gradients"] = "float32"
    if config.comp_method.fits_maps:
        details |= {"comp": config.comp_method.name, "comp_maps": MAPS_FILENAME}
    if config.select != "metric":
        details["select"] = f"{config.select} (top {config.select_top})"
    return details


def apply_recipe(model: torch.nn.Module, recipe: Recipe, maps: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Replay a recipe on a fresh copy of its source model (no calibration needed).

    A recipe made with a linear `comp` also needs the fitted maps saved beside it
    (`linear_comp.load_maps(folder / MAPS_FILENAME)`).
    """
    arch = resolve(model)
    fitted = recipe.calibration.get("comp_rounds") or {}
    refitted = recipe.calibration.get("comp_recon") or {}
    if (fitted or refitted) and maps is None:
        raise RecipeError(f"this recipe folds fitted maps ({recipe.calibration.get('comp')}): pass the {MAPS_FILENAME} "
                          "saved beside it")
    if model.config.model_type != recipe.model_type:
        raise RecipeError(f"recipe is for model_type {recipe.model_type!r}, model is {model.config.model_type!r}")
    if arch.num_layers() != recipe.num_layers_original:
        raise RecipeError(f"recipe expects {recipe.num_layers_original} layers, model has {arch.num_layers()}")
    kept = list(range(arch.num_layers()))
    for index, step in enumerate(recipe.rounds):
        try:
            positions = [kept.index(i) for i in step.removed]
        except ValueError:
            raise RecipeError(f"round removes {step.removed}, but some were already removed") from None
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise RecipeError(f"round removes {step.removed}, which are not contiguous in the current model")
        info = fitted.get(str(index))
        if info is not None:
            try:
                fold_cut_map(arch, cut_map_from_tensors(maps, index, info["layer"], info["kind"], info["writers"]))
            except KeyError as exc:
                raise RecipeError(f"the maps file has no tensor {exc} for round {index + 1}") from None
        apply_round(arch, kept, positions[0], len(positions), step.scale)
    for original, info in sorted(refitted.items(), key=lambda item: int(item[0])):  # --comp *recon*: after the cuts, in order
        try:
            fold_cut_map(arch, cut_map_from_tensors(maps, int(original), kept.index(int(original)), info["kind"],
                                                    info["writers"], key=recon_key))
        except KeyError as exc:
            raise RecipeError(f"the maps file has no tensor {exc} for the refit of layer {original}") from None
    return model
