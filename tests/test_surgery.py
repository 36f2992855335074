import pytest
import torch
from transformers import AutoModelForCausalLM

from prunecomp.arch import resolve
from prunecomp.prune import apply_round
from prunecomp.surgery import remove_layers, skipped
from tiny import random_windows, tiny_model


def test_layer_types_and_counts_are_sliced_in_order():
    model = tiny_model("gemma3", layers=6)  # pattern 3: sliding, sliding, full, ...
    types = list(model.config.layer_types)
    arch = resolve(model)
    remove_layers(arch, [1, 4])
    assert model.config.num_hidden_layers == 4
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 5)]
    assert [layer.self_attn.layer_idx for layer in arch.layers()] == [0, 1, 2, 3]
    # each kept layer keeps its own attention kind, matching the sliced list
    assert [layer.self_attn.is_sliding for layer in arch.layers()] == [t == "sliding_attention" for t in model.config.layer_types]


def test_qwen2_max_window_layers_keeps_the_boundary():
    model = tiny_model("qwen2", layers=6)  # max_window_layers = 3: layers 3..5 slide
    types = list(model.config.layer_types)
    remove_layers(resolve(model), [0, 4])
    assert model.config.max_window_layers == 2
    assert model.config.layer_types == [types[i] for i in (1, 2, 3, 5)]


def test_removing_everything_or_out_of_range_fails():
    arch = resolve(tiny_model(layers=3))
    with pytest.raises(ValueError):
        remove_layers(arch, [0, 1, 2])
    with pytest.raises(IndexError):
        remove_layers(arch, [3])


def test_skipped_layer_is_the_identity_and_is_restored():
    model = tiny_model(layers=4)
    arch = resolve(model)
    ids = random_windows(2, 16)
    original = arch.layers()[1]
    with torch.no_grad():
        dense = model(ids).logits
        with skipped(arch, 1):
            skipping = model(ids).logits
        reference = tiny_model(layers=4)
        remove_layers(resolve(reference), [1])
        removed = reference(ids).logits
    assert arch.layers()[1] is original
    assert not original._forward_hooks and not original._forward_pre_hooks
    assert torch.allclose(skipping, removed, atol=1e-5)
    assert not torch.allclose(skipping, dense)


def greedy(model, ids, use_cache):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache, pad_token_id=0)


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "gemma2", "gemma3"])
def test_save_reload_and_generate_with_cache(arch_name, tmp_path):
    model = tiny_model(arch_name, layers=6, eps=1e-6)
    arch = resolve(model)
    kept = list(range(6))
    apply_round(arch, kept, 1, 1, 1.3)
    apply_round(arch, kept, 3, 1, 0.8)  # original layer 4
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4
    assert getattr(reloaded.config, "layer_types", None) == getattr(model.config, "layer_types", None)
    ids = random_windows(1, 20)  # longer than the tiny sliding window (8)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)
    for candidate in (model, reloaded):
        assert torch.equal(greedy(candidate, ids, True), greedy(candidate, ids, False))
