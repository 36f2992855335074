"""The discovery fallback: model types outside the table are pruned only with a spec that passed
its invariance self-check on the model itself; otherwise the error names what it could not classify."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import prunecomp
from prunecomp import PruneConfig
from prunecomp.arch import UnsupportedArchitecture, resolve, supported_model_types
from prunecomp.compensate import fold_scale
from prunecomp.io import save_pruned
from tiny import random_windows, tiny_model, tiny_tokenizer


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_discovered_spec_is_exact_on_a_family_outside_the_table(tied):
    model = tiny_model("helium", tied=tied)
    assert model.config.model_type not in supported_model_types()
    arch = resolve(model)
    assert arch.spec.family == "discovered:helium"
    assert {n.rstrip("?") for n in arch.spec.layer_linear_writers} == {"self_attn.o_proj", "mlp.down_proj"}
    ids = random_windows(2, 16)
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), 1.7)
    assert relative_error(logits(model, ids), reference) <= 1e-5


def test_discovered_family_prunes_saves_and_reloads(tmp_path):
    model = tiny_model("helium", layers=5, eps=1e-6, force_eps=False)
    result = prunecomp.prune(model, None, PruneConfig(metric="bi", num_layers=2, protect_last=1), calibration=random_windows(4, 24))
    assert any(r.scale != 1.0 for r in result.recipe.rounds)
    save_pruned(result.model, tiny_tokenizer(), result.recipe, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = random_windows(2, 20, seed=1)
    assert reloaded.config.num_hidden_layers == 3
    assert torch.allclose(logits(reloaded, ids), logits(model, ids), atol=1e-5)


def test_weightless_norms_with_tied_embeddings_are_refused():
    model = tiny_model("olmo", tied=True)  # OLMo-1's LayerNorms have no weight
    with pytest.raises(UnsupportedArchitecture, match="tied.*no weight"):
        resolve(model)


def test_weightless_norms_untied_pass_the_self_check():
    arch = resolve(tiny_model("olmo", tied=False))
    assert arch.spec.family == "discovered:olmo"


class SidePath(nn.Module):
    """An MLP plus a side branch with a name discovery does not know, also writing the stream."""

    def __init__(self, mlp: nn.Module, hidden: int):
        super().__init__()
        self.inner = mlp
        self.adapter = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        return self.inner(x) + self.adapter(x)


def test_failed_self_check_names_unclassified_modules_and_prunes_nothing():
    model = tiny_model("helium", layers=4)
    for layer in model.model.layers:
        layer.mlp = SidePath(layer.mlp, model.config.hidden_size)
        nn.init.normal_(layer.mlp.adapter.weight, std=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedArchitecture) as caught:
        prunecomp.prune(model, None, PruneConfig(metric="bi", num_layers=1), calibration=random_windows(2, 16))
    message = str(caught.value)
    assert "self-check" in message and "model.layers.0.mlp.adapter" in message and "\n" not in message
    assert len(model.model.layers) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # self-check restored every weight


def test_resolve_without_discovery_lists_the_table():
    with pytest.raises(UnsupportedArchitecture, match="helium.*llama"):
        resolve(tiny_model("helium", layers=2), allow_discovery=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_self_check_restores_weights_and_eps_bit_for_bit(dtype):
    model = tiny_model("helium", layers=3, tied=False, eps=1e-6, force_eps=False).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps_before = [m.variance_epsilon for m in model.modules() if hasattr(m, "variance_epsilon")]
    assert resolve(model).spec.family == "discovered:helium"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.variance_epsilon for m in model.modules() if hasattr(m, "variance_epsilon")] == eps_before


def test_discovered_moe_family_keeps_layer_kinds(monkeypatch):
    """An unknown Qwen-MoE-like model: fused experts found by name, sparse-step counters rewritten."""
    import prunecomp.arch.table as table
    from prunecomp.surgery import remove_layers

    monkeypatch.setattr(table, "SPECS", tuple(s for s in table.SPECS if s.family != "qwen3_moe"))
    model = tiny_model("qwen3_moe", layers=6, tied=False)  # decoder_sparse_step=2
    arch = resolve(model)
    assert arch.spec.family == "discovered:qwen3_moe"
    ids = random_windows(2, 16)
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), 1.7)
    assert relative_error(logits(model, ids), reference) <= 1e-5
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    remove_layers(arch, [1, 2])
    fresh = AutoModelForCausalLM.from_config(model.config)
    assert [type(layer.mlp).__name__ for layer in fresh.model.layers] == [kinds[i] for i in (0, 3, 4, 5)]


@pytest.mark.parametrize("arch_name, family, writers, offset", [
    ("gemma3", "gemma3", {"post_attention_layernorm", "post_feedforward_layernorm"}, 1.0),
    ("glm4", "glm4", {"post_self_attn_layernorm", "post_mlp_layernorm"}, 0.0),
])
def test_discovery_finds_post_norm_writers(monkeypatch, arch_name, family, writers, offset):
    """Post-norms are ambiguous by name (GLM-4's post_attention_layernorm reads); the self-check decides."""
    import prunecomp.arch.table as table

    monkeypatch.setattr(table, "SPECS", tuple(s for s in table.SPECS if s.family != family))
    model = tiny_model(arch_name, tied=True)
    arch = resolve(model)
    assert arch.spec.family.startswith("discovered:")
    assert {n.rstrip("?") for n in arch.spec.layer_norm_writers} == writers and arch.spec.norm_offset == offset
    ids = random_windows(2, 16)
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), 1.7)
    assert relative_error(logits(model, ids), reference) <= 1e-5
