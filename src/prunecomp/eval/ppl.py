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
from ..calib.sources import load_exact_text
from ..calib.windows import gptq_c4_crops, tokenize_as_official
from ..nll import window_nll

PPL_DATASETS = {"wikitext2": "wikitext2:test", "ptb": "ptb:test", "c4": "c4:validation"}
PAPER_PPL_DATASETS = {"wikitext2": "wikitext2:test", "ptb": "ptb:validation", "c4": "c4:validation"}
DEFAULT_WINDOW_CAP = {"c4": 256}
PROTOCOLS = ("default", "paper")
PAPER_SEQLEN = 2048
PAPER_C4_CROPS = 256


@dataclass(frozen=True)
class PerplexityResult:
    dataset: str
    perplexity: float
    mean_nll: float
    num_tokens: int  # predicted (scored) tokens
    num_windows: int
    seqlen: int
    bos: bool | str
    origin: str
    protocol_name: str = "default"
    substitute_for: str | None = None  # the exact split this text stood in for (paper protocol, offline)

    def to_dict(self) -> dict:
        return asdict(self)

    def protocol(self) -> str:
        bos = self.bos if isinstance(self.bos, str) else f"BOS {'prepended' if self.bos else 'not added'}"
        text = f"{self.protocol_name} protocol: {self.num_windows} x {self.seqlen}-token windows, {self.num_tokens:,} scored tokens, {bos}"
        if self.substitute_for:
            text += f"; SUBSTITUTE: {self.dataset} text stands in for {self.substitute_for}"
        return text


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


def paper_eval_windows(tokenizer, dataset: str, seqlen: int = PAPER_SEQLEN, max_windows: int | None = None,
                       allow_substitute: bool = False):
    """The official code's perplexity windows (see the module docstring)."""
    if dataset not in PAPER_PPL_DATASETS:
        raise ValueError(f"the paper protocol covers {sorted(PAPER_PPL_DATASETS)}, not {dataset!r}")
    source = load_exact_text(PAPER_PPL_DATASETS[dataset], purpose="evaluation", allow_substitute=allow_substitute)
    if dataset == "c4":
        count = PAPER_C4_CROPS if max_windows is None else min(max_windows, PAPER_C4_CROPS)
        # GPTQ draws all 256 crops; a cap keeps the first ones, so capped runs share windows.
        windows = gptq_c4_crops(tokenizer, source.documents, PAPER_C4_CROPS, seqlen, seed=0)[:count]
        return windows, source, "tokenizer's own specials per document"
    stream = tokenize_as_official(tokenizer, "\n\n".join(source.documents))
    windows = consecutive_windows(stream, seqlen, max_windows)
    return windows, source, "tokenizer's own specials, once per stream"


def evaluate_perplexity(
    model,
    tokenizer,
    dataset: str,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    add_bos: bool | None = None,
    progress: bool = False,
    protocol: str = "default",
    allow_substitute: bool = False,
) -> PerplexityResult:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "paper":
        windows, source, bos = paper_eval_windows(tokenizer, dataset, seqlen, max_windows, allow_substitute)
    else:
        windows, source, bos = eval_windows(tokenizer, dataset, seqlen, max_windows, add_bos)
    result = window_nll(model, windows, batch_size, progress, desc=f"ppl {dataset}")
    return PerplexityResult(dataset, result.perplexity, result.mean, result.num_tokens, windows.shape[0], seqlen, bos,
                            source.origin, protocol, source.substitute_for)
