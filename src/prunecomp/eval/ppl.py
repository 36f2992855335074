"""Perplexity with the standard protocol.

The split's documents are joined (WikiText-2 and PTB with "\\n\\n", C4 with " " as in GPTQ),
tokenised once without special tokens and cut into non-overlapping seqlen windows from the
start; the incomplete tail is dropped. C4 uses at most the first 256 windows. Perplexity is
exp(mean token NLL) over every predicted token. When the tokenizer itself starts sequences
with BOS (Gemma), each window is BOS + seqlen - 1 text tokens, so every text token in the
window is predicted; otherwise the window's first token has no prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..calib import consecutive_windows, load_text, tokenize_stream, wants_bos
from ..nll import window_nll

PPL_DATASETS = {"wikitext2": "wikitext2:test", "ptb": "ptb:test", "c4": "c4:validation"}
DEFAULT_WINDOW_CAP = {"c4": 256}


@dataclass(frozen=True)
class PerplexityResult:
    dataset: str
    perplexity: float
    mean_nll: float
    num_tokens: int  # predicted (scored) tokens
    num_windows: int
    seqlen: int
    bos: bool
    origin: str

    def to_dict(self) -> dict:
        return asdict(self)

    def protocol(self) -> str:
        return (f"{self.num_windows} x {self.seqlen}-token windows, {self.num_tokens:,} scored tokens, "
                f"BOS {'prepended' if self.bos else 'not added'}")


def eval_windows(tokenizer, dataset: str, seqlen: int = 2048, max_windows: int | None = None, add_bos: bool | None = None):
    """The evaluation windows for a dataset name (wikitext2 | ptb | c4) or a text-source spec."""
    spec = PPL_DATASETS.get(dataset, dataset)
    source = load_text(spec)
    limits = [x for x in (max_windows, DEFAULT_WINDOW_CAP.get(dataset)) if x is not None]
    max_windows = min(limits) if limits else None
    bos = wants_bos(tokenizer) if add_bos is None else add_bos
    windows = consecutive_windows(tokenize_stream(tokenizer, source), seqlen, max_windows,
                                  tokenizer.bos_token_id if bos else None)
    return windows, source, bos


def evaluate_perplexity(
    model,
    tokenizer,
    dataset: str,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    add_bos: bool | None = None,
    progress: bool = False,
) -> PerplexityResult:
    windows, source, bos = eval_windows(tokenizer, dataset, seqlen, max_windows, add_bos)
    result = window_nll(model, windows, batch_size, progress, desc=f"ppl {dataset}")
    return PerplexityResult(dataset, result.perplexity, result.mean, result.num_tokens, windows.shape[0], seqlen, bos, source.origin)
