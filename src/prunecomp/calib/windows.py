"""Token windows: tokenise a text source once and cut seqlen windows from it."""

from __future__ import annotations

import torch

from .sources import TextSource


def wants_bos(tokenizer) -> bool:
    """Whether the tokenizer itself would start a sequence with BOS (Gemma: yes; SmolLM2: no)."""
    if tokenizer.bos_token_id is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(probe) > 0 and probe[0] == tokenizer.bos_token_id


def tokenize_stream(tokenizer, source: TextSource) -> torch.Tensor:
    """The source's documents joined by its protocol joiner, tokenised once without specials."""
    ids = tokenizer(source.joined(), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _with_bos(chunks: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    if bos_id is None:
        return chunks
    bos = torch.full((chunks.shape[0], 1), bos_id, dtype=chunks.dtype)
    return torch.cat([bos, chunks], dim=1)


def sample_windows(stream: torch.Tensor, num_windows: int, seqlen: int, seed: int, bos_id: int | None = None) -> torch.Tensor:
    """`num_windows` windows of `seqlen` tokens at seeded random offsets (GPTQ-style calibration).

    With `bos_id`, each window is BOS followed by seqlen - 1 text tokens.
    """
    body = seqlen - (bos_id is not None)
    if body < 1:
        raise ValueError(f"seqlen {seqlen} is too short")
    if stream.numel() <= body:
        raise ValueError(f"the text has {stream.numel()} tokens, fewer than one window of {body}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - body, (num_windows,), generator=generator)
    chunks = torch.stack([stream[s : s + body] for s in starts.tolist()])
    return _with_bos(chunks, bos_id)


def consecutive_windows(stream: torch.Tensor, seqlen: int, max_windows: int | None = None, bos_id: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start of the stream (the standard perplexity protocol).

    The incomplete tail is dropped. With `bos_id`, each window is BOS + seqlen - 1 text tokens.
    """
    body = seqlen - (bos_id is not None)
    count = stream.numel() // body
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"the text has {stream.numel()} tokens, fewer than one window of {body}")
    return _with_bos(stream[: count * body].view(count, body), bos_id)
