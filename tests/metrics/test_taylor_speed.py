"""Taylor+'s batched, float32-accumulating gradient pass equals a straightforward reference.

The reference recomputes the whole-calibration loss in one graph and takes torch.autograd.grad
of every scored weight at once, with nothing frozen; the metric runs batch by batch, freezes
every unscored parameter and sums per-batch gradients. Both must give the same scores.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunecomp.arch import resolve
from prunecomp.metrics import ScoreContext, get_metric
from tiny import random_windows, tiny_model


def reference_taylor(model: nn.Module, windows: torch.Tensor, norm_weights: bool = False) -> list[float]:
    """sum |W * dL/dW| per layer, L the mean next-token loss over all windows, one autograd call."""
    arch = resolve(model)
    per_layer = []
    for layer in arch.layers():
        weights = [m.weight for m in layer.modules() if isinstance(m, nn.Linear)]
        if norm_weights:
            weights += [m.weight for m in layer.modules()
                        if not isinstance(m, nn.Linear) and isinstance(getattr(m, "weight", None), nn.Parameter)
                        and m.weight.dim() == 1]
        per_layer.append(weights)
    flat = [w for ws in per_layer for w in ws]
    logits = model(input_ids=windows, use_cache=False).logits.float()
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat)))
    return [sum(float((w.detach().float() * grads[id(w)].float()).abs().sum()) for w in ws) for ws in per_layer]


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("norm_weights", [False, True])
def test_taylor_equals_the_reference(arch_name, batch_size, norm_weights):
    model = tiny_model(arch_name, layers=4, eps=1e-6)
    windows = random_windows(5, 20)
    ctx = ScoreContext(resolve(model), windows, None, batch_size=batch_size, norm_weights=norm_weights)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    params_before = [id(p) for p in model.parameters()]

    scores = get_metric("taylor").score(ctx)

    expected = reference_taylor(model, windows, norm_weights)
    assert scores.dtype == torch.float64 and scores.shape == (4,)
    assert scores.tolist() == pytest.approx(expected, rel=1e-5)
    # the model is left as it was: same parameter objects and values, no gradients, flags restored
    assert [id(p) for p in model.parameters()] == params_before
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_half_precision_gradients_are_summed_in_float32():
    """A bfloat16 model: per-batch gradients summed in float32 equal the reference's float32 sum."""
    model = tiny_model("llama", layers=3, eps=1e-6).to(torch.bfloat16)
    windows = random_windows(4, 16)
    arch = resolve(model)
    scores = get_metric("taylor").score(ScoreContext(arch, windows, None, batch_size=1))

    total = windows.shape[0] * (windows.shape[1] - 1)
    weights = [[m.weight for m in layer.modules() if isinstance(m, nn.Linear)] for layer in arch.layers()]
    flat = [w for ws in weights for w in ws]
    sums = {id(w): torch.zeros(w.shape, dtype=torch.float32) for w in flat}
    for row in windows.split(1):
        logits = model(input_ids=row, use_cache=False).logits.float()
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), row[:, 1:].reshape(-1),
                                           reduction="sum") / total
        for w, g in zip(flat, torch.autograd.grad(loss, flat)):
            sums[id(w)] += g.float()
    expected = [sum(float((w.detach().float() * sums[id(w)]).abs().sum()) for w in ws) for ws in weights]
    assert scores.tolist() == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_progress_bar_over_batches(capsys):
    model = tiny_model("llama", layers=2)
    ctx = ScoreContext(resolve(model), random_windows(3, 12), None, batch_size=1, progress=True)
    get_metric("taylor").score(ctx)
    assert "taylor" in capsys.readouterr().err
