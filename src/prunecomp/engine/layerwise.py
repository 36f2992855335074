"""Decoder layers from where they live: already in memory, or read lazily from safetensors shards.

For a checkpoint that does not fit, the model is built as a skeleton whose parameters sit on the
`meta` device (no memory); the embedding, final norm and LM head are loaded for real, and each
decoder layer is read from its shards with `safetensors.safe_open` only while it runs, with the
compensation folded into it so far, then returned to `meta`.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..arch import ResolvedArch, resolve
from ..compensate import fold_tensors_
from ..errors import ModelLoadError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ModelLoadError):
    pass


class SafetensorsCheckpoint:
    """Tensor name -> shard file of a safetensors checkpoint folder; reads tensors on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_NAME
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / SINGLE_NAME).exists():
            from safetensors import safe_open

            with safe_open(self.folder / SINGLE_NAME, framework="pt") as handle:
                weight_map = {name: SINGLE_NAME for name in handle.keys()}
        else:
            raise CheckpointError(
                f"{self.folder} has no safetensors weights ({INDEX_NAME} or {SINGLE_NAME}); the layer-wise engine "
                "reads safetensors checkpoints; load other formats (e.g. GGUF) into memory with --engine memory"
            )
        self.weight_map: dict[str, str] = weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def read(self, names: list[str], device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        missing = [n for n in names if n not in self.weight_map]
        if missing:
            raise CheckpointError(f"checkpoint {self.folder} lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        tensors = {}
        for file, group in by_file.items():
            with safe_open(self.folder / file, framework="pt", device="cpu") as handle:  # closed (unmapped) per read
                for name in group:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    tensors[name] = tensor.to(device)
        return tensors

    def nbytes(self, names: list[str]) -> int:
        from safetensors import safe_open

        total = 0
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        for file, group in by_file.items():
            with safe_open(self.folder / file, framework="pt", device="cpu") as handle:
                for name in group:
                    piece = handle.get_slice(name)
                    count = 1
                    for dim in piece.get_shape():
                        count *= dim
                    total += count * _DTYPE_BYTES.get(piece.get_dtype(), 4)
        return total


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@contextmanager
def parameters_on_meta():
    """Build modules whose parameters live on `meta` while buffers (rotary frequencies) stay real.

    Parameters are created (uninitialised, so no pages are touched) and moved to meta as they are
    registered, the way accelerate's init_empty_weights works; kept here so the core needs no accelerate.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _set_tensor(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    path, _, leaf = name.rpartition(".")
    module = root.get_submodule(path) if path else root
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


def load_skeleton(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """(model, checkpoint): a causal LM whose decoder layers stay on meta; everything else is loaded.

    `dtype=None` keeps the checkpoint's dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    checkpoint = SafetensorsCheckpoint(folder)
    config = AutoConfig.from_pretrained(folder)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config)
    arch = resolve(model)
    tied = arch.is_tied()
    layer_prefix = arch.spec.layers + "."
    names = [n for n, _ in model.named_parameters() if not n.startswith(layer_prefix)]
    if tied:
        output_name = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is model.get_output_embeddings().weight
                           and not n.startswith(arch.spec.embedding))
        names = [n for n in names if n != output_name]
    for name, tensor in checkpoint.read(names, device, dtype).items():
        _set_tensor(model, name, tensor)
    if tied:
        model.get_output_embeddings().weight = arch.embedding().weight
    model.eval()
    model.prunecomp_checkpoint = checkpoint  # how the engine finds the layers' weights
    return model, checkpoint


class ResidentLayers:
    """Layers of a model held in memory; the loop's own fold already edited their weights."""

    lazy = False

    def __init__(self, arch: ResolvedArch):
        self.arch = arch

    @contextmanager
    def layer(self, index: int):
        yield self.arch.layers()[index]

    def after_round(self, start: int, size: int, scale: float) -> None:
        pass

    def layer_bytes(self) -> int:
        return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in self.arch.layers())


class ShardLayers:
    """Layers read from safetensors shards one at a time, onto `device`, folded like the in-memory model.

    The skeleton's layers (on meta) follow the loop's removals, so `arch.layers()[i]` is still the
    module of current layer i; the scales folded into each original layer are replayed on load, in
    the same order and arithmetic as `fold_scale`, so the weights match the in-memory model's bitwise.
    """

    lazy = True

    def __init__(self, arch: ResolvedArch, checkpoint: SafetensorsCheckpoint, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None):
        self.arch = arch
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.dtype = dtype
        self.kept = list(range(arch.num_layers()))  # original index of every current layer
        self.folded: list[list[float]] = [[] for _ in self.kept]  # scales folded into each original layer's writers
        self.loads = 0

    def _names(self, original: int, module: nn.Module) -> dict[str, str]:
        prefix = f"{self.arch.spec.layers}.{original}."
        return {local: prefix + local for local in module.state_dict(keep_vars=True)}

    @contextmanager
    def layer(self, index: int):
        module = self.arch.layers()[index]
        original = self.kept[index]
        names = self._names(original, module)
        tensors = self.checkpoint.read(list(names.values()), self.device, self.dtype)
        module.load_state_dict({local: tensors[full] for local, full in names.items()}, strict=True, assign=True)
        for p in module.parameters():
            p.requires_grad_(False)
        del tensors
        writers = list({id(w.tensor): w for w in self.arch.writer_tensors(index)}.values())
        for scale in self.folded[original]:  # one fold_scale at a time, as the in-memory model had them
            fold_tensors_(writers, scale)
        self.loads += 1
        try:
            yield module
        finally:
            module.to("meta")

    def after_round(self, start: int, size: int, scale: float) -> None:
        if scale != 1.0:
            for original in self.kept[:start]:
                self.folded[original].append(scale)
        del self.kept[start : start + size]

    def layer_bytes(self) -> int:
        module = self.arch.layers()[0]
        return self.checkpoint.nbytes(list(self._names(self.kept[0], module).values()))


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers that are really allocated (not on meta)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta" and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


# ---------------------------------------------------------------------------- command-line support
def checkpoint_folder(name: str) -> Path | None:
    """The local safetensors folder behind a model name (a folder, or a hub id already downloaded),
    or None when the model is not a safetensors checkpoint (GGUF, pickle-only, not available)."""
    from ..io import resolve_source

    source = resolve_source(name)
    if source.gguf_file:
        return None
    folder = source.local_dir
    if folder is None:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source.path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception:
            return None
    if not ((folder / INDEX_NAME).exists() or (folder / SINGLE_NAME).exists()):
        return None
    return folder


def wants_lazy_load(name: str, engine: str, max_memory: int | None) -> bool:
    """engine layerwise: read layers from disk whenever the model is a safetensors checkpoint;
    engine auto: only when its weights exceed --max-memory."""
    if engine == "memory":
        return False
    folder = checkpoint_folder(name)
    if folder is None:
        return False
    if engine == "layerwise":
        return True
    if max_memory is None:
        return False
    checkpoint = SafetensorsCheckpoint(folder)
    return checkpoint.nbytes(list(checkpoint.weight_map)) > max_memory


def open_layerwise(name: str, dtype: str | None = None, device: str | None = None):
    """(skeleton, tokenizer, source) for a safetensors checkpoint: the layers stay on disk."""
    from transformers import AutoTokenizer

    from ..io import DTYPES, resolve_source

    source = resolve_source(name)
    folder = checkpoint_folder(name)
    if folder is None:
        raise CheckpointError(f"{name!r} is not a safetensors checkpoint; the layer-wise engine reads layers from "
                              "safetensors shards (a GGUF file is dequantised into memory: use --engine memory)")
    model, checkpoint = load_skeleton(folder, device or "cpu", DTYPES[dtype] if dtype else None)
    fingerprint = scan_weights(model, checkpoint, DTYPES[dtype] if dtype else None, where=repr(name))
    parameter = next((p for p in model.parameters() if not p.is_meta), None)
    loaded_dtype = str(parameter.dtype).removeprefix("torch.") if parameter is not None else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer, dataclasses.replace(source, fingerprint=fingerprint, dtype=loaded_dtype)


def scan_weights(model, checkpoint: SafetensorsCheckpoint, dtype: torch.dtype | None, where: str) -> str:
    """One streamed pass over every weight, one tensor in memory at a time.

    Refuses NaN or Inf (naming the tensor), as load_model does, and returns the fingerprint that
    io.weights_fingerprint gives the same model loaded into memory, so recipes replay either way.
    """
    from ..guards import check_finite_tensors
    from ..io import Fingerprint

    fingerprint = Fingerprint()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if tensor.is_meta:  # a decoder layer's weight: still on disk (a tied head is the loaded embedding)
            tensor = checkpoint.read([name], "cpu", dtype)[name]
        check_finite_tensors([(name, tensor)], where)
        fingerprint.add(name, tensor)
    return fingerprint.hexdigest()


def _replayed_layers(arch: ResolvedArch, checkpoint: SafetensorsCheckpoint, recipe) -> ShardLayers:
    """A ShardLayers whose kept layers and folded scales follow the recipe, as apply_recipe would."""
    layers = ShardLayers(arch, checkpoint, "cpu")
    layers.kept = list(range(recipe.num_layers_original))  # the skeleton is already pruned; replay from the start
    layers.folded = [[] for _ in layers.kept]
    for step in recipe.rounds:
        positions = [layers.kept.index(i) for i in step.removed]
        layers.after_round(positions[0], len(positions), step.scale)
    if len(layers.kept) != arch.num_layers():
        raise CheckpointError("the recipe does not match this skeleton's layers")
    return layers


def save_layerwise(model, tokenizer, recipe, out, *, source=None, overwrite: bool = False,
                   params_before: int | None = None, params_after: int | None = None) -> Path:
    """Write a pruned skeleton as a standard sharded safetensors checkpoint, one layer at a time.

    Embedding, final norm and head come from the skeleton (the loop folded them); each kept layer is
    read from the source shards with its folded scales, renumbered, and written to its own shard.
    Written to a hidden sibling folder and renamed into place, like io.save_pruned.
    """
    import os
    import shutil

    from safetensors.torch import save_file

    from ..io import check_output_dir, hidden_sibling, model_card
    from ..locking import release_output_lock
    from ..recipe import RECIPE_FILENAME

    arch = resolve(model)
    layers = _replayed_layers(arch, model.prunecomp_checkpoint, recipe)
    out = check_output_dir(out, source, overwrite)
    try:
        staging = hidden_sibling(out, "tmp")  # named before it exists: an interrupt anywhere knows what to remove
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()  # the normal umask, unlike mkdtemp's 0700
            prefix = arch.spec.layers + "."
            tied_names = set()
            if arch.is_tied():
                output = model.get_output_embeddings().weight
                tied_names = {n for n, p in model.named_parameters(remove_duplicate=False)
                              if p is output and not n.startswith(arch.spec.embedding)}
            rest = {n: t.detach().contiguous() for n, t in model.state_dict().items()
                    if not n.startswith(prefix) and n not in tied_names and t.device.type != "meta"}
            count = arch.num_layers() + 1
            weight_map = {}
            files = [(f"model-00001-of-{count:05d}.safetensors", rest)]
            save_file(rest, str(staging / files[0][0]), metadata={"format": "pt"})
            weight_map |= {n: files[0][0] for n in rest}
            for index in range(arch.num_layers()):
                file = f"model-{index + 2:05d}-of-{count:05d}.safetensors"
                with layers.layer(index) as module:
                    tensors = {f"{prefix}{index}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
                save_file(tensors, str(staging / file), metadata={"format": "pt"})
                weight_map |= {n: file for n in tensors}
                del tensors
            (staging / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
            model.config.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            recipe.save(staging / RECIPE_FILENAME)
            (staging / "README.md").write_text(model_card(recipe, params_before, params_after), encoding="utf-8")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        release_output_lock(out)
    return out
