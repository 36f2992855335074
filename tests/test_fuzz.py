"""Property tests over random tiny configs of every exactly-folding family (tiny.EXACT_ARCHS).

For each drawn config (layer count, tied or untied embeddings, a random `layer_types` pattern where
the family has one; for the Llama-like original six also head counts, head size and attention
biases) and each drawn k and metric:
  1. folding any scale into every residual writer leaves the logits unchanged;
  2. prune with compensation, save, reload: the reloaded logits equal the in-memory ones;
  3. the reloaded model gives the same logits step by step with its KV cache as in one pass
     without it, and greedy generation agrees with and without the cache.
PRUNECOMP_FUZZ_EXAMPLES sets the examples per original family (default 10), PRUNECOMP_FUZZ_EXAMPLES_OTHER
those of the others (default 10); the test prints the count and time.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from prunecomp import PruneConfig, prune, resolve  # noqa: E402
from prunecomp.compensate import fold_scale  # noqa: E402
from prunecomp.io import save_pruned  # noqa: E402
from tiny import EXACT_ARCHS, ORIGINAL_ARCHS, VOCAB, force_eps, random_windows, randomize, tiny_config  # noqa: E402

EXAMPLES = int(os.environ.get("PRUNECOMP_FUZZ_EXAMPLES", "10"))
EXAMPLES_OTHER = int(os.environ.get("PRUNECOMP_FUZZ_EXAMPLES_OTHER", "10"))
METRICS = ("bi", "cl", "mag", "taylor", "ppl", "reverse", "random")
RUNS: dict[str, list[float]] = {}


@st.composite
def tiny_setups(draw):
    layers = draw(st.integers(3, 7))
    heads = draw(st.sampled_from([2, 4]))
    return {
        "layers": layers,
        "heads": heads,
        "kv_heads": draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        "head_dim": draw(st.sampled_from([4, 8])),
        "tied": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "sliding": draw(st.lists(st.booleans(), min_size=layers, max_size=layers)),
        "k": draw(st.integers(1, layers - 2)),
        "metric": draw(st.sampled_from(METRICS)),
        "iterative": draw(st.booleans()),
        "scale": draw(st.floats(0.3, 3.0)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _model(arch: str, setup: dict) -> torch.nn.Module:
    config = tiny_config(arch, setup["layers"], eps=1e-12)
    if arch in ORIGINAL_ARCHS:  # Llama-like attention configs: every head layout is valid
        config.num_attention_heads, config.num_key_value_heads = setup["heads"], setup["kv_heads"]
        config.head_dim = setup["head_dim"]
        if hasattr(config, "attention_bias"):
            config.attention_bias = setup["bias"]
    config.tie_word_embeddings = setup["tied"]
    if isinstance(getattr(config, "layer_types", None), list) and getattr(config, "sliding_window", None):
        config.layer_types = ["sliding_attention" if s else "full_attention" for s in setup["sliding"]]
    torch.manual_seed(setup["seed"])
    return randomize(AutoModelForCausalLM.from_config(config, dtype=torch.float32), 1e-12, setup["tied"])


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def _cached_logits(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits of `ids` computed one token at a time after `prefix`, through the KV cache."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.x renamed it
    out = model(ids[:, :prefix], use_cache=True)
    steps = [out.logits]
    for t in range(prefix, ids.shape[1]):
        past = getattr(out, "cache", None) or out.past_key_values
        out = model(ids[:, t : t + 1], use_cache=True, **{name: past})
        steps.append(out.logits)
    return torch.cat(steps, dim=1)


def _check(arch: str, setup: dict) -> None:
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(setup["seed"]))
    model = _model(arch, setup)
    with torch.no_grad():
        dense = model(ids).logits
        fold_scale(resolve(model), resolve(model).num_layers(), setup["scale"])  # every writer
        assert _relative_error(model(ids).logits, dense) < 1e-4

    config = PruneConfig(metric=setup["metric"], num_layers=setup["k"], iterative=setup["iterative"], seed=setup["seed"],
                         protect_first=0, protect_last=0)
    result = prune(model, None, config, random_windows(3, 16, seed=setup["seed"]))
    assert len(result.recipe.removed_layers) == setup["k"]
    with torch.no_grad():
        pruned = model(ids).logits
    assert torch.isfinite(pruned).all()
    with tempfile.TemporaryDirectory() as folder:
        out = save_pruned(model, None, result.recipe, os.path.join(folder, "out"))
        reloaded = force_eps(AutoModelForCausalLM.from_pretrained(out).eval(), 1e-12)  # as the pruned model has
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, pruned, atol=1e-5, rtol=1e-5)
        full = reloaded(ids, use_cache=False).logits
    assert torch.allclose(_cached_logits(reloaded, ids, prefix=5), full, atol=1e-4, rtol=1e-4)
    prompt = ids[:1, :4]
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("arch", EXACT_ARCHS)
def test_fold_prune_save_reload_generate(arch):
    tiny_config(arch)  # skips families this transformers lacks
    started = time.perf_counter()
    count = 0

    @settings(max_examples=EXAMPLES if arch in ORIGINAL_ARCHS else EXAMPLES_OTHER, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(tiny_setups())
    def run(setup):
        nonlocal count
        count += 1
        _check(arch, setup)

    run()
    print(f"\nfuzz {arch}: {count} examples in {time.perf_counter() - started:.1f}s")
