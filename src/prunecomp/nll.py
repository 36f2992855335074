"""Token negative log-likelihood over windows: shared by the PPL metric and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .calib.capture import batches, model_device
from .progress import progress_bar


@dataclass(frozen=True)
class NLLResult:
    total_nll: float  # summed over scored tokens, in nats
    num_tokens: int

    @property
    def mean(self) -> float:
        return self.total_nll / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean)


@torch.no_grad()
def window_nll(
    model,
    windows: torch.Tensor,
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "nll",
    skip_first: int = 0,
) -> NLLResult:
    """Sum of -log p(x_t | x_<t) over every window, predicting positions 1..T-1 of each.

    Positions before `skip_first` (e.g. 1 to skip the token after an artificial BOS) are not
    scored. Log-softmax is taken in float32 whatever the model dtype.
    """
    device = model_device(model)
    total = 0.0
    count = 0
    for batch in progress_bar(list(batches(windows, batch_size)), desc=desc, enabled=progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1 + skip_first :]
        logits = logits[:, skip_first:-1]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total += float(nll)
        count += targets.numel()
    return NLLResult(total, count)


# ----------------------------------------------------------------------------------------------
# Log-likelihood of continuations, packed: every request sharing a context shares one pass over
# it, and many contexts share one forward. lm-eval's multiple-choice tasks ask for the same
# context with 2 to 4 continuations each, and each request is only ~10 to 60 tokens, so a
# request-per-row forward spends most of its time streaming the weights, not computing.


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum over the continuation's tokens of log p(token | everything before it)
    is_greedy: bool  # every continuation token is the argmax of its position


@dataclass(frozen=True)
class _Segment:
    """One context followed by the continuations that share it (each minus its last token).

    Inside a packed row, the context is causal, and each continuation's tokens see the whole
    context plus their own earlier tokens, at the positions they would have in the plain
    sequence ``context + continuation``.
    """

    context: tuple[int, ...]
    members: tuple[tuple[int, tuple[int, ...]], ...]  # (request index, continuation tokens)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for _, c in self.members)

    @property
    def max_position(self) -> int:
        return len(self.context) + max(len(c) for _, c in self.members) - 2


def shared_context_segments(
    requests: list[tuple[list[int], list[int]]], max_length: int | None = None
) -> list[_Segment]:
    """Group (context, continuation) token requests by context, keeping first-seen order.

    ``context + continuation`` longer than ``max_length + 1`` is cut from the left, as lm-eval
    does, so its (shorter) context is what gets grouped.
    """
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError("every request needs a non-empty context and continuation")
        whole = list(context) + list(continuation)
        if max_length is not None:
            whole = whole[-(max_length + 1) :]
        prefix = tuple(whole[: len(whole) - len(continuation)])
        groups.setdefault(prefix, []).append((index, tuple(continuation)))
    return [_Segment(prefix, tuple(members)) for prefix, members in groups.items()]


def pack_rows(segments: list[_Segment], token_budget: int) -> list[list[_Segment]]:
    """Consecutive segments filled into rows of at most ``token_budget`` tokens (a longer one alone)."""
    rows: list[list[_Segment]] = []
    used = 0
    for segment in segments:
        if rows and used + segment.length <= token_budget:
            rows[-1].append(segment)
            used += segment.length
        else:
            rows.append([segment])
            used = segment.length
    return rows


@dataclass(frozen=True)
class _PackedRow:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    allowed: torch.Tensor  # [T, T] bool: query i may attend key k
    scored: list[tuple[int, list[int], tuple[int, ...]]]  # (request index, row indices of its logits, targets)


def _build_row(segments: list[_Segment]) -> _PackedRow:
    tokens: list[int] = []
    positions: list[int] = []
    group: list[int] = []  # segment number of every token
    branch: list[int] = []  # 0 for a context token, j + 1 for a token of member j's continuation
    scored = []
    for number, segment in enumerate(segments):
        start = len(tokens)
        tokens.extend(segment.context)
        positions.extend(range(len(segment.context)))
        group.extend([number] * len(segment.context))
        branch.extend([0] * len(segment.context))
        last_context = len(tokens) - 1
        for j, (index, continuation) in enumerate(segment.members):
            tail = continuation[:-1]
            first = len(tokens)
            tokens.extend(tail)
            positions.extend(range(len(segment.context), len(segment.context) + len(tail)))
            group.extend([number] * len(tail))
            branch.extend([j + 1] * len(tail))
            scored.append((index, [last_context, *range(first, first + len(tail))], continuation))
        assert len(tokens) - start == segment.length
    g = torch.tensor(group)
    b = torch.tensor(branch)
    n = len(tokens)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same_group = g[:, None] == g[None, :]
    visible_branch = (b[None, :] == 0) | (b[:, None] == b[None, :])
    return _PackedRow(
        torch.tensor([tokens]), torch.tensor([positions]), causal & same_group & visible_branch, scored
    )


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """[1, 1, T, T] mask in the model's dtype: 0 where allowed, the dtype's minimum elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)
    return mask[None, None]


def _row_logits(model, row: _PackedRow, keep: torch.Tensor, device, dtype) -> torch.Tensor:
    """Logits [len(keep), vocab] at row indices `keep`, the LM head applied to those rows only."""
    kwargs = dict(
        input_ids=row.input_ids.to(device),
        position_ids=row.position_ids.to(device),
        attention_mask=_additive_mask(row.allowed, dtype, device),
        use_cache=False,
    )
    try:
        return model(**kwargs, logits_to_keep=keep.to(device)).logits[0]
    except TypeError:  # a model class without `logits_to_keep`
        return model(**kwargs).logits[0, keep.to(device)]


def sliding_window(config) -> int | None:
    """The attention window of a model that has sliding-window layers, else None."""
    config = getattr(config, "text_config", None) or config
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    if getattr(config, "use_sliding_window", True) is False:  # qwen2-style switch
        return None
    return int(window)


@torch.no_grad()
def packed_continuation_scores(
    model,
    requests: list[tuple[list[int], list[int]]],
    token_budget: int = 512,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "log-likelihood",
) -> list[ContinuationScore]:
    """Score ``continuation`` after ``context`` for every request, packing them into few forwards.

    Equal (up to float rounding) to running ``context + continuation[:-1]`` alone through the
    model and summing the log-softmax of the continuation tokens, which is what lm-eval's
    ``HFLM`` does. Requests with the same context share its tokens; segments are packed into
    rows of ``token_budget`` tokens with a block-diagonal attention mask and explicit position
    ids, and logits are computed only where a continuation token is predicted. Needs a model
    that honours a 4-D additive attention mask and ``position_ids`` (Hugging Face decoders with
    rotary or learned absolute positions do); callers should check it once against the plain
    path (see ``prunecomp.eval.harness``).
    """
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    segments = shared_context_segments(requests, max_length)
    window = sliding_window(model.config)
    out: list[ContinuationScore | None] = [None] * len(requests)
    if window is not None:  # one mask serves every layer: a segment reaching past the window runs plainly
        long = [s for s in segments if s.max_position >= window]
        segments = [s for s in segments if s.max_position < window]
        wide = [index for s in long for index, _ in s.members]
        for index, score in zip(wide, plain_continuation_scores(model, [requests[i] for i in wide], max_length)):
            out[index] = score
    rows = pack_rows(segments, token_budget)
    for segments in progress_bar(rows, desc=desc, enabled=progress):
        row = _build_row(segments)
        keep = torch.tensor(sorted({i for _, indices, _ in row.scored for i in indices}))
        where = {int(i): k for k, i in enumerate(keep.tolist())}
        logprobs = F.log_softmax(_row_logits(model, row, keep, device, dtype).float(), dim=-1)
        greedy = logprobs.argmax(dim=-1)
        for index, indices, targets in row.scored:
            at = torch.tensor([where[i] for i in indices], device=logprobs.device)
            target = torch.tensor(targets, device=logprobs.device)
            out[index] = ContinuationScore(
                float(logprobs[at, target].sum()), bool((greedy[at] == target).all())
            )
    missing = [i for i, s in enumerate(out) if s is None]
    if missing:
        raise RuntimeError(f"requests {missing[:5]} were not scored")
    return out  # type: ignore[return-value]


@torch.no_grad()
def plain_continuation_scores(
    model, requests: list[tuple[list[int], list[int]]], max_length: int | None = None
) -> list[ContinuationScore]:
    """The straightforward reference: ``context + continuation[:-1]`` of each request as its own row.

    Rows are right-padded into one batch: in a causal decoder a position never sees the padding
    after it, so every request scores as if it ran alone.
    """
    if not requests:
        return []
    device = model_device(model)
    inputs = []
    for context, continuation in requests:
        whole = list(context) + list(continuation)
        if max_length is not None:
            whole = whole[-(max_length + 1) :]
        inputs.append(whole[:-1])
    width = max(len(x) for x in inputs)
    batch = torch.tensor([x + [0] * (width - len(x)) for x in inputs], device=device)
    logits = model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits
    out = []
    for row, (x, (_, continuation)) in enumerate(zip(inputs, requests)):
        at = torch.arange(len(x) - len(continuation), len(x), device=device)
        logprobs = F.log_softmax(logits[row, at].float(), dim=-1)
        target = torch.tensor(continuation, device=device)
        picked = logprobs[torch.arange(len(continuation), device=device), target]
        out.append(ContinuationScore(float(picked.sum()), bool((logprobs.argmax(dim=-1) == target).all())))
    return out
