"""`prunecomp prune --engine layerwise --max-memory` reads a safetensors checkpoint layer by layer
and writes the same checkpoint as the in-memory path."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from prunecomp.cli import main


def _prune(tiny_model_dir, sample_text_file, out, *extra):
    argv = ["prune", str(tiny_model_dir), "--layers", "2", "--calib", str(sample_text_file), "--calib-windows", "3",
            "--seqlen", "16", "--out", str(out), "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((out / "prunecomp_recipe.json").read_text())


def _weights(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def test_cli_layerwise_equals_memory(tiny_model_dir, sample_text_file, tmp_path, capsys):
    lazy = _prune(tiny_model_dir, sample_text_file, tmp_path / "lazy", "--engine", "layerwise", "--max-memory", "20MB")
    assert "layers from safetensors shards" in capsys.readouterr().err  # it says what it chose
    memory = _prune(tiny_model_dir, sample_text_file, tmp_path / "memory", "--engine", "memory")
    assert [r["removed"] for r in lazy["rounds"]] == [r["removed"] for r in memory["rounds"]]
    for a, b in zip(lazy["rounds"], memory["rounds"]):
        assert abs(a["scale"] - b["scale"]) <= 1e-4 * abs(b["scale"])
    lazy_weights, memory_weights = _weights(tmp_path / "lazy"), _weights(tmp_path / "memory")
    memory_weights.pop("lm_head.weight", None)  # tied: save_pretrained may or may not list it
    for name, tensor in memory_weights.items():
        torch.testing.assert_close(lazy_weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
