"""The architecture table: one ArchSpec per family, each proven by tests/arch (full-fold invariance).

Each row was written from the family's modeling file (transformers 5.x and 4.57): what reads the
residual stream (always a scale-invariant norm here, or the row says why not), what writes it, and
which config entries describe individual layers.
"""

from __future__ import annotations

from .spec import ArchSpec

# -- config adjusters: fn(config, kept) with `kept` the current indices that stay --------------


def slice_max_window_layers(config, kept: list[int]) -> None:
    """Qwen2/3: layers with index >= max_window_layers use sliding windows (when enabled).

    Keep the same layers on the same side of the boundary after removal.
    """
    old = getattr(config, "max_window_layers", None)
    if isinstance(old, int):
        config.max_window_layers = sum(1 for idx in kept if idx < old)


def _is_sparse_layer(config, index: int) -> bool:
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", 0)
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return index not in (config.mlp_only_layers or []) and experts > 0 and (index + 1) % step == 0


def keep_sparse_layers_sparse(config, kept: list[int]) -> None:
    """Qwen-MoE: which layers are MoE follows from decoder_sparse_step and mlp_only_layers.

    Both are defined on layer indices, which shift on removal. Rewrite them so every kept layer
    keeps its kind after reload: a step of 1 and an explicit list of the dense layers.
    """
    if not hasattr(config, "mlp_only_layers"):
        return
    sparse = [_is_sparse_layer(config, index) for index in kept]
    config.decoder_sparse_step = 1
    config.mlp_only_layers = [new for new, is_sparse in enumerate(sparse) if not is_sparse]


# -- refusals ---------------------------------------------------------------------------------


def _olmo2_inexact(config) -> str | None:
    return (
        "OLMo-2 normalises sublayer outputs, not inputs: its MLP reads the raw residual stream, "
        "so scaling the stream changes what every later layer computes"
    )


def _opt_inexact(config) -> str | None:
    if getattr(config, "do_layer_norm_before", True):
        return None
    return "this OPT model is post-LN (do_layer_norm_before=False): its norms sit on the residual stream itself"


def _gpt2_unsupported(config) -> str | None:
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return (
            "scale_attn_by_inverse_layer_idx=True divides attention by the layer index, so removing a layer "
            "would change every later layer's attention"
        )
    return None


# -- rows -------------------------------------------------------------------------------------

LLAMA_LIKE = dict(layer_linear_writers=("self_attn.o_proj", "mlp.down_proj"))
GEMMA_LIKE = dict(
    # Gemma-2/3 normalise each sublayer's output before the residual add, so the post-norms
    # (not o_proj/down_proj) are what writes the stream. Their weight is applied as (1 + w).
    layer_linear_writers=(),
    layer_norm_writers=("post_attention_layernorm", "post_feedforward_layernorm"),
    norm_offset=1.0,
    # Measured on Gemma-3-270M (BI, k=3, README): the paper's channel average over-estimates the
    # gain (small channels grow fastest under fixed-RMS post-normed updates, while a few massive
    # channels set the RMS the next norm divides by) and made perplexity worse than no compensation;
    # the token-RMS ratio made it better.
    default_estimator="token_rms",
    notes="sublayer outputs pass through (1 + w) post-norms, which are the writers; `--estimator auto` uses token_rms",
)
QWEN_MOE_EXPERTS = "mlp.down_proj|mlp.experts.down_proj|mlp.experts.*.down_proj"

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), config_adjusters=(slice_max_window_layers,), notes="sliding layers from max_window_layers", **LLAMA_LIKE),
    ArchSpec("qwen3", ("qwen3",), config_adjusters=(slice_max_window_layers,), **LLAMA_LIKE),
    ArchSpec("gemma2", ("gemma2",), **GEMMA_LIKE),
    ArchSpec("gemma3", ("gemma3_text",), **GEMMA_LIKE),
    ArchSpec("phi3", ("phi3",), **LLAMA_LIKE),
    ArchSpec(
        "granite",
        ("granite",),
        notes="embedding_multiplier and residual_multiplier are constants around scaled writers; logits_scaling is after the final norm",
        **LLAMA_LIKE,
    ),
    ArchSpec(
        "cohere",
        ("cohere",),
        notes="parallel attention and MLP read one LayerNorm (weight only); logit_scale is after the final norm",
        **LLAMA_LIKE,
    ),
    ArchSpec(
        "smollm3",
        ("smollm3",),
        per_layer_config_keys=("layer_types", "no_rope_layers"),
        config_adjusters=(slice_max_window_layers,),
        notes="layers without RoPE are listed per layer in no_rope_layers",
        **LLAMA_LIKE,
    ),
    ArchSpec(
        "glm4",
        ("glm4",),
        layer_linear_writers=(),
        layer_norm_writers=("post_self_attn_layernorm", "post_mlp_layernorm"),
        notes="sublayer outputs pass through post-norms (plain weight), which are the writers",
    ),
    ArchSpec(
        "starcoder2",
        ("starcoder2",),
        layer_linear_writers=("self_attn.o_proj", "mlp.c_proj"),
        notes="LayerNorm with bias; biased writers",
    ),
    ArchSpec(
        "stablelm",
        ("stablelm",),
        notes="LayerNorm with bias; sequential or parallel residual (use_parallel_residual)",
        **LLAMA_LIKE,
    ),
    ArchSpec(
        "phi",
        ("phi",),
        final_norm="model.final_layernorm",
        layer_linear_writers=("self_attn.dense", "mlp.fc2"),
        notes="parallel attention and MLP from one LayerNorm; biased writers and LM head",
    ),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        layers="gpt_neox.layers",
        embedding="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        base_model="gpt_neox",
        layer_linear_writers=("attention.dense", "mlp.dense_4h_to_h"),
        notes="parallel residual with two LayerNorms (use_parallel_residual) or sequential",
    ),
    ArchSpec(
        "falcon",
        ("falcon",),
        layers="transformer.h",
        embedding="transformer.word_embeddings",
        final_norm="transformer.ln_f",
        base_model="transformer",
        layer_linear_writers=("self_attention.dense", "mlp.dense_4h_to_h"),
        notes="parallel (one or two LayerNorms) or sequential blocks; ALiBi or RoPE",
    ),
    ArchSpec(
        "gpt2",
        ("gpt2",),
        layers="transformer.h",
        embedding="transformer.wte",
        final_norm="transformer.ln_f",
        base_model="transformer",
        input_writers=("transformer.wpe",),
        layer_linear_writers=("attn.c_proj", "mlp.c_proj"),
        unsupported_reason=_gpt2_unsupported,
        notes="Conv1D writers (weight stored transposed: scaled whole); learned positions wpe also write h_0",
    ),
    ArchSpec(
        "opt",
        ("opt",),
        layers="model.decoder.layers",
        embedding="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        base_model="model.decoder",
        # project_in (when word_embed_proj_dim != hidden_size) is linear without bias, so scaling the
        # token embedding already scales its output; scaling it too would apply s twice.
        input_writers=("model.decoder.embed_positions",),
        layer_linear_writers=("self_attn.out_proj", "fc2"),
        inexact_reason=_opt_inexact,
        notes="learned positions also write h_0; pre-LN only (OPT-350m's post-LN is refused)",
    ),
    ArchSpec(
        "mixtral",
        ("mixtral",),
        layer_linear_writers=("self_attn.o_proj", "mlp.experts.down_proj|block_sparse_moe.experts.*.w2"),
        notes="MoE: every expert's down projection (fused 3-D parameter in 5.x, per-expert w2 in 4.x)",
    ),
    ArchSpec(
        "qwen2_moe",
        ("qwen2_moe",),
        layer_linear_writers=("self_attn.o_proj", QWEN_MOE_EXPERTS, "mlp.shared_expert.down_proj?"),
        config_adjusters=(slice_max_window_layers, keep_sparse_layers_sparse),
        notes="MoE with a gated shared expert; dense layers from mlp_only_layers/decoder_sparse_step",
    ),
    ArchSpec(
        "qwen3_moe",
        ("qwen3_moe",),
        layer_linear_writers=("self_attn.o_proj", QWEN_MOE_EXPERTS),
        config_adjusters=(slice_max_window_layers, keep_sparse_layers_sparse),
        notes="MoE; dense layers from mlp_only_layers/decoder_sparse_step",
    ),
    ArchSpec(
        "gpt_oss",
        ("gpt_oss",),
        layer_linear_writers=("self_attn.o_proj", "mlp.experts.down_proj", "mlp.experts.down_proj_bias"),
        notes="MoE with biased fused experts; attention sinks are logits, untouched by the stream's scale",
    ),
    ArchSpec(
        "olmo2",
        ("olmo2",),
        layer_norm_writers=("post_attention_layernorm", "post_feedforward_layernorm"),
        layer_linear_writers=(),
        inexact_reason=_olmo2_inexact,
        notes="refused: norms after the sublayers, whose inputs are the raw stream",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in SPECS for t in spec.model_types)


def spec_for(model_type: str) -> ArchSpec | None:
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    return None
