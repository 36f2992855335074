"""The architecture matrix: one tiny random model per family (tests/tiny.py CONFIGS), four proofs each.

1. Full fold: s folded into every writer (embedding, every layer, tied correction) leaves the
   logits unchanged (relative error <= 1e-5, float32, norm eps 1e-12), tied and untied.
2. Prefix fold: folding before layer j scales every residual state up to layer j's input by s.
3. prunecomp.prune with compensation, save_pruned, reload with plain transformers in a fresh
   process that never imports prunecomp: no missing/unexpected weights, the same logits.
4. Greedy generation is the same with and without the KV cache, in memory and after reload.

Adding a family is a row in prunecomp/arch/table.py plus a config in tests/tiny.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunecomp
from prunecomp import PruneConfig
from prunecomp.arch import SPECS, resolve
from prunecomp.compensate import fold_scale
from prunecomp.io import save_pruned
from tiny import CONFIGS, DISCOVERY_ARCHS, EXACT_ARCHS, REFUSED_ARCHS, random_windows, tiny_config, tiny_model, tiny_tokenizer

SCALE = 1.7
HERE = Path(__file__).parent


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_every_table_row_has_a_tiny_config():
    model_types = {tiny_config(name).model_type for name in EXACT_ARCHS + REFUSED_ARCHS}
    assert {t for spec in SPECS for t in spec.model_types} <= model_types
    assert {tiny_config(name).model_type for name in DISCOVERY_ARCHS}.isdisjoint(t for s in SPECS for t in s.model_types)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch_name", EXACT_ARCHS)
def test_full_fold_leaves_logits_unchanged(arch_name, tied):
    model = tiny_model(arch_name, tied=tied)
    arch = resolve(model)
    assert arch.is_tied() == tied and arch.inexact_reason() is None
    ids = random_windows(2, 16)
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), SCALE)
    assert relative_error(logits(model, ids), reference) <= 1e-5


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch_name", EXACT_ARCHS)
def test_prefix_fold_scales_layer_input_exactly(arch_name, tied):
    model = tiny_model(arch_name, tied=tied, layers=5)
    arch = resolve(model)
    ids = random_windows(2, 16)
    with torch.no_grad():
        before = model(ids, output_hidden_states=True).hidden_states
    j = 3
    fold_scale(arch, j, SCALE)
    with torch.no_grad():
        after = model(ids, output_hidden_states=True).hidden_states
    for l in range(j + 1):
        assert relative_error(after[l], SCALE * before[l]) <= 1e-5, f"h_{l}"
    assert relative_error(after[j + 1], SCALE * before[j + 1]) > 1e-3  # later layers are not scaled


def _greedy(model, ids, use_cache: bool) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return out[0].tolist()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Every exact family pruned (BI, 2 of 6 layers, compensated), saved, then reloaded in one
    fresh process; per family: (in-memory facts, reload report)."""
    root = tmp_path_factory.mktemp("pruned")
    tokenizer = tiny_tokenizer()
    facts, folders = {}, {}
    for position, name in enumerate(EXACT_ARCHS):
        try:
            model = tiny_model(name, layers=6, tied=position % 2 == 0, eps=1e-6, force_eps=False)
        except pytest.skip.Exception as exc:
            facts[name] = {"skip": str(exc)}
            continue
        result = prunecomp.prune(model, tokenizer, PruneConfig(metric="bi", num_layers=2, protect_last=1), calibration=random_windows(4, 24))
        ids = random_windows(2, 20, seed=1)  # longer than the tiny sliding windows (8)
        folder = root / name
        save_pruned(result.model, tokenizer, result.recipe, folder)
        torch.save({"ids": ids, "logits": logits(model, ids)}, folder / "expected.pt")
        facts[name] = {
            "scales": [r.scale for r in result.recipe.rounds],
            "num_layers": resolve(model).num_layers(),
            "cached_equal": _greedy(model, ids[:1], True) == _greedy(model, ids[:1], False),
        }
        folders[name] = str(folder)
    out = root / "reload.json"
    command = [sys.executable, str(HERE / "reload_check.py"), str(out), *folders.values()]
    subprocess.run(command, check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    reports = json.loads(out.read_text())
    assert reports.pop("prunecomp_imported") is False
    return {name: (facts[name], reports.get(folders.get(name))) for name in EXACT_ARCHS}


@pytest.mark.parametrize("arch_name", EXACT_ARCHS)
def test_prune_save_reload_and_generate(arch_name, pruned):
    facts, report = pruned[arch_name]
    if "skip" in facts:
        pytest.skip(facts["skip"])
    assert facts["num_layers"] == 4
    assert any(s != 1.0 for s in facts["scales"]), "compensation was folded in at least one round"
    assert facts["cached_equal"], "in memory: greedy generation differs with the KV cache"
    assert "error" not in report, report.get("error")
    assert report["num_layers"] == 4
    assert report["loading_problems"] == {}
    assert report["max_abs_logit_diff"] <= 1e-4
    assert report["greedy_cached"] == report["greedy_uncached"]


@pytest.mark.parametrize("arch_name", REFUSED_ARCHS)
def test_inexact_family_refuses_compensation_with_one_line(arch_name):
    model = tiny_model(arch_name, layers=4)
    arch = resolve(model)
    reason = arch.inexact_reason()
    assert reason and "\n" not in reason
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prunecomp.arch.InexactFold) as caught:
        prunecomp.prune(model, None, PruneConfig(metric="reverse", num_layers=1, protect_last=1), calibration=random_windows(2, 16))
    message = str(caught.value)
    assert "\n" not in message and reason in message and arch.spec.family in message
    assert arch.num_layers() == 4  # nothing was removed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nor folded


@pytest.mark.parametrize("arch_name", REFUSED_ARCHS)
def test_inexact_family_is_really_not_invariant(arch_name):
    """The refusal is not over-cautious: folding anyway changes the logits."""
    model = tiny_model(arch_name, tied=False)
    arch = resolve(model)
    ids = random_windows(2, 16)
    reference = logits(model, ids)
    fold_scale(arch, arch.num_layers(), SCALE, require_exact=False)
    assert relative_error(logits(model, ids), reference) > 1e-2


@pytest.mark.parametrize("arch_name", REFUSED_ARCHS)
def test_inexact_family_can_still_be_pruned_without_compensation(arch_name):
    model = tiny_model(arch_name, layers=4)
    result = prunecomp.prune(model, None, PruneConfig(metric="bi", num_layers=1, compensate=False), calibration=random_windows(2, 16))
    assert resolve(result.model).num_layers() == 3


def test_every_family_in_the_matrix_is_named_once():
    assert len(set(CONFIGS)) == len(CONFIGS)
    assert set(EXACT_ARCHS) | set(REFUSED_ARCHS) | set(DISCOVERY_ARCHS) == set(CONFIGS)


def test_gpt2_with_layer_index_scaled_attention_is_refused():
    model = tiny_model("gpt2", layers=2)
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(prunecomp.arch.UnsupportedArchitecture, match="scale_attn_by_inverse_layer_idx"):
        resolve(model)


def test_readme_support_table_is_generated_from_the_spec_table():
    from prunecomp.arch.support import support_table

    readme = (HERE.parents[1] / "README.md").read_text(encoding="utf-8")
    assert support_table() in readme, "regenerate with: python -c 'from prunecomp.arch.support import support_table; print(support_table())'"


@pytest.mark.parametrize("arch_name", ["gpt2", "mixtral", "qwen2_moe", "gpt_oss", "gemma3"])
def test_weight_matrices_cover_conv1d_and_fused_experts(arch_name):
    """What weight-based metrics should score: every matrix of a layer, writers marked."""
    model = tiny_model(arch_name, layers=2)
    arch = resolve(model)
    for index in range(arch.num_layers()):
        matrices = arch.weight_matrices(index)
        layer_params = [p for n, p in arch.layers()[index].named_parameters() if p.dim() >= 2 and not n.endswith("bias")]
        assert len(matrices) == len(layer_params)
        writer_ids = {id(t.tensor) for t in arch.writer_tensors(index)}
        assert {id(t) for _, t, w in matrices if w} == {i for i in writer_ids if any(i == id(p) for p in layer_params)}
        if arch.spec.layer_linear_writers:
            assert any(w for _, _, w in matrices)


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path, capsys):
    from prunecomp.cli import main
    from tiny import SAMPLE_TEXT

    model_dir = tmp_path / "olmo2"
    tiny_model("olmo2", layers=4, eps=1e-6, force_eps=False).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    (tmp_path / "calib.txt").write_text(SAMPLE_TEXT)
    out = tmp_path / "out"
    capsys.readouterr()  # drop the progress bars of saving the input model
    argv = ["prune", str(model_dir), "--metric", "bi", "--layers", "1", "--protect-last", "1", "--out", str(out),
            "--calib", str(tmp_path / "calib.txt"), "--calib-windows", "2", "--seqlen", "16", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    message = err.splitlines()[-1]  # earlier lines are transformers' own loading progress bar
    assert "Traceback" not in err and "compensation refused for olmo2" in message and "raw residual stream" in message
    assert not out.exists()
    assert main([*argv, "--no-comp"]) == 0
