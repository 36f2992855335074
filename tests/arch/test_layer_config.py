"""Per-layer config entries follow the removal: a model rebuilt from the pruned config has the same
weights and the same per-layer settings (attention kind, RoPE on/off, MoE or dense) as the pruned one."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunecomp.arch import resolve
from prunecomp.surgery import remove_layers
from tiny import EXACT_ARCHS, tiny_model

PRIMITIVES = (bool, int, float, str, type(None))


def layer_settings(model) -> list[dict]:
    """Per decoder layer: every primitive attribute of every submodule (layer_idx, is_sliding,
    sliding_window, use_rope, attention_type, ...), by submodule name."""
    settings = []
    for layer in resolve(model).layers():
        found = {}
        for name, module in layer.named_modules():
            for key, value in vars(module).items():
                if not key.startswith("_") and key != "training" and isinstance(value, PRIMITIVES):
                    found[f"{name}.{key}"] = value
        settings.append(found)
    return settings


def rebuilt(model):
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).eval()
    return fresh


@pytest.mark.parametrize("arch_name", EXACT_ARCHS)
def test_rebuilding_from_the_pruned_config_gives_the_same_layers(arch_name):
    model = tiny_model(arch_name, layers=6, eps=1e-6, force_eps=False)  # norms as the config builds them
    remove_layers(resolve(model), [0, 3])
    fresh = rebuilt(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == shapes
    assert layer_settings(fresh) == layer_settings(model)


def test_qwen2_moe_dense_layers_stay_dense():
    model = tiny_model("qwen2_moe", layers=6)  # mlp_only_layers=[1], every other layer MoE
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    remove_layers(resolve(model), [0, 3])
    assert model.config.mlp_only_layers == [0] and model.config.decoder_sparse_step == 1
    assert [type(layer.mlp).__name__ for layer in model.model.layers] == [kinds[i] for i in (1, 2, 4, 5)]


def test_qwen3_moe_sparse_step_is_rewritten_as_a_dense_list():
    model = tiny_model("qwen3_moe", layers=6)  # decoder_sparse_step=2: layers 1, 3, 5 are MoE
    remove_layers(resolve(model), [1, 2])  # kept 0, 3, 4, 5: dense, MoE, dense, MoE
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [0, 2]
    fresh = rebuilt(model)
    assert [type(l.mlp).__name__ for l in fresh.model.layers] == [type(l.mlp).__name__ for l in model.model.layers]


def test_smollm3_no_rope_layers_follow_the_layers():
    model = tiny_model("smollm3", layers=6)  # interval 3: layers 2 and 5 have no RoPE (and slide)
    flags, types = list(model.config.no_rope_layers), list(model.config.layer_types)
    remove_layers(resolve(model), [2])
    assert model.config.no_rope_layers == [flags[i] for i in (0, 1, 3, 4, 5)]
    assert model.config.layer_types == [types[i] for i in (0, 1, 3, 4, 5)]
    assert [bool(l.self_attn.use_rope) for l in model.model.layers] == [bool(f) for f in model.config.no_rope_layers]


def test_gpt_oss_layer_types_follow_the_layers():
    model = tiny_model("gpt_oss", layers=6)
    types = list(model.config.layer_types)
    remove_layers(resolve(model), [1, 2])
    assert model.config.layer_types == [types[i] for i in (0, 3, 4, 5)]
    assert model.config.num_hidden_layers == 4
