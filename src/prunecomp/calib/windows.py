"""Token windows: tokenise a text source once and cut seqlen windows from it."""

from __future__ import annotations

import math
import random

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


# --- The official Prune&Comp protocol's samplers (paper preset) ---------------------------------
# They use Python's `random` exactly as the official scripts do (same calls, same order), so the
# same text and tokenizer give token-for-token the same windows.


def tokenize_as_official(tokenizer, text: str) -> torch.Tensor:
    """Tokenise with the tokenizer's own special tokens, as `tokenizer(text)` does: one BOS at the
    start of the whole stream when the tokenizer adds one (Llama-3, Gemma), none per window."""
    return torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)


def paper_windows(stream: torch.Tensor, num_windows: int, seqlen: int, rng: random.Random,
                  fraction: float = 0.9) -> torch.Tensor:
    """Windows at offsets i = rng.randint(0, int(N * fraction) - seqlen - 1) of the stream, one call
    per window: the official calibration sampler (the last 10% of the stream is never sampled)."""
    high = int(stream.numel() * fraction) - seqlen - 1
    if high < 0:
        raise ValueError(f"the text has {stream.numel()} tokens; {seqlen}-token windows from its first "
                         f"{fraction:.0%} need at least {math.ceil((seqlen + 1) / fraction)}")
    starts = [rng.randint(0, high) for _ in range(num_windows)]
    return torch.stack([stream[s : s + seqlen] for s in starts])


def document_crops(tokenizer, documents: list[str], num_crops: int, seqlen: int, rng: random.Random,
                   crop_end_slack: int = 0) -> torch.Tensor:
    """One random seqlen-token crop from each of `num_crops` distinct random documents that have at
    least seqlen tokens (each tokenised on its own, with the tokenizer's specials).

    The draw order is the official one: a document index per try until a long enough, unused one
    is found, then the crop offset randint(0, n - seqlen - crop_end_slack). Taylor+'s crops use
    slack 0; GPTQ's C4 evaluation crops use slack 1 (and allow a document twice: `distinct=False`).
    """
    return _crops(tokenizer, documents, num_crops, seqlen, rng, crop_end_slack, distinct=True)


def gptq_c4_crops(tokenizer, documents: list[str], num_crops: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """GPTQ's C4 perplexity windows: `num_crops` random crops of random documents with at least
    seqlen tokens (documents may repeat), from random.seed(seed)."""
    return _crops(tokenizer, documents, num_crops, seqlen, random.Random(seed), 1, distinct=False)


def _crops(tokenizer, documents, num_crops, seqlen, rng, slack, distinct) -> torch.Tensor:
    lengths: dict[int, torch.Tensor] = {}

    def tokens(index: int) -> torch.Tensor:
        if index not in lengths:
            lengths[index] = tokenize_as_official(tokenizer, documents[index])
        return lengths[index]

    long_enough = sum(1 for d in documents if len(d) >= seqlen)  # cheap upper bound: a token is >= 1 char
    if long_enough == 0 or (distinct and long_enough < num_crops):
        raise ValueError(f"need {num_crops} documents of at least {seqlen} tokens; only {long_enough} of "
                         f"{len(documents)} are even {seqlen} characters long")
    used: set[int] = set()
    crops = []
    for _ in range(num_crops):
        for _attempt in range(100_000):
            index = rng.randint(0, len(documents) - 1)
            ids = tokens(index)
            if ids.numel() >= seqlen and not (distinct and index in used):
                break
        else:
            raise ValueError(f"could not find {num_crops} documents of at least {seqlen} tokens")
        used.add(index)
        if ids.numel() - seqlen - slack < 0:  # the official loop would crash here too
            raise ValueError(f"document {index} has exactly {seqlen} tokens; no crop offset is possible")
        start = rng.randint(0, ids.numel() - seqlen - slack)
        crops.append(ids[start : start + seqlen])
    return torch.stack(crops)


def shuffled_rows(rows: list[str], seed: int) -> list[str]:
    """`datasets.Dataset.shuffle(seed=seed)` order: numpy's default_rng(seed).permutation."""
    import numpy as np

    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows)).tolist()]


def sleb_windows(tokenizer, rows: list[str], num_rows: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """SLEB's calibration data: the first `num_rows` rows of the shuffled split joined with "\\n\\n",
    tokenised once (specials as the tokenizer adds them), cut into consecutive seqlen windows."""
    stream = tokenize_as_official(tokenizer, "\n\n".join(shuffled_rows(rows, seed)[:num_rows]))
    count = stream.numel() // seqlen
    if count == 0:
        raise ValueError(f"the first {num_rows} shuffled rows have {stream.numel()} tokens, fewer than one {seqlen}-token window")
    return stream[: count * seqlen].view(count, seqlen)
