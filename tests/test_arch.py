import pytest
import torch

from prunecomp.arch import SPECS, UnsupportedArchitecture, resolve, supported_model_types
from prunecomp.compensate import fold_scale
from tiny import ARCHS, random_windows, tiny_model

SCALE = 1.7


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_the_original_families_are_still_in_the_table():
    assert set(ARCHS) <= {spec.family for spec in SPECS}
    assert set(supported_model_types()) == {t for s in SPECS for t in s.model_types}


# The full-fold and prefix-fold proofs for every family are in tests/arch/test_families.py.


@pytest.mark.parametrize("arch_name", ["llama", "gemma3", "gpt2", "mixtral", "gpt_oss", "glm4"])
def test_an_incomplete_writer_list_is_caught(arch_name):
    """The invariance check has teeth: leaving out any one writer tensor of one layer breaks it."""
    from prunecomp.compensate import _scale_

    model = tiny_model(arch_name, tied=False)
    arch = resolve(model)
    ids = random_windows()
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), SCALE)
    for entry in arch.writer_tensors(2):  # undo one writer of layer 2 at a time
        _scale_(entry.tensor, 1 / SCALE, entry.offset)
        if entry.name.endswith("weight") or entry.tensor.dim() == 3:
            assert relative_error(logits(model, ids), reference) > 1e-3, entry.name
        _scale_(entry.tensor, SCALE, entry.offset)
    assert relative_error(logits(model, ids), reference) <= 1e-5


def test_gemma_writers_are_post_norms_not_projections():
    arch = resolve(tiny_model("gemma3"))
    linears, norms = arch.layer_writers(0)
    assert linears == [] and len(norms) == 2
    assert arch.spec.norm_offset == 1.0


def test_unsupported_architecture_names_the_supported_ones():
    model = tiny_model("olmo", layers=2)  # not in the table
    with pytest.raises(UnsupportedArchitecture, match="olmo.*llama"):
        resolve(model, allow_discovery=False)
