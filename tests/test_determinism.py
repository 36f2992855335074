"""The same inputs and seed give bitwise-identical weights and the same recipe, across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunecomp.cli import main

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _prune_args(model: Path, calib: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(model), "--layers", "2", "--calib", str(calib), "--calib-windows", "4", "--seqlen", "32",
            "--out", str(out), "--quiet", *extra]


def _recipe_without_timestamp(out: Path) -> dict:
    recipe = json.loads((out / "prunecomp_recipe.json").read_text())
    recipe.pop("created")
    return recipe


@pytest.mark.parametrize("metric", ["bi", "random"])
def test_two_fresh_processes_write_the_same_bytes(metric, tiny_model_dir, sample_text_file, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:  # each run is a new interpreter: no state shared through caches or RNGs
        done = subprocess.run([sys.executable, "-m", "prunecomp.cli", *_prune_args(tiny_model_dir, sample_text_file, out,
                               "--metric", metric, "--seed", "3")], env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = ((out / "model.safetensors").read_bytes() for out in outs)
    assert a == b
    assert _recipe_without_timestamp(outs[0]) == _recipe_without_timestamp(outs[1])


def test_a_bfloat16_prune_replays_byte_identically(tiny_model_dir, sample_text_file, tmp_path, capsys):
    made = tmp_path / "made"
    assert main(_prune_args(tiny_model_dir, sample_text_file, made, "--dtype", "bfloat16")) == 0
    assert json.loads((made / "prunecomp_recipe.json").read_text())["dtype"] == "bfloat16"
    # without --dtype, apply replays in the recipe's dtype
    assert main(["apply", str(tiny_model_dir), "--recipe", str(made), "--out", str(tmp_path / "bf16")]) == 0
    assert (tmp_path / "bf16" / "model.safetensors").read_bytes() == (made / "model.safetensors").read_bytes()
    capsys.readouterr()
    # another dtype is refused, unless forced (and then recorded)
    assert main(["apply", str(tiny_model_dir), "--recipe", str(made), "--out", str(tmp_path / "f32"), "--dtype", "float32"]) == 2
    assert "pass --dtype bfloat16" in capsys.readouterr().err and not (tmp_path / "f32").exists()
    assert main(["apply", str(tiny_model_dir), "--recipe", str(made), "--out", str(tmp_path / "f32"), "--dtype", "float32",
                 "--force"]) == 0
    assert any("forced replay" in w for w in json.loads((tmp_path / "f32" / "prunecomp_recipe.json").read_text())["warnings"])
