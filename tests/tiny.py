"""Tiny random models and an offline tokenizer for tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 100
SIZES = dict(vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(
    SIZES, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8
)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)


def _rms(model_type: str, **extra):
    return lambda n, eps: (model_type, dict(COMMON, num_hidden_layers=n, rms_norm_eps=eps, **extra))


def _with(model_type: str, base: dict, **extra):
    return lambda n, eps: (model_type, dict(base, **extra, num_hidden_layers=n))


NEOX = dict(SIZES, hidden_size=32, intermediate_size=64, num_attention_heads=4)

# family -> fn(layers, eps) -> (model_type, config kwargs). Every norm epsilon is also forced to
# `eps` on the modules themselves (some families hard-code it), so float rounding is the only error.
CONFIGS = {
    "llama": _rms("llama"),
    "mistral": _rms("mistral", sliding_window=None),
    "qwen2": lambda n, eps: ("qwen2", dict(COMMON, num_hidden_layers=n, rms_norm_eps=eps, use_sliding_window=True,
                                           sliding_window=8, max_window_layers=n // 2)),
    "qwen3": _rms("qwen3"),
    "gemma2": _rms("gemma2", sliding_window=8),
    "gemma3": _rms("gemma3_text", sliding_window=8, sliding_window_pattern=3),
    "phi3": _rms("phi3"),
    "granite": _rms("granite", embedding_multiplier=3.0, residual_multiplier=0.4, attention_multiplier=0.3,
                    logits_scaling=2.0),
    "cohere": lambda n, eps: ("cohere", dict(COMMON, num_hidden_layers=n, layer_norm_eps=eps, logit_scale=0.5)),
    "smollm3": _rms("smollm3", no_rope_layer_interval=3, use_sliding_window=True, sliding_window=8),
    "glm4": _rms("glm4"),
    "starcoder2": lambda n, eps: ("starcoder2", dict(COMMON, num_hidden_layers=n, norm_epsilon=eps, use_bias=True)),
    "stablelm": lambda n, eps: ("stablelm", dict(COMMON, num_hidden_layers=n, layer_norm_eps=eps)),
    "stablelm_parallel": lambda n, eps: ("stablelm", dict(COMMON, num_hidden_layers=n, layer_norm_eps=eps,
                                                          use_parallel_residual=True)),
    "phi": lambda n, eps: ("phi", dict(NEOX, num_hidden_layers=n, layer_norm_eps=eps)),
    "gpt_neox": lambda n, eps: ("gpt_neox", dict(NEOX, num_hidden_layers=n, layer_norm_eps=eps)),
    "gpt_neox_sequential": lambda n, eps: ("gpt_neox", dict(NEOX, num_hidden_layers=n, layer_norm_eps=eps,
                                                            use_parallel_residual=False)),
    "falcon": lambda n, eps: ("falcon", dict(SIZES, hidden_size=32, num_attention_heads=4, num_kv_heads=2,
                                             num_hidden_layers=n, layer_norm_epsilon=eps, new_decoder_architecture=True,
                                             num_ln_in_parallel_attn=2, bias=True)),
    "falcon_sequential": lambda n, eps: ("falcon", dict(SIZES, hidden_size=32, num_attention_heads=4,
                                                        num_hidden_layers=n, layer_norm_epsilon=eps,
                                                        parallel_attn=False, multi_query=False)),
    "falcon_alibi": lambda n, eps: ("falcon", dict(SIZES, hidden_size=32, num_attention_heads=4, num_hidden_layers=n,
                                                   layer_norm_epsilon=eps, alibi=True, parallel_attn=False,
                                                   multi_query=False, bias=True)),
    "gpt2": lambda n, eps: ("gpt2", dict(vocab_size=VOCAB, n_positions=256, n_embd=32, n_layer=n, n_head=4, n_inner=64,
                                         layer_norm_epsilon=eps, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "opt": lambda n, eps: ("opt", dict(SIZES, hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=n,
                                       word_embed_proj_dim=32)),
    "opt_projected": lambda n, eps: ("opt", dict(SIZES, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                                                 num_hidden_layers=n, word_embed_proj_dim=16)),
    "mixtral": _rms("mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": _rms("qwen2_moe", num_experts=4, shared_expert_intermediate_size=48, mlp_only_layers=[1], **MOE),
    "qwen3_moe": _rms("qwen3_moe", num_experts=4, decoder_sparse_step=2, **MOE),
    "gpt_oss": lambda n, eps: ("gpt_oss", dict(COMMON, num_hidden_layers=n, rms_norm_eps=eps, intermediate_size=32,
                                               num_local_experts=4, num_experts_per_tok=2, sliding_window=8)),
    # refused (not exact): norms after the sublayers, whose inputs are the raw stream
    "olmo2": _rms("olmo2"),
    "opt_post_ln": lambda n, eps: ("opt", dict(SIZES, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                                               num_hidden_layers=n, word_embed_proj_dim=32, do_layer_norm_before=False)),
    # deliberately not in the architecture table: exercises discovery
    "olmo": _rms("olmo"),
    "helium": _rms("helium"),
}
ORIGINAL_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
ARCHS = ORIGINAL_ARCHS
REFUSED_ARCHS = ("olmo2", "opt_post_ln")  # in the table, compensation refused
DISCOVERY_ARCHS = ("olmo", "helium")  # not in the table
EXACT_ARCHS = tuple(a for a in CONFIGS if a not in REFUSED_ARCHS + DISCOVERY_ARCHS)
EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon")


def tiny_config(arch: str, layers: int = 6, eps: float = 1e-12):
    """The config of a tiny `arch` model, or pytest.skip when this transformers lacks the family."""
    model_type, kwargs = CONFIGS[arch](layers, eps)
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (KeyError, ValueError) as exc:  # not in this transformers version
        import pytest

        pytest.skip(f"transformers has no {model_type!r} config here ({exc})")


def _is_norm(name: str, module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()


def tiny_model(
    arch: str = "llama", layers: int = 6, tied: bool = True, eps: float = 1e-12, seed: int = 0, force_eps: bool = True
):
    """A float32 random model whose residual stream has non-trivial magnitude growth.

    force_eps sets every norm's epsilon to `eps` on the modules too (some families hard-code it);
    leave it off for models that are saved and reloaded, which rebuild their norms from the config.
    """
    config = tiny_config(arch, layers, eps)
    config.tie_word_embeddings = tied
    torch.manual_seed(seed)
    return randomize(AutoModelForCausalLM.from_config(config, dtype=torch.float32), eps if force_eps else None, tied)


def randomize(model, eps: float | None, tied: bool):
    """Random weights (norm weights near 1, or near 0 in the (1 + w) form); every norm's eps set to `eps`."""
    offset_form = "gemma" in model.config.model_type  # norms apply (1 + w)
    if eps is not None:
        force_eps(model, eps)
    with torch.no_grad():
        norm_params = set()
        for name, module in model.named_modules():
            if _is_norm(name, module):
                weight = getattr(module, "weight", None)
                if isinstance(weight, torch.Tensor):  # random affine norms, also in the (1 + w) form
                    weight.copy_(torch.rand_like(weight) * 0.5 + (-0.25 if offset_form else 0.75))
                    norm_params.add(id(weight))
        for name, p in model.named_parameters():
            if id(p) in norm_params:
                continue
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
            else:
                p.normal_(0.0, 0.1)
    if hasattr(model, "tie_weights") and tied:
        model.tie_weights()
    return model.eval()


def force_eps(model, eps: float):
    """Every norm's epsilon set to `eps` on the module itself (some families hard-code theirs)."""
    for name, module in model.named_modules():
        if _is_norm(name, module):
            for attribute in EPS_ATTRIBUTES:
                if isinstance(getattr(module, attribute, None), float):
                    setattr(module, attribute, eps)
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII that fits VOCAB."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.\n"
) * 40


def random_windows(num: int = 4, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (num, seqlen), generator=generator)
