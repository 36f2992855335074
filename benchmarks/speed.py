"""Engine speed: what the layer-wise engine (cached boundary states) costs against the straightforward loop.

    PRUNECOMP_DATA=../shared/data python benchmarks/speed.py [--quick] [--device cpu|cuda] [--out DIR]

Three measurements, each a comparison inside the same run (wall times as ratios):

1. BI + compensation, k=5, SmolLM2-135M, 8 x 256 C4 windows: token-layer evaluations (decoder-layer
   calls x tokens, counted by hooks on the layers) of engine "layerwise" and engine "memory", as
   passes-equivalent of the calibration set over the dense model; the recipes must be identical.
2. The PPL metric (SLEB-style, with compensation), k=3: the engine's token-layer evaluations
   against SLEB's structure (every candidate re-runs the L-1 other layers, plus the statistics pass
   the loop needs for the scale), and against the memory engine as measured.
3. Larger than memory: a random Llama-architecture checkpoint (safetensors, several shards, about
   5 GB of float32 weights) pruned layer-wise in a child process under --max-memory of a third of
   the weights; peak RSS (VmHWM) against the weights' size. The recipe equality of the layer-wise
   and in-memory paths is checked on a smaller random checkpoint of the same family that fits.
   The big checkpoint is deleted afterwards.

The last line is `passes_equivalent=<x> ppl_metric_ratio=<y> peak_rss_over_weights=<z>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunecomp.arch import resolve
from prunecomp.config import CalibConfig, PruneConfig
from prunecomp.prune import calibration_windows, prune

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speed_engine"
PARTS = ("bi_comp", "ppl_metric", "larger_than_memory")


# ---------------------------------------------------------------------------- counting
class LayerCounter:
    """Token-layer evaluations: every decoder-layer call adds the tokens of its input."""

    def __init__(self, model):
        self.evaluations = 0
        self.handles = [layer.register_forward_pre_hook(self._count, with_kwargs=True) for layer in resolve(model).layers()]

    def _count(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.evaluations += hidden.shape[0] * hidden.shape[1]

    def close(self):
        for handle in self.handles:
            handle.remove()


def timed_prune(model, windows, config: PruneConfig):
    counter = LayerCounter(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = prune(model, None, config, windows)
    seconds = {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu_started}
    counter.close()
    return result.recipe, counter.evaluations, seconds


def same_recipe(a, b, rel: float = 1e-4) -> bool:
    if [r.removed for r in a.rounds] != [r.removed for r in b.rounds]:
        return False
    return all(abs(x.scale - y.scale) <= rel * abs(y.scale) for x, y in zip(a.rounds, b.rounds))


def recipe_summary(recipe) -> dict:
    return {"removed": [r.removed for r in recipe.rounds], "scales": [round(r.scale, 6) for r in recipe.rounds]}


def depths_during(recipe, total: int) -> list[int]:
    """The current depth at the start of every round."""
    depths, depth = [], total
    for r in recipe.rounds:
        depths.append(depth)
        depth -= len(r.removed)
    return depths


# ---------------------------------------------------------------------------- 1 and 2: SmolLM2
def smollm2(device: str, quick: bool):
    """(reload, windows, layers): a loader for fresh SmolLM2 copies and the 8 x 256 C4 windows."""
    from prunecomp.io import load_model

    model, tokenizer, _ = load_model("smollm2-135m", device=device)
    total = resolve(model).num_layers()
    calib = CalibConfig(source="c4:train", num_windows=4 if quick else 8, seqlen=256, seed=0)
    windows, _ = calibration_windows(tokenizer, calib)
    del model

    def reload():  # every run prunes a freshly loaded model
        return load_model("smollm2-135m", device=device)[0]

    return reload, windows, total


def bi_case(device: str, quick: bool) -> dict:
    """1. BI + compensation, k=5."""
    reload, windows, total = smollm2(device, quick)
    tokens = windows.numel()
    out = {}
    k = 5
    settings = dict(metric="bi", num_layers=k, batch_size=4)
    memory_recipe, memory_evals, memory_s = timed_prune(reload(), windows, PruneConfig(engine="memory", **settings))
    layer_recipe, layer_evals, layer_s = timed_prune(reload(), windows, PruneConfig(engine="layerwise", **settings))
    pass_cost = total * tokens
    depths = depths_during(memory_recipe, total)
    out["bi_comp"] = {
        "k": k,
        "windows": list(windows.shape),
        "token_layer_evals": {"layerwise": layer_evals, "memory": memory_evals},
        "passes_equivalent": {
            "layerwise": layer_evals / pass_cost,
            "memory": memory_evals / pass_cost,
            # the official loop: a scoring pass plus a scale pass over twice the windows, every round
            "official_structure": sum(3 * d for d in depths) / total,
        },
        "seconds": {"layerwise": layer_s, "memory": memory_s},
        # CPU time of this process: on a shared machine it tracks the work better than wall time
        "wall_ratio_memory_over_layerwise": memory_s["wall"] / layer_s["wall"],
        "cpu_ratio_memory_over_layerwise": memory_s["cpu"] / layer_s["cpu"],
        "recipes_identical": same_recipe(layer_recipe, memory_recipe),
        "recipe": recipe_summary(layer_recipe),
        "memory_recipe": recipe_summary(memory_recipe),
    }
    return out["bi_comp"] | {"model": "smollm2-135m", "layers": total, "device": device}


def ppl_case(device: str, quick: bool) -> dict:
    """2. the PPL metric, k=3 (fewer tokens: the straightforward path costs ~L passes per round)."""
    reload, windows, total = smollm2(device, quick)
    out = {}
    k_ppl = 2 if quick else 3
    ppl_windows = windows[:1, :128] if quick else windows[:2, :128]  # the count ratio does not depend on the tokens
    ppl_tokens = ppl_windows.numel()
    settings = dict(metric="ppl", num_layers=k_ppl, batch_size=4)
    memory_recipe, memory_evals, memory_s = timed_prune(reload(), ppl_windows, PruneConfig(engine="memory", **settings))
    layer_recipe, layer_evals, layer_s = timed_prune(reload(), ppl_windows, PruneConfig(engine="layerwise", **settings))
    depths = depths_during(memory_recipe, total)
    # SLEB's structure: each candidate re-runs the other L-1 layers; the loop adds one statistics pass
    # per round for the compensation scale.
    sleb = sum(d * (d - 1) + d for d in depths) * ppl_tokens
    out["ppl_metric"] = {
        "k": k_ppl,
        "windows": list(ppl_windows.shape),
        "token_layer_evals": {"layerwise": layer_evals, "memory_measured": memory_evals, "sleb_structure": sleb},
        "ratio_sleb_over_layerwise": sleb / layer_evals,
        "ratio_memory_over_layerwise": memory_evals / layer_evals,
        "seconds": {"layerwise": layer_s, "memory": memory_s},
        # CPU time of this process: on a shared machine it tracks the work better than wall time
        "wall_ratio_memory_over_layerwise": memory_s["wall"] / layer_s["wall"],
        "cpu_ratio_memory_over_layerwise": memory_s["cpu"] / layer_s["cpu"],
        "recipes_identical": same_recipe(layer_recipe, memory_recipe),
        "recipe": recipe_summary(layer_recipe),
        "memory_recipe": recipe_summary(memory_recipe),
    }
    return out["ppl_metric"] | {"model": "smollm2-135m", "layers": total, "device": device}


# ---------------------------------------------------------------------------- 3: larger than memory
def write_random_llama(folder: Path, hidden: int, intermediate: int, layers: int, vocab: int, heads: int,
                       layers_per_shard: int, seed: int = 0) -> int:
    """A random Llama checkpoint written shard by shard (never the whole model in memory); returns its bytes."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prunecomp.engine.layerwise import parameters_on_meta

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, vocab_size=vocab,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                         tie_word_embeddings=True, rms_norm_eps=1e-5)
    with parameters_on_meta():
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    generator = torch.Generator().manual_seed(seed)

    def tensor(name, shape):
        if len(shape) == 1:  # norms: around one
            return 1.0 + 0.1 * torch.randn(shape, generator=generator)
        if "embed_tokens" in name:
            # A residual stream of mean square ~1, as trained models have after a few layers; with a
            # mean square near the norm eps (1e-5) the fold is no longer a pure rescaling (see README).
            return torch.randn(shape, generator=generator)
        return torch.randn(shape, generator=generator) * (0.6 / shape[-1] ** 0.5)

    folder.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    groups = [[n for n in shapes if not n.startswith("model.layers.")]]
    for first in range(0, layers, layers_per_shard):
        groups.append([n for n in shapes if any(n.startswith(f"model.layers.{i}.") for i in range(first, first + layers_per_shard))])
    for index, names in enumerate(groups):
        file = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {n: tensor(n, shapes[n]).contiguous() for n in names}
        total += sum(t.numel() * t.element_size() for t in shard.values())
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map |= {n: file for n in names}
        del shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    return total


def child_prune(folder: str, max_memory: str | None, metric: str, k: int, windows: int, seqlen: int, engine: str) -> None:
    """Runs in a fresh process: prune the checkpoint, print one JSON line with the recipe and peak RSS."""
    from prunecomp.engine import load_skeleton

    baseline = _status_kb("VmRSS") * 1024  # python, torch and transformers imported, no model yet
    started = time.perf_counter()
    if engine == "layerwise":
        model, _ = load_skeleton(folder)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (windows, seqlen), generator=torch.Generator().manual_seed(0))
    # protect_last=2: on random weights the deepest layer always scores lowest, and removing the last
    # layer needs no scale; keeping two makes every round estimate and fold a real scale.
    config = PruneConfig(metric=metric, num_layers=k, engine=engine, max_memory=max_memory, batch_size=windows, protect_last=2)
    recipe = prune(model, None, config, ids).recipe
    print("RESULT " + json.dumps({"summary": recipe_summary(recipe), "peak_rss_bytes": _status_kb("VmHWM") * 1024,
                                  "baseline_rss_bytes": baseline,
                                  "seconds": time.perf_counter() - started}), flush=True)


def _status_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1])


def run_child(folder: Path, engine: str, max_memory: str | None, metric: str, k: int, windows: int, seqlen: int) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), "--engine", engine, "--metric", metric, "--k", str(k),
               "--windows", str(windows), "--seqlen", str(seqlen)] + (["--max-memory", max_memory] if max_memory else [])
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["engine_message"] = [line for line in done.stderr.splitlines() if line.startswith("prunecomp: engine")]
    return result


def larger_than_memory(quick: bool, scratch: Path) -> dict:
    # Small model: the layer-wise (skeleton) and in-memory recipes must agree.
    small = scratch / "small"
    small_bytes = write_random_llama(small, hidden=256, intermediate=704, layers=8, vocab=2048, heads=4, layers_per_shard=2)
    small_lw = run_child(small, "layerwise", None, "bi", 3, 4, 128)
    small_mem = run_child(small, "memory", None, "bi", 3, 4, 128)
    agree = small_lw["summary"]["removed"] == small_mem["summary"]["removed"] and all(
        abs(a - b) <= 1e-4 * abs(b) for a, b in zip(small_lw["summary"]["scales"], small_mem["summary"]["scales"]))
    out = {"small": {"weights_bytes": small_bytes, "layerwise": small_lw["summary"], "memory": small_mem["summary"],
                     "recipes_identical": agree}}
    print(json.dumps(out["small"]), flush=True)
    shutil.rmtree(small, ignore_errors=True)

    # Big model: several times the memory cap.
    big = scratch / "big"
    dims = dict(hidden=1024, intermediate=2816, layers=12, heads=8) if quick else dict(hidden=2048, intermediate=5632, layers=24, heads=16)
    started = time.perf_counter()
    weights = write_random_llama(big, vocab=8192, layers_per_shard=2, **dims)
    write_s = time.perf_counter() - started
    cap = weights // 3
    try:
        result = run_child(big, "layerwise", f"{cap // 10**6}MB", "bi", 3, 4, 128)
    finally:
        shutil.rmtree(big, ignore_errors=True)
    out["big"] = {
        "config": dims | {"vocab": 8192, "dtype": "float32"},
        "weights_bytes": weights,
        "max_memory": f"{cap // 10**6}MB",
        "peak_rss_bytes": result["peak_rss_bytes"],
        "peak_rss_over_weights": result["peak_rss_bytes"] / weights,
        "baseline_rss_bytes": result["baseline_rss_bytes"],  # the interpreter with torch and transformers, before loading
        "seconds_prune": result["seconds"],
        "seconds_write_checkpoint": write_s,
        "recipe": result["summary"],
        "engine_message": result["engine_message"],
    }
    print(json.dumps(out["big"]), flush=True)
    return out


# ---------------------------------------------------------------------------- report
def _seconds(case: dict, engine: str) -> str:
    value = case["seconds"][engine]
    if isinstance(value, dict):
        return f"{value['cpu']:.0f} s ({value['wall']:.0f} s)"
    return f"({value:.0f} s)"  # an older record with wall time only


def _ratio(case: dict) -> str:
    cpu = case.get("cpu_ratio_memory_over_layerwise")
    wall = case["wall_ratio_memory_over_layerwise"]
    return f"{cpu:.2f}x ({wall:.2f}x)" if cpu else f"({wall:.2f}x)"


def table(results: dict) -> str:
    bi, ppl, big = results["bi_comp"], results["ppl_metric"], results["larger_than_memory"]["big"]
    small = results["larger_than_memory"]["small"]
    gb = 1e9
    rows = [
        "| Case | Straightforward | Layer-wise engine | Ratio | Recipes identical |",
        "| :--- | ---: | ---: | ---: | :---: |",
        f"| BI+comp k={bi['k']}, SmolLM2, {bi['windows'][0]}x{bi['windows'][1]}: passes-equivalent | "
        f"{bi['passes_equivalent']['memory']:.2f} (official structure {bi['passes_equivalent']['official_structure']:.1f}) | "
        f"{bi['passes_equivalent']['layerwise']:.2f} | {bi['passes_equivalent']['memory'] / bi['passes_equivalent']['layerwise']:.2f}x | "
        f"{'yes' if bi['recipes_identical'] else 'NO'} |",
        f"| same, CPU time (wall) | {_seconds(bi, 'memory')} | {_seconds(bi, 'layerwise')} | "
        f"{_ratio(bi)} | |",
        f"| PPL metric+comp k={ppl['k']}, SmolLM2, {ppl['windows'][0]}x{ppl['windows'][1]}: token-layer evals (SLEB structure) | "
        f"{ppl['token_layer_evals']['sleb_structure']:,} | {ppl['token_layer_evals']['layerwise']:,} | "
        f"{ppl['ratio_sleb_over_layerwise']:.2f}x | {'yes' if ppl['recipes_identical'] else 'NO'} |",
        f"| same, as measured on engine memory (skipped layer still runs) | {ppl['token_layer_evals']['memory_measured']:,} | "
        f"{ppl['token_layer_evals']['layerwise']:,} | {ppl['ratio_memory_over_layerwise']:.2f}x | |",
        f"| same, CPU time (wall), head cost included | {_seconds(ppl, 'memory')} | {_seconds(ppl, 'layerwise')} | "
        f"{_ratio(ppl)} | |",
        f"| Larger than memory: random Llama {big['config']['layers']}x{big['config']['hidden']}, {big['weights_bytes'] / gb:.2f} GB "
        f"weights, --max-memory {big['max_memory']}: peak RSS | (does not fit the cap) | {big['peak_rss_bytes'] / gb:.2f} GB | "
        f"{big['peak_rss_over_weights']:.2f} of the weights | small model: {'yes' if small['recipes_identical'] else 'NO'} |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test, not the recorded result)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--parts", default=",".join(PARTS), help="which measurements to run (each is saved as it ends)")
    parser.add_argument("--scratch", default=None, help="folder for the random checkpoints (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="layerwise", help=argparse.SUPPRESS)
    parser.add_argument("--max-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--metric", default="bi", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--seqlen", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_prune(args.child, args.max_memory, args.metric, args.k, args.windows, args.seqlen, args.engine)
        return
    out = Path(args.out if not args.quick else tempfile.mkdtemp(prefix="prunecomp-speed-quick-"))
    out.mkdir(parents=True, exist_ok=True)
    for part in filter(None, args.parts.split(",")):  # --parts "" only assembles the table
        started = time.perf_counter()
        if part == "larger_than_memory":
            scratch = Path(tempfile.mkdtemp(prefix="prunecomp-speed-", dir=args.scratch))
            try:
                result = larger_than_memory(args.quick, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            result = {"bi_comp": bi_case, "ppl_metric": ppl_case}[part](args.device, args.quick)
        result |= {"seconds_part": time.perf_counter() - started, "torch_threads": torch.get_num_threads(),
                   "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
        (out / f"{part}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1), flush=True)
    parts = {p: json.loads((out / f"{p}.json").read_text()) for p in PARTS if (out / f"{p}.json").exists()}
    if len(parts) < len(PARTS):
        print(f"parts recorded so far in {out}: {sorted(parts)}")
        return
    results = parts
    summary = (f"passes_equivalent={results['bi_comp']['passes_equivalent']['layerwise']:.3f} "
               f"ppl_metric_ratio={results['ppl_metric']['ratio_sleb_over_layerwise']:.3f} "
               f"peak_rss_over_weights={results['larger_than_memory']['big']['peak_rss_over_weights']:.3f}")
    md = table(results)
    (out / "results.md").write_text(md + "\n")
    seconds = sum(p["seconds_part"] for p in parts.values())
    (out / "command.txt").write_text(f"PRUNECOMP_DATA=../shared/data OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
                                     f"python benchmarks/speed.py --device {args.device}\n"
                                     f"# wall time: {seconds / 60:.1f} min (sum of the parts)\n{summary}\n")
    print(md)
    print(summary)


if __name__ == "__main__":
    main()
