"""Tiny random models and an offline tokenizer for tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 100
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CONFIGS = {
    "llama": lambda n, eps: LlamaConfig(num_hidden_layers=n, rms_norm_eps=eps, **COMMON),
    "mistral": lambda n, eps: MistralConfig(num_hidden_layers=n, rms_norm_eps=eps, sliding_window=None, **COMMON),
    "qwen2": lambda n, eps: Qwen2Config(
        num_hidden_layers=n, rms_norm_eps=eps, use_sliding_window=True, sliding_window=8, max_window_layers=n // 2, **COMMON
    ),
    "qwen3": lambda n, eps: Qwen3Config(num_hidden_layers=n, rms_norm_eps=eps, **COMMON),
    "gemma2": lambda n, eps: Gemma2Config(num_hidden_layers=n, rms_norm_eps=eps, sliding_window=8, **COMMON),
    "gemma3": lambda n, eps: Gemma3TextConfig(
        num_hidden_layers=n, rms_norm_eps=eps, sliding_window=8, sliding_window_pattern=3, **COMMON
    ),
}
ARCHS = tuple(CONFIGS)


def tiny_model(arch: str = "llama", layers: int = 6, tied: bool = True, eps: float = 1e-12, seed: int = 0):
    """A float32 random model whose residual stream has non-trivial magnitude growth."""
    config = CONFIGS[arch](layers, eps)
    config.tie_word_embeddings = tied
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
            elif "norm" in name:  # random affine norms, also in the (1 + w) form
                p.copy_(torch.rand_like(p) * 0.5 + (0.75 if "gemma" not in arch else -0.25))
            else:
                p.normal_(0.0, 0.1)
    if hasattr(model, "tie_weights") and tied:
        model.tie_weights()
    return model.eval()


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
