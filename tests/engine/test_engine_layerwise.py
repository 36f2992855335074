"""Layer-wise execution from safetensors shards equals the in-memory model, round after round."""

from __future__ import annotations

import pytest
import torch

from prunecomp.arch import resolve
from prunecomp.engine import BoundaryEngine, ShardLayers, load_skeleton
from prunecomp.prune import apply_round
from tiny import ARCHS, random_windows, tiny_model

ROUNDS = ((3, 1, 1.3), (1, 1, 0.8), (0, 1, 1.1))


@pytest.fixture(params=ARCHS)
def sharded(request, tmp_path):
    tied = request.param not in ("qwen3", "mistral")  # both tied and untied heads
    model = tiny_model(request.param, layers=6, tied=tied)
    model.save_pretrained(tmp_path, max_shard_size="60KB")  # several shards
    assert (tmp_path / "model.safetensors.index.json").exists()
    return model, tmp_path


def test_skeleton_holds_no_layer_weights(sharded):
    _, folder = sharded
    skeleton, _ = load_skeleton(folder)
    arch = resolve(skeleton)
    assert all(p.device.type == "meta" for p in arch.layers().parameters())
    assert arch.embedding().weight.device.type == "cpu"
    assert skeleton.get_output_embeddings().weight.device.type == "cpu"


def test_layerwise_stats_and_skip_losses_match_in_memory(sharded):
    model, folder = sharded
    skeleton, checkpoint = load_skeleton(folder)
    arch, lazy_arch = resolve(model), resolve(skeleton)
    windows = random_windows(3, 16)
    resident = BoundaryEngine(arch, windows, batch_size=2)
    lazy = BoundaryEngine(lazy_arch, windows, ShardLayers(lazy_arch, checkpoint), batch_size=2)
    kept, lazy_kept = list(range(6)), list(range(6))
    for step in ((None, None, None),) + ROUNDS:
        if step[0] is not None:
            start, size, scale = step
            for a, k, e in ((arch, kept, resident), (lazy_arch, lazy_kept, lazy)):
                apply_round(a, k, start, size, scale)
                e.after_round(start, size, scale)
        fast, slow = lazy.stats((1, 2)), resident.stats((1, 2))
        torch.testing.assert_close(fast.channel_mean_abs, slow.channel_mean_abs, rtol=0, atol=0)
        torch.testing.assert_close(fast.cos_distance[2], slow.cos_distance[2], rtol=0, atol=0)
        torch.testing.assert_close(lazy.skip_losses(), resident.skip_losses(), rtol=0, atol=0)
    assert lazy.layers.loads > 0
    assert all(p.device.type == "meta" for p in lazy_arch.layers().parameters())  # released after use


def test_saved_layerwise_checkpoint_equals_the_in_memory_pruned_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from prunecomp.config import PruneConfig
    from prunecomp.engine.layerwise import save_layerwise
    from prunecomp.prune import apply_recipe, prune

    source = tmp_path / "source"
    tiny_model("llama", layers=6, tied=True).save_pretrained(source, max_shard_size="60KB")
    skeleton, _ = load_skeleton(source)
    windows = random_windows(3, 16)
    recipe = prune(skeleton, None, PruneConfig(metric="bi", num_layers=2, engine="layerwise"), windows).recipe
    saved = save_layerwise(skeleton, None, recipe, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    expected = apply_recipe(AutoModelForCausalLM.from_pretrained(source).eval(), recipe)
    assert reloaded.config.num_hidden_layers == 4
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    ids = random_windows(1, 12)
    torch.testing.assert_close(reloaded(ids).logits, expected(ids).logits, rtol=0, atol=0)


def test_open_layerwise_fingerprints_and_checks_the_weights_as_load_model_does(sharded, tmp_path):
    from safetensors.torch import load_file, save_file

    from prunecomp.engine.layerwise import open_layerwise
    from prunecomp.errors import NonFiniteWeights
    from prunecomp.io import load_model
    from tiny import tiny_tokenizer

    _, folder = sharded
    tiny_tokenizer().save_pretrained(folder)
    skeleton, _, streamed = open_layerwise(str(folder))
    assert all(p.device.type == "meta" for p in resolve(skeleton).layers().parameters())  # still nothing loaded
    _, _, loaded = load_model(str(folder))
    assert streamed.fingerprint == loaded.fingerprint and streamed.dtype == loaded.dtype == "float32"

    shard, name = next((f, n) for f in sorted(folder.glob("*.safetensors")) for n in load_file(f) if ".layers.3." in n
                       and n.endswith("weight") and load_file(f)[n].dim() == 2)
    tensors = load_file(shard)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeights, match=name.replace(".", r"\.")):
        open_layerwise(str(folder))
