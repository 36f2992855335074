"""Each metric on a constructed case with a known answer."""

import pytest
import torch

from prunecomp import PruneConfig, prune
from prunecomp.arch import resolve
from prunecomp.calib.capture import capture_stats
from prunecomp.metrics import METRICS, ScoreContext, UnknownMetric, get_metric
from tiny import random_windows, tiny_model


def silence(model, index):
    """Zero every residual writer of a layer: it then passes its input through unchanged."""
    arch = resolve(model)
    linears, norms = arch.layer_writers(index)
    with torch.no_grad():
        for m in linears:
            m.weight.zero_()
        for n in norms:
            n.weight.fill_(-arch.spec.norm_offset)  # effective weight offset + w = 0
    return model


def context(model, block=1, **kwargs):
    arch = resolve(model)
    windows = random_windows(3, 24)
    stats = capture_stats(arch, windows, (block,))
    return ScoreContext(arch, windows, stats, block_size=block, **kwargs)


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_bi_of_a_silent_layer_is_zero_and_it_goes_first(arch_name):
    model = silence(tiny_model(arch_name, layers=6), 3)
    scores = get_metric("bi").score(context(model))
    assert scores[3] == pytest.approx(0.0, abs=1e-6)
    assert int(torch.argmin(scores)) == 3
    result = prune(model, None, PruneConfig(metric="bi", num_layers=1), random_windows(3, 24))
    assert result.recipe.rounds[0].removed == [3]
    assert result.recipe.rounds[0].scale == pytest.approx(1.0, abs=1e-6)  # a silent layer has no gain


def test_cl_finds_the_silent_block():
    model = tiny_model(layers=8)
    for i in (4, 5, 6):
        silence(model, i)
    scores = get_metric("cl").score(context(model, block=3))
    assert scores.shape == (6,)
    assert int(torch.argmin(scores)) == 4 and scores[4] == pytest.approx(0.0, abs=1e-6)


def test_mag_is_the_l1_norm_of_the_layer_matrices():
    model = tiny_model(layers=4)
    arch = resolve(model)
    with torch.no_grad():
        for p in arch.layers()[2].parameters():
            if p.dim() == 2:
                p.fill_(0.5)
    scores = get_metric("mag").score(context(model))
    layer = arch.layers()[2]
    expected = sum(0.5 * p.numel() for p in layer.parameters() if p.dim() == 2)
    assert scores[2] == pytest.approx(expected)


def test_taylor_is_zero_for_a_zeroed_layer_and_positive_elsewhere():
    model = tiny_model(layers=4)
    arch = resolve(model)
    with torch.no_grad():
        for p in arch.layers()[1].parameters():
            if p.dim() == 2:
                p.zero_()
    scores = get_metric("taylor").score(context(model))
    assert scores[1] == 0.0 and bool((scores[[0, 2, 3]] > 0).all())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_taylor_matches_a_hand_computed_gradient():
    model = tiny_model(layers=2)
    ctx = context(model)
    layer = resolve(model).layers()[0]
    ids = ctx.windows
    model.zero_grad()
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    expected = sum(float((m.weight * m.weight.grad).detach().abs().sum()) for m in layer.modules() if isinstance(m, torch.nn.Linear))
    model.zero_grad()
    assert get_metric("taylor").score(ctx)[0] == pytest.approx(expected, rel=1e-4)


def fit(model, windows, frozen_layer, steps=60):
    """Overfit the tiny model so every working layer matters; the frozen one stays silent."""
    frozen = {id(p) for p in resolve(model).layers()[frozen_layer].parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        logits = model(windows).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model


def test_ppl_prefers_the_silent_layer():
    model = silence(tiny_model(layers=5), 2)
    fit(model, random_windows(3, 24), frozen_layer=2)
    scores = get_metric("ppl").score(context(model))
    assert int(torch.argmin(scores)) == 2
    from prunecomp.nll import window_nll

    ctx = context(model)
    assert scores[2] == pytest.approx(window_nll(model, ctx.windows).mean, rel=1e-5)  # skipping it changes nothing


def test_reverse_and_random():
    model = tiny_model(layers=5)
    assert int(torch.argmin(get_metric("reverse").score(context(model)))) == 4
    a = get_metric("random").score(context(model, seed=1))
    b = get_metric("random").score(context(model, seed=1))
    c = get_metric("random").score(context(model, seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(UnknownMetric, match="bi, cl, taylor"):
        get_metric("nope")
    assert get_metric("Taylor+") is METRICS["taylor"]


def test_mag_divides_out_the_folded_compensation():
    """Folding s before layer j is a reparameterisation of layers < j; their Mag+ must not move."""
    from prunecomp.compensate import fold_scale

    model = tiny_model(layers=5)
    windows = random_windows(3, 24)
    arch = resolve(model)
    before = get_metric("mag").score(ScoreContext(arch, windows, None))
    fold_scale(arch, 3, 1.5)
    naive = get_metric("mag").score(ScoreContext(arch, windows, None))
    aware = get_metric("mag").score(ScoreContext(arch, windows, None, writer_scales=[1.5, 1.5, 1.5, 1.0, 1.0]))
    assert bool((naive[:3] > before[:3] * 1.01).all())  # raw |W| of the folded layers grew
    assert torch.allclose(aware, before, rtol=1e-6)


def test_taylor_is_nearly_unchanged_by_a_fold_without_correction():
    from prunecomp.compensate import fold_scale

    model = tiny_model(layers=5)
    windows = random_windows(3, 24)
    arch = resolve(model)
    before = get_metric("taylor").score(ScoreContext(arch, windows, None))
    fold_scale(arch, 3, 1.5)
    after = get_metric("taylor").score(ScoreContext(arch, windows, None, writer_scales=[1.5, 1.5, 1.5, 1.0, 1.0]))
    # layers before the fold keep their score within ~10% (a 1.5x raw-weight change would be 50%)
    assert torch.allclose(after[:3], before[:3], rtol=0.1)


@pytest.mark.parametrize("family", ["gpt2", "mixtral"])
def test_weight_metrics_cover_conv1d_and_fused_experts(family):
    """Mag+ and Taylor+ score every weight matrix: GPT-2's Conv1D and fused expert tensors too."""
    from prunecomp.arch import resolve
    from prunecomp.metrics import ScoreContext
    from prunecomp.metrics.weights import magnitude, taylor
    from tiny import random_windows, tiny_model

    arch = resolve(tiny_model(family, layers=3))
    expected = [sum(float(p.detach().abs().sum()) for _, p, _ in arch.weight_matrices(i)) for i in range(3)]
    assert magnitude(ScoreContext(arch, None, None)).tolist() == pytest.approx(expected, rel=1e-6)
    scores = taylor(ScoreContext(arch, random_windows(2, 8), None))
    assert bool((scores > 0).all())
