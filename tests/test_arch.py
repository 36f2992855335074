import pytest
import torch

from prunecomp.arch import SPECS, UnsupportedArchitecture, resolve, supported_model_types
from prunecomp.compensate import fold_scale, scale_linear_
from tiny import ARCHS, random_windows, tiny_model

SCALE = 1.7


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def residual_inputs(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states  # h_0 .. h_L (last one after final norm)


def test_the_original_families_are_still_in_the_table():
    assert set(ARCHS) <= {spec.family for spec in SPECS}
    assert set(supported_model_types()) == {t for s in SPECS for t in s.model_types}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch_name", ARCHS)
def test_folding_into_every_writer_leaves_logits_unchanged(arch_name, tied):
    model = tiny_model(arch_name, tied=tied)
    arch = resolve(model)
    assert arch.is_tied() == tied
    ids = random_windows()
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), SCALE)
    assert relative_error(logits(model, ids), reference) <= 1e-5


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch_name", ARCHS)
def test_folding_a_prefix_scales_that_layers_input_exactly(arch_name, tied):
    model = tiny_model(arch_name, tied=tied, layers=6)
    arch = resolve(model)
    ids = random_windows()
    before = residual_inputs(model, ids)
    j = 3
    fold_scale(arch, j, SCALE)
    after = residual_inputs(model, ids)
    for l in range(j + 1):  # every state up to and including layer j's input is scaled by s
        assert relative_error(after[l], SCALE * before[l]) <= 1e-5
    # the later layers' own contributions are not scaled, so layer j+1's input is not s * h_{j+1}
    assert relative_error(after[j + 1], SCALE * before[j + 1]) > 1e-3


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_an_incomplete_writer_list_is_caught(arch_name):
    """The invariance check has teeth: missing one writer breaks it."""
    model = tiny_model(arch_name, tied=False)
    arch = resolve(model)
    ids = random_windows()
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), SCALE)
    # undo one writer of layer 2
    linears, norms = arch.layer_writers(2)
    if linears:
        scale_linear_(linears[0], 1 / SCALE)
    else:
        from prunecomp.compensate import scale_norm_

        scale_norm_(norms[0], 1 / SCALE, arch.spec.norm_offset)
    assert relative_error(logits(model, ids), reference) > 1e-3


def test_gemma_writers_are_post_norms_not_projections():
    arch = resolve(tiny_model("gemma3"))
    linears, norms = arch.layer_writers(0)
    assert linears == [] and len(norms) == 2
    assert arch.spec.norm_offset == 1.0


def test_unsupported_architecture_names_the_supported_ones():
    model = tiny_model("olmo", layers=2)  # not in the table
    with pytest.raises(UnsupportedArchitecture, match="olmo.*llama"):
        resolve(model, allow_discovery=False)
