"""A spec for model types the table does not know, accepted only if it proves itself on the model.

Discovery finds the decoder layers (a ModuleList of `_no_split_modules` blocks, else the longest
ModuleList of identical blocks), the embedding, learned position embeddings and the final norm,
and classifies every linear-like module and fused 3-D expert parameter of each layer by name as a
residual *reader* or *writer*. Post-sublayer norms are ambiguous by name (Gemma's
post_attention_layernorm writes, Llama's reads), so they are tried as writers in small groups.

A candidate is accepted only if the invariance self-check passes on the real model: fold a power
of two into every writer (exact in every float format), compare logits on a few tokens with the
norm epsilons made negligible, restore the weights bit for bit. Otherwise the error names the modules it could not classify.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from .spec import ArchSpec, ResolvedArch, UnsupportedArchitecture
from .table import keep_sparse_layers_sparse, slice_max_window_layers

WRITER_NAMES = frozenset(
    {"o_proj", "down_proj", "out_proj", "dense", "c_proj", "fc2", "dense_4h_to_h", "w2", "wo", "proj_out", "down_proj_bias"}
)
READER_NAMES = frozenset(
    {
        "q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "gate_up_proj_bias",
        "fc1", "c_fc", "c_attn", "query_key_value", "dense_h_to_4h", "w1", "w3", "wq", "wk", "wv", "wqkv",
        "gate", "router", "shared_expert_gate", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
    }
)  # fmt: skip
SELF_CHECK_SCALE = 2.0  # a power of two: scaling and unscaling are exact in any float format
SELF_CHECK_TOKENS = 12


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def _is_linear_like(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding) and not _is_norm(module)


def _path_of(root: nn.Module, target: nn.Module) -> str | None:
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers: a ModuleList of `_no_split_modules` blocks, else the longest uniform one."""
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            candidates.append((type(module[0]).__name__ in block_names, len(module), name, module))
    if not candidates:
        raise UnsupportedArchitecture(f"{type(model).__name__}: found no ModuleList of decoder layers")
    _, _, name, module = max(candidates, key=lambda c: (c[0], c[1]))
    return name, module


def _outside_layers(base: nn.Module, layers: nn.ModuleList):
    inside = {id(m) for m in layers.modules()}
    return [(name, m) for name, m in base.named_modules() if id(m) not in inside]


def _classify_layer(layer: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """(writer paths, post-norm paths, unclassified names) of one decoder layer."""
    writers, post_norms, unknown = [], [], []
    for name, module in layer.named_modules():
        leaf = name.rpartition(".")[2]
        if _is_norm(module) and leaf.startswith("post_"):
            post_norms.append(name)
        elif _is_linear_like(module):
            if leaf in WRITER_NAMES:
                writers.append(name)
            elif leaf not in READER_NAMES:
                unknown.append(name)
    for name, param in layer.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if param.dim() == 3 or (leaf.endswith("_bias") and param.dim() == 2):  # fused experts
            if leaf in WRITER_NAMES:
                writers.append(name)
            elif leaf not in READER_NAMES:
                unknown.append(name)
    return writers, post_norms, unknown


def _per_layer_keys(config, num_layers: int) -> tuple[str, ...]:
    keys = []
    for key, value in vars(config).items():
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == num_layers and key != "mlp_only_layers":
            keys.append(key)
    return tuple(keys)


def _adjusters(config) -> tuple:
    """The table's config rewrites whose keys this config has (Qwen-style window and MoE counters)."""
    found = []
    if isinstance(getattr(config, "max_window_layers", None), int):
        found.append(slice_max_window_layers)
    if hasattr(config, "mlp_only_layers") and hasattr(config, "decoder_sparse_step"):
        found.append(keep_sparse_layers_sparse)
    return tuple(found)


def candidate_specs(model: nn.Module) -> tuple[list[ArchSpec], list[str]]:
    """Specs worth self-checking, most likely first, and the names nothing could classify."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    layers_path, layers = find_layers(model)
    embedding = model.get_input_embeddings()
    embedding_path = _path_of(model, embedding)
    base_path = layers_path.rpartition(".")[0]
    base = model.get_submodule(base_path) if base_path else model
    outside = _outside_layers(base, layers)
    norms = [name for name, m in outside if _is_norm(m) and name]
    if embedding_path is None or not norms:
        raise UnsupportedArchitecture(f"{model_type!r}: found no input embedding or no final norm outside the layers")
    prefix = f"{base_path}." if base_path else ""
    hidden = embedding.weight.shape[-1]
    positions = tuple(
        f"{prefix}{name}"
        for name, m in outside
        if isinstance(m, nn.Embedding) and m is not embedding and m.weight.shape[-1] == hidden
    )
    writers, post_norms, unknown = [], [], []
    for index, layer in enumerate(layers):
        w, p, u = _classify_layer(layer)
        writers += [x for x in w if x not in writers]
        post_norms += [x for x in p if x not in post_norms]
        unknown += [f"{layers_path}.{index}.{x}" for x in u]
    base_spec = ArchSpec(
        family=f"discovered:{model_type}",
        model_types=(model_type,),
        layers=layers_path,
        embedding=embedding_path,
        final_norm=f"{prefix}{norms[-1]}",
        base_model=base_path,
        input_writers=positions,
        layer_linear_writers=tuple(f"{w}?" for w in writers),
        per_layer_config_keys=_per_layer_keys(model.config, len(layers)),
        config_adjusters=_adjusters(model.config),
        notes="discovered and self-checked at load time",
    )
    candidates = []
    # Pre-norms named pre_* (Gemma's pre_feedforward_layernorm) mean the post_* norms are writers:
    # try those groups first; otherwise the linear writers are the likely answer.
    norms_first = any(name.rpartition(".")[2].startswith("pre_") for name, m in layers[0].named_modules() if _is_norm(m))
    for size in (2, 0, 1, 3) if norms_first else (0, 2, 1, 3):
        for group in itertools.combinations(post_norms, size):
            for offset in (1.0, 0.0) if group and norms_first else (0.0, 1.0) if group else (0.0,):
                linear = () if group else base_spec.layer_linear_writers
                candidates.append(replace(base_spec, layer_linear_writers=linear,
                                          layer_norm_writers=tuple(f"{n}?" for n in group), norm_offset=offset))
    if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding.weight:
        candidates += [replace(c, norm_offset=1.0) for c in candidates if not c.layer_norm_writers]
    return candidates, unknown


def _probe_ids(model: nn.Module) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, SELF_CHECK_TOKENS), generator=generator)
    return ids.to(next(model.parameters()).device)


@torch.no_grad()
def self_check_error(arch: ResolvedArch, ids: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative logit error after folding SELF_CHECK_SCALE into every writer; weights restored exactly.

    Plain writers are restored by halving (doubling and halving are exact in every float format), so
    only the small offset-form and final-norm tensors are copied; a 100k-row embedding is not.
    """
    from ..compensate import fold_targets, fold_tensors_

    scaled, inverse = fold_targets(arch, arch.num_layers())
    plain = [t for t in scaled if t.offset == 0.0]
    copied = [t for t in scaled if t.offset != 0.0] + inverse
    saved = [t.tensor.detach().clone() for t in copied]
    try:
        fold_tensors_(scaled, SELF_CHECK_SCALE)
        fold_tensors_(inverse, 1.0 / SELF_CHECK_SCALE)
        logits = arch.model(input_ids=ids, use_cache=False).logits.float()
    finally:
        fold_tensors_(plain, 1.0 / SELF_CHECK_SCALE)
        for t, original in zip(copied, saved):
            t.tensor.copy_(original)
    return float((logits - reference).norm() / reference.norm().clamp_min(1e-30))


EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon")


@contextmanager
def negligible_norm_eps(model: nn.Module, eps: float = 1e-12):
    """Norm epsilons set to `eps` for the duration: with a real model's eps (1e-5) and small early
    activations, eps alone moves the logits by up to ~1e-3 under a scale of 2, which would blur
    the line between a complete writer list and an incomplete one."""
    changed = []
    for module in model.modules():
        if _is_norm(module):
            for attribute in EPS_ATTRIBUTES:
                value = getattr(module, attribute, None)
                if isinstance(value, float):
                    changed.append((module, attribute, value))
                    setattr(module, attribute, eps)
    try:
        yield
    finally:
        for module, attribute, value in changed:
            setattr(module, attribute, value)


def tolerance(model: nn.Module) -> float:
    return 1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2


@torch.no_grad()
def discover(model: nn.Module) -> ResolvedArch:
    """A self-checked spec for an unknown model type, or UnsupportedArchitecture saying why not."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    candidates, unknown = candidate_specs(model)
    probe = ResolvedArch(candidates[0], model)
    if probe.is_tied() and not any(t.name.endswith("weight") for t in probe.final_norm_tensors()):
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not in the architecture table, and its embeddings are tied while its final "
            f"norm ({candidates[0].final_norm}) has no weight to absorb the inverse scale: no exact fold exists"
        )
    ids = _probe_ids(model)
    was_training = model.training
    model.eval()
    try:
        with negligible_norm_eps(model):
            reference = model(input_ids=ids, use_cache=False).logits.float()
            best = float("inf")
            for spec in candidates:
                arch = ResolvedArch(spec, model)
                try:
                    error = self_check_error(arch, ids, reference)
                except UnsupportedArchitecture:
                    continue
                if error <= tolerance(model):
                    return arch
                best = min(best, error)
    finally:
        model.train(was_training)
    shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
    raise UnsupportedArchitecture(
        f"model_type {model_type!r} is not in the architecture table and discovery failed its invariance self-check "
        f"(best relative logit error {best:.2g} > {tolerance(model):g}); "
        + (f"unclassified modules: {shown}" if unknown else "every module was classified, so some residual path is not scale-invariant")
    )
