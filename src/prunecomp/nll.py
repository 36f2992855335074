"""Token negative log-likelihood over windows: shared by the PPL metric and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .calib.capture import batches, model_device


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
    for batch in tqdm(list(batches(windows, batch_size)), desc=desc, disable=not progress, leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1 + skip_first :]
        logits = logits[:, skip_first:-1]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total += float(nll)
        count += targets.numel()
    return NLLResult(total, count)
