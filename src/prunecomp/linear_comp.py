"""Fused linear compensation: a calibrated map at each cut, folded exactly into existing weights.

Prune&Comp multiplies every residual writer before a cut by one scalar s. Here the last kept
layer before the cut (current index j - 1 for a cut of layers j..j+n-1) also gets a map on what
its writers add to the stream, fitted so that the stream entering the next kept layer matches
what it saw before the cut:

    s·h_j + Σ_w D_w (s·x_w)  ≈  h_{j+n}          (x_w: output of writer w of layer j - 1)

i.e. the map regresses the removed span's residual delta (h_{j+n} - s·h_j) on the writer outputs.
Writing each writer's map as (I + D_w) and shrinking D_w towards zero is ridge regression
*towards the identity*: with no evidence the writer keeps doing what it did.

- Llama-style writers are linear (o_proj, down_proj): D_w is a full d x d matrix and
  W <- (I + D_w) W, b <- (I + D_w) b is exact.
- Gemma-style writers are post-norms whose output is (offset + w) * x_hat: only a per-channel
  diagonal folds there, (offset + w) <- (1 + d_w) * (offset + w).

The fit is float64 least squares on the calibration windows, with the ridge strength picked on
held-out calibration windows (odd windows) and the map refitted on all of them. The objective is
either plain L2 on the stream (`l2`), L2 relative to each token's target norm (`rel`: what the next
RMSNorm sees, so massive-activation tokens do not dominate) or the relative fit refined on
ReplaceMe's cosine distance (`cos`). Fitting costs one extra calibration pass per cut, cut short
at the next kept layer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .arch import ResolvedArch, resolve_writer_path
from .calib.capture import batches, model_device
from .compat import layer_input_hidden, layer_output_hidden

OBJECTIVES = ("l2", "rel", "cos")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 100.0)  # relative to mean Gram diagonal


class LinearCompError(ValueError):
    pass


@dataclass(frozen=True)
class CompMethod:
    """How a cut is compensated.

    scalar: fold the paper's magnitude scale before the cut.
    linear: also fit and fold a map into the last kept layer's writers.
    recon: instead, once the layers are chosen, refit every kept layer from the first cut on to
    the dense model's stream (prunecomp.recon); the loop itself then uses only the scalar.
    objective: l2 | rel | cos (see the module docstring).
    writers: which linear writers get a map ("all", or "last" = only the last one, down_proj:
    ReplaceMe's choice). Norm writers (Gemma) always all get a diagonal.
    """

    scalar: bool = True
    linear: bool = False
    # after the loop, refit every kept layer from the first cut on to the dense stream (prunecomp.recon)
    recon: bool = False
    objective: str = "rel"
    writers: str = "all"
    ridge_grid: tuple[float, ...] = RIDGE_GRID
    skip_first_tokens: int = 1  # the first position is an attention sink with outlier activations
    cos_steps: int = 30

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise LinearCompError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.writers not in ("all", "last"):
            raise LinearCompError("writers must be 'all' or 'last'")
        if self.linear and self.recon:
            raise LinearCompError("choose either per-cut maps (linear) or the refit to the dense stream (recon)")

    @property
    def fits_maps(self) -> bool:
        return self.linear or self.recon

    @property
    def name(self) -> str:
        if not self.fits_maps:
            return "scalar" if self.scalar else "none"
        suffix = "" if self.objective == "l2" else f"-{self.objective}"
        suffix += "" if self.writers == "all" else "-down"
        return ("scalar+" if self.scalar else "") + ("recon" if self.recon else "linear") + suffix


def parse_comp(name: str) -> CompMethod:
    """'none' | 'scalar' | '[scalar+](linear|recon)[-rel|-cos][-down]' -> CompMethod."""
    text = name.strip().lower()
    if text in ("none", "scalar"):
        return CompMethod(scalar=text == "scalar")
    scalar = text.startswith("scalar+")
    rest = text.removeprefix("scalar+")
    parts = rest.split("-")
    if parts[0] not in ("linear", "recon") or any(p not in ("l2", "rel", "cos", "down") for p in parts[1:]):
        raise LinearCompError(f"unknown compensation {name!r}; e.g. none, scalar, linear, scalar+linear-rel, "
                              "linear-cos-down, scalar+recon")
    objective = next((p for p in parts[1:] if p in OBJECTIVES), "l2")
    return CompMethod(scalar=scalar, linear=parts[0] == "linear", recon=parts[0] == "recon", objective=objective,
                      writers="last" if "down" in parts else "all")


@dataclass
class CutMap:
    """The map folded into the writers of current layer `layer` (the last kept before a cut).

    deltas[i] is D for writer i of `writer_names`: [d, d] for a linear writer, [d] for a norm
    writer. float64; the fold computes (I + D) W in float64 and casts to the parameter dtype.
    """

    layer: int
    kind: str  # "matrix" | "diagonal"
    writer_names: list[str]
    deltas: list[torch.Tensor]
    ridge: float  # relative ridge strength chosen on held-out windows (inf: zero map)
    holdout_gain: float  # held-out objective with the map / without it (< 1 is better)
    info: dict = field(default_factory=dict)

    def num_values(self) -> int:
        return sum(d.numel() for d in self.deltas)

    def describe(self) -> dict:
        """What a recipe records about the map (the values themselves go to MAPS_FILENAME)."""
        return {"layer": self.layer, "kind": self.kind, "writers": list(self.writer_names), "values": self.num_values(),
                "ridge": self.ridge, "holdout_gain": self.holdout_gain}


# ---------------------------------------------------------------------------------------------
# capture


class _Stop(Exception):
    """Ends a calibration pass once the target boundary has been seen."""


@dataclass
class CutCapture:
    """Calibration activations around one cut, flattened over tokens, float32.

    writers: [N, k, d] outputs of the k map-able writers of layer start - 1.
    base: [N, d] the stream entering the first removed layer (h_start).
    target: [N, d] the stream entering the next kept layer (h_{start+size}), or the last layer's
    output when the cut reaches the end.
    window: [N] which calibration window each token came from (for the held-out split).
    """

    writers: torch.Tensor
    base: torch.Tensor
    target: torch.Tensor
    window: torch.Tensor
    writer_names: list[str]
    kind: str


def _named_writers(arch: ResolvedArch, layer: int) -> tuple[str, dict[str, nn.Module]]:
    """("diagonal" | "matrix", {name: module}) of the writers of `layer` a map can be folded into.

    Only plain writer modules qualify: a norm (a diagonal folds into its weight) or a Linear (a
    matrix folds into weight and bias). Fused expert tensors, Conv1D and the like are refused.
    """
    module = arch.layers()[layer]
    kind, paths = ("diagonal", arch.spec.layer_norm_writers) if arch.spec.layer_norm_writers else (
        "matrix", arch.spec.layer_linear_writers)
    named = {name: obj for path in paths for name, obj in resolve_writer_path(module, path)}
    plain = all(isinstance(obj, nn.Linear) for obj in named.values()) if kind == "matrix" else all(
        isinstance(obj, nn.Module) for obj in named.values())
    if not named or not plain:
        raise LinearCompError(f"{arch.spec.family}: the writers of layer {layer} ({', '.join(named) or 'none'}) are not "
                              "plain Linear modules or norms, so a fitted map cannot be folded there; use --comp scalar")
    return kind, named


def map_writers(arch: ResolvedArch, layer: int, method: CompMethod) -> tuple[str, list[nn.Module], list[str]]:
    """(kind, modules, names) of the writers of `layer` that can absorb a map."""
    kind, named = _named_writers(arch, layer)
    names, modules = list(named), list(named.values())
    if kind == "matrix" and method.writers == "last":
        return kind, modules[-1:], names[-1:]
    return kind, modules, names


@contextmanager
def _hooks(handles):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_cut(arch: ResolvedArch, windows: torch.Tensor, start: int, size: int, method: CompMethod,
                batch_size: int = 1) -> CutCapture:
    """One calibration pass (stopped at the next kept layer) gathering what the fit needs."""
    if start < 1:
        raise LinearCompError("a cut at layer 0 has no earlier layer to absorb a map")
    layers = arch.layers()
    stop = start + size
    kind, modules, names = map_writers(arch, start - 1, method)
    seen: dict[str, torch.Tensor] = {}
    out = {"writers": [], "base": [], "target": [], "window": []}

    def keep_writer(i):
        return lambda module, args, output: seen.__setitem__(f"w{i}", output.detach().float())

    def flat(t):
        return t[:, method.skip_first_tokens:].reshape(-1, t.shape[-1]).cpu()

    def finish(hidden):
        b = seen["base"].shape[0]
        out["writers"].append(torch.stack([flat(seen[f"w{i}"]) for i in range(len(modules))], dim=1))
        out["base"].append(flat(seen["base"]))
        out["target"].append(flat(hidden.detach().float()))
        tokens_per_window = seen["base"].shape[1] - method.skip_first_tokens
        out["window"].append((seen["first_window"] + torch.arange(b)).repeat_interleave(tokens_per_window))
        raise _Stop

    handles = [m.register_forward_hook(keep_writer(i)) for i, m in enumerate(modules)]
    handles.append(layers[start].register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("base", layer_input_hidden(args, kwargs).detach().float()),
        with_kwargs=True))
    if stop < len(layers):
        handles.append(layers[stop].register_forward_pre_hook(
            lambda m, args, kwargs: finish(layer_input_hidden(args, kwargs)), with_kwargs=True))
    else:
        handles.append(layers[-1].register_forward_hook(lambda m, args, output: finish(layer_output_hidden(output))))
    base_model, device = arch.base_model(), model_device(arch.model)
    with _hooks(handles):
        first = 0
        for batch in batches(windows, batch_size):
            seen.clear()
            seen["first_window"] = first
            try:
                base_model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
            first += batch.shape[0]
    return CutCapture(*(torch.cat(out[k]) for k in ("writers", "base", "target", "window")), names, kind)


# ---------------------------------------------------------------------------------------------
# fitting (pure, float64)


def _token_weights(target: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-token weights: 1 for l2; 1 / mean-square of the target for rel and cos, so each token's
    error counts relative to the stream the next RMSNorm divides by."""
    if objective == "l2":
        return torch.ones(target.shape[0], dtype=torch.float64)
    return 1.0 / target.double().pow(2).mean(dim=1).clamp_min(1e-30)


def _design(capture: CutCapture) -> torch.Tensor:
    """[N, k*d] for matrix maps (all writers' outputs side by side)."""
    return capture.writers.reshape(capture.writers.shape[0], -1)


def _matrix_grams(x, r, w):
    xw = x.double() * w[:, None]
    return xw.T @ x.double(), xw.T @ r.double(), float((r.double().pow(2).sum(1) * w).sum())


def _matrix_solutions(gram, cross, alphas):
    """Ridge solutions B^T = (G + a·mean(diag G)·I)^-1 C for each relative alpha, via one eigh."""
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0)
    rotated = evecs.T @ cross
    scale = float(torch.diagonal(gram).mean().clamp_min(1e-30))
    for alpha in alphas:
        yield alpha, evecs @ (rotated / (evals + alpha * scale)[:, None])


def _matrix_error(bt, gram, cross, rr):
    """Weighted sum of squared residuals ||R - X B^T||^2 from Gram matrices."""
    return rr - 2 * float((bt * cross).sum()) + float((bt * (gram @ bt)).sum())


def _diag_grams(x, r, w):
    """Per-channel Grams for diagonal maps: x [N, k, d], r [N, d] -> G [d, k, k], C [d, k], rr."""
    x, r = x.double(), r.double()
    xw = x * w[:, None, None]
    gram = torch.einsum("nkd,nld->dkl", xw, x)
    cross = torch.einsum("nkd,nd->dk", xw, r)
    return gram, cross, float((r.pow(2).sum(1) * w).sum())


def _diag_solutions(gram, cross, alphas):
    k = gram.shape[-1]
    scale = torch.diagonal(gram, dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)  # per channel
    eye = torch.eye(k, dtype=gram.dtype)
    for alpha in alphas:
        yield alpha, torch.linalg.solve(gram + alpha * scale[:, None, None] * eye, cross.unsqueeze(-1)).squeeze(-1)


def _diag_error(coef, gram, cross, rr):
    return rr - 2 * float((coef * cross).sum()) + float(torch.einsum("dk,dkl,dl->", coef, gram, coef))


def _split(capture: CutCapture):
    held = capture.window % 2 == 1
    if not bool(held.any()) or bool(held.all()):
        raise LinearCompError("the held-out ridge choice needs at least two calibration windows")
    return ~held, held


def fit_cut(capture: CutCapture, scale: float, method: CompMethod, layer: int) -> CutMap:
    """Fit the map of one cut; `scale` is the scalar folded before the cut (1.0 without it).

    The stream entering the next kept layer becomes scale·h_start + Σ D_w (scale·x_w); the fit
    minimises the chosen objective against h_{start+size}, with the ridge chosen on odd windows.
    """
    x = capture.writers * scale
    base = capture.base.double() * scale
    residual = capture.target.double() - base
    weights = _token_weights(capture.target, method.objective)
    fit_rows, held_rows = _split(capture)
    if capture.kind == "matrix":
        design = _design(capture) * scale
        grams, solutions, error = _matrix_grams, _matrix_solutions, _matrix_error
    else:
        design = x
        grams, solutions, error = _diag_grams, _diag_solutions, _diag_error
    g_fit, c_fit, _ = grams(design[fit_rows], residual[fit_rows], weights[fit_rows])
    g_held, c_held, rr_held = grams(design[held_rows], residual[held_rows], weights[held_rows])
    scores = {alpha: error(sol, g_held, c_held, rr_held) for alpha, sol in solutions(g_fit, c_fit, method.ridge_grid)}
    alpha = min(scores, key=scores.get)
    gain = scores[alpha] / rr_held if rr_held > 0 else 1.0
    info = {"holdout_by_ridge": {repr(a): s / rr_held for a, s in scores.items()}} if rr_held > 0 else {}
    d = capture.base.shape[1]
    k = capture.writers.shape[1]
    if gain >= 1.0:  # no ridge strength beats leaving the writers alone
        deltas = [torch.zeros(d, d) if capture.kind == "matrix" else torch.zeros(d) for _ in range(k)]
        return CutMap(layer, capture.kind, capture.writer_names, [t.double() for t in deltas], math.inf, 1.0, info)
    g_all, c_all, _ = grams(design, residual, weights)
    solution = next(sol for _, sol in solutions(g_all, c_all, (alpha,)))
    if method.objective == "cos":
        solution = _refine_cosine(solution, design, base, capture.target.double(), capture.kind, alpha, g_all, method.cos_steps)
        info["cos_refined"] = True
    if capture.kind == "matrix":
        b = solution.T  # [d, k*d]
        deltas = [b[:, i * d : (i + 1) * d].contiguous() for i in range(k)]
    else:
        deltas = [solution[:, i].contiguous() for i in range(k)]
    return CutMap(layer, capture.kind, capture.writer_names, deltas, alpha, gain, info)


def _refine_cosine(solution, design, base, target, kind, alpha, gram, steps):
    """A few L-BFGS steps on mean(1 - cos(base + map(x), target)) plus the same ridge, from the
    relative least-squares solution (float32 for speed; the result is stored in float64).

    For small errors 1 - cos ~ |relative error|^2 / 2, so the relative LS objective is about
    2·d·N times the mean cosine distance: the ridge is divided by that to keep its strength.
    """
    n, d = target.shape
    design32, base32, target32 = design.float(), base.float(), target.float()
    param = solution.float().clone().requires_grad_(True)
    if kind == "matrix":
        penalty = torch.full_like(param, alpha * float(torch.diagonal(gram).mean()))
        predict = lambda p: design32 @ p  # noqa: E731
    else:
        per_channel = torch.diagonal(gram, dim1=1, dim2=2).mean(dim=1).float()
        penalty = (alpha * per_channel)[:, None].expand_as(param).clone()
        predict = lambda p: (design32 * p.T.unsqueeze(0)).sum(1)  # noqa: E731
    penalty = penalty / (2 * d * n)
    optimizer = torch.optim.LBFGS([param], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        with torch.enable_grad():
            loss = (1 - F.cosine_similarity(base32 + predict(param), target32, dim=1)).mean()
            loss = loss + (penalty * param.pow(2)).sum()
            loss.backward()
        return loss

    optimizer.step(closure)
    return param.detach().double()


# ---------------------------------------------------------------------------------------------
# folding (exact)


@torch.no_grad()
def fold_cut_map(arch: ResolvedArch, cut: CutMap) -> None:
    """Fold (I + D) into the writers of current layer `cut.layer`, in float64, in place."""
    _, named = _named_writers(arch, cut.layer)
    offset = arch.spec.norm_offset
    for name, delta in zip(cut.writer_names, cut.deltas):
        module = named[name]
        if cut.kind == "matrix":
            _fold_matrix_(module, delta)
        else:
            _fold_diagonal_(module, delta, offset)


def _fold_matrix_(linear: nn.Module, delta: torch.Tensor) -> None:
    weight = linear.weight  # [out = d, in]
    mapped = weight.double() + delta.double().to(weight.device) @ weight.double()
    weight.copy_(mapped.to(weight.dtype))
    if getattr(linear, "bias", None) is not None:
        bias = linear.bias
        bias.copy_((bias.double() + delta.double().to(bias.device) @ bias.double()).to(bias.dtype))


def _fold_diagonal_(norm: nn.Module, delta: torch.Tensor, offset: float) -> None:
    factor = 1.0 + delta.double().to(norm.weight.device)
    weight = norm.weight
    weight.copy_(((weight.double() + offset) * factor - offset).to(weight.dtype))
    if isinstance(getattr(norm, "bias", None), torch.Tensor):
        norm.bias.copy_((norm.bias.double() * factor).to(norm.bias.dtype))


# ---------------------------------------------------------------------------------------------
# maps on disk (so a replay is exact)

MAPS_FILENAME = "prunecomp_maps.safetensors"


def map_key(round_index: int, writer: str) -> str:
    return f"round{round_index}.{writer}"


def recon_key(original_layer: int, writer: str) -> str:
    return f"recon{original_layer}.{writer}"


def save_maps(maps: dict[int, CutMap], path: str | Path, recon: dict[int, CutMap] | None = None) -> None:
    """Write every round's deltas (float64) to one safetensors file; keys round{i}.{writer}, and
    recon{original layer}.{writer} for the maps of --comp *recon*."""
    from safetensors.torch import save_file

    tensors = {map_key(i, name): d.contiguous() for i, cut in maps.items() for name, d in zip(cut.writer_names, cut.deltas)}
    tensors |= {recon_key(o, name): d.contiguous() for o, cut in (recon or {}).items()
                for name, d in zip(cut.writer_names, cut.deltas)}
    save_file(tensors, str(path), metadata={"format": "prunecomp-linear-comp-v1"})


def load_maps(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def cut_map_from_tensors(tensors: dict[str, torch.Tensor], round_index: int, layer: int, kind: str,
                         writer_names: list[str], key=map_key) -> CutMap:
    """The CutMap of round `round_index` (or, with key=recon_key, of original layer `round_index`)."""
    deltas = [tensors[key(round_index, name)] for name in writer_names]
    return CutMap(layer, kind, list(writer_names), deltas, math.nan, math.nan)


# ---------------------------------------------------------------------------------------------
# the pruning loop with a compensation method (iterative; the library loop calls the same pieces)


@dataclass
class CompRound:
    removed: list[int]  # original indices
    start: int  # current index of the first removed layer
    scale: float
    map: CutMap | None
    candidates: list[int]
    scores: list[float | None]

    def to_dict(self) -> dict:
        data = {"removed": self.removed, "start": self.start, "scale": self.scale,
                "candidates": self.candidates, "scores": self.scores}
        if self.map is not None:
            data["map"] = self.map.describe() | self.map.info
        return data


@dataclass
class CompPruneResult:
    model: nn.Module
    method: CompMethod
    rounds: list[CompRound]
    seconds: float

    @property
    def removed_layers(self) -> list[int]:
        return sorted(i for r in self.rounds for i in r.removed)

    def maps(self) -> dict[int, CutMap]:
        return {i: r.map for i, r in enumerate(self.rounds) if r.map is not None}


def cut_scale(arch: ResolvedArch, stats, start: int, size: int, method: CompMethod, estimator: str) -> float:
    """The paper's scalar for the cut (1.0 without it, or when the cut reaches the last layer)."""
    from .compensate import block_scale

    if not method.scalar or start + size == arch.num_layers():
        return 1.0
    return block_scale(stats, start, start + size, estimator)


def compensate_cut(arch: ResolvedArch, windows: torch.Tensor, stats, start: int, size: int, method: CompMethod,
                   estimator: str, batch_size: int = 1) -> tuple[float, CutMap | None]:
    """Estimate the scale and fit the map for removing current layers start..start+size-1.

    Nothing is folded; `apply_comp_round` does that. A cut at layer 0 gets no map.
    """
    scale = cut_scale(arch, stats, start, size, method, estimator)
    return scale, fit_round(arch, windows, start, size, scale, method, batch_size)


def fit_round(arch: ResolvedArch, windows: torch.Tensor, start: int, size: int, scale: float, method: CompMethod,
              batch_size: int = 1) -> CutMap | None:
    """The map for removing current layers start..start+size-1 after folding `scale` before them
    (None when the method has no linear part, or the cut is at layer 0 with no earlier layer)."""
    if not method.linear or start == 0:
        return None
    return fit_cut(capture_cut(arch, windows, start, size, method, batch_size), scale, method, start - 1)


def apply_comp_round(arch: ResolvedArch, kept: list[int], start: int, size: int, scale: float,
                     cut: CutMap | None) -> None:
    """Fold the map (if any) into layer start - 1, then the library's scale fold and removal.

    The two folds commute (the scale multiplies the same writers), and replays run exactly this.
    """
    from .prune import apply_round

    if cut is not None:
        fold_cut_map(arch, cut)
    apply_round(arch, kept, start, size, scale)


def _mask(scores: torch.Tensor, num_layers: int, barrier: tuple[int, int]) -> torch.Tensor:
    first, last = barrier
    masked = scores.clone().double()
    for i in range(masked.numel()):
        if i < first or i + 1 > num_layers - last:
            masked[i] = math.inf
    return masked


@torch.no_grad()
def calibration_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> float:
    from .nll import window_nll

    return window_nll(model, windows, batch_size).mean


def compensated_choice(model: nn.Module, windows: torch.Tensor, masked: torch.Tensor, method: CompMethod,
                       scale_for, top: int, batch_size: int = 1) -> tuple[int, dict[int, float]]:
    """`--select compensated`: among the metric's `top` best candidates, the one whose removal
    *with its compensation* leaves the lowest calibration loss (one fit pass and one loss pass
    per candidate, on a copy of the model). `scale_for(start)` gives the scalar of that cut."""
    import copy

    from .arch import resolve

    order = [int(i) for i in torch.argsort(masked, stable=True)[:top] if math.isfinite(float(masked[i]))]
    losses = {}
    for start in order:
        trial = copy.deepcopy(model)
        arch = resolve(trial)
        scale = scale_for(start)
        cut = fit_round(arch, windows, start, 1, scale, method, batch_size)
        apply_comp_round(arch, list(range(arch.num_layers())), start, 1, scale, cut)
        losses[start] = calibration_loss(trial, windows, batch_size)
        del trial
    return min(losses, key=losses.get), losses


def prune_with_comp(model: nn.Module, config, windows: torch.Tensor, method: CompMethod, select: str = "metric",
                    select_top: int = 6, progress: bool = False) -> CompPruneResult:
    """Iterative pruning (the library's loop) with `method` as the compensation of each cut.

    config: a PruneConfig (metric, num_layers, barrier, estimator, batch_size). select: "metric"
    (the lowest score) or "compensated" (see `compensated_choice`).
    """
    import time

    from .arch import resolve
    from .calib.capture import capture_stats
    from .compensate import AUTO
    from .metrics import ScoreContext, get_metric

    started = time.perf_counter()
    arch = resolve(model)
    metric = get_metric(config.metric)
    estimator = arch.spec.default_estimator if config.estimator == AUTO else config.estimator
    kept = list(range(arch.num_layers()))
    writer_scales = [1.0] * len(kept)
    rounds: list[CompRound] = []
    for round_index in range(config.num_layers):
        stats = capture_stats(arch, windows, (1,), config.batch_size, progress, desc=f"round {round_index + 1}: stats")
        ctx = ScoreContext(arch, windows, stats, 1, config.batch_size, config.seed, round_index, progress, writer_scales)
        scores = metric.score(ctx).double().cpu()
        masked = _mask(scores, arch.num_layers(), config.barrier())
        if select == "compensated":
            start, _ = compensated_choice(model, windows, masked, method,
                                          lambda i: cut_scale(arch, stats, i, 1, method, estimator), select_top,
                                          config.batch_size)
        else:
            start = int(torch.argmin(masked))
        scale, cut = compensate_cut(arch, windows, stats, start, 1, method, estimator, config.batch_size)
        rounds.append(CompRound([kept[start]], start, scale, cut, list(kept),
                                [None if math.isinf(m) else float(s) for s, m in zip(scores.tolist(), masked.tolist())]))
        apply_comp_round(arch, kept, start, 1, scale, cut)
        writer_scales = [w * scale for w in writer_scales[:start]] + writer_scales[start + 1 :]
    return CompPruneResult(model, method, rounds, time.perf_counter() - started)


def replay_with_comp(model: nn.Module, rounds: list[dict], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Replay recorded rounds (CompRound.to_dict) and saved maps on a fresh copy of the source model."""
    from .arch import resolve

    arch = resolve(model)
    kept = list(range(arch.num_layers()))
    for index, step in enumerate(rounds):
        start = kept.index(step["removed"][0])
        info = step.get("map")
        cut = None if info is None else cut_map_from_tensors(tensors, index, info["layer"], info["kind"], info["writers"])
        apply_comp_round(arch, kept, start, len(step["removed"]), step["scale"], cut)
    return model
