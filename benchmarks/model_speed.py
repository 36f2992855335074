"""The pruned model's own speed: greedy decode throughput and prefill latency, dense against pruned.

    OMP_NUM_THREADS=1 python benchmarks/model_speed.py smollm2-135m --remove 13,14,15,17,25 \
        --scales 1.0499,1.0757,1.1172,1.0637,1.0780 --out benchmarks/results/speed/model_speed.md

The pruned variants are built the way a recipe replays (`prunecomp.prune.apply_round`: fold the
scale into the writers before the cut, then remove the layer), deepest layer first. Three
models are timed in turn (dense, pruned with the fold, pruned without it), `--repeats` times
each, so that a drift in the machine's speed hits all of them; min and median are reported.

Decode: `generate` with greedy search and the KV cache, `--new-tokens` tokens after a
`--prompt`-token prompt, exactly that many (no early stop). Prefill: one forward over
`--prefill` tokens that also fills the cache, as `generate` does first.

Targets: the issue's "zero-overhead" bound pruned >= 0.95 * L / (L - k) * dense, and, since the
embedding/LM head do not shrink, the cost-model ideal (dense time * pruned/dense cost, from
parameter counts for decode, FLOPs for prefill).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from prunecomp.arch import resolve
from prunecomp.io import load_model
from prunecomp.prune import apply_round


def prune_fixed(model, remove: list[int], scales: list[float]):
    """A copy of `model` with original layers `remove` cut, each after folding its scale."""
    pruned = copy.deepcopy(model)
    arch = resolve(pruned)
    kept = list(range(arch.num_layers()))
    for layer, scale in sorted(zip(remove, scales), reverse=True):  # deepest first keeps indices valid
        apply_round(arch, kept, kept.index(layer), 1, scale)
    return pruned


@torch.no_grad()
def decode_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         use_cache=True, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return seconds


@torch.no_grad()
def prefill_seconds(model, prompt: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=prompt, use_cache=True)
    return time.perf_counter() - start


def layer_and_head_params(model) -> tuple[int, int]:
    """(parameters in decoder layers, parameters outside them: embedding/LM head, final norm)."""
    arch = resolve(model)
    layers = sum(p.numel() for layer in arch.layers() for p in layer.parameters())
    total = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    return layers, total - layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--remove", default="13,14,15,17,25", help="original layer indices to remove")
    parser.add_argument("--scales", default="1.0499,1.0757,1.1172,1.0637,1.0780", help="compensation scale per layer")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill", type=int, default=256, help="prompt tokens of the prefill measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    remove = [int(x) for x in args.remove.split(",")]
    scales = [float(x) for x in args.scales.split(",")]
    if len(scales) != len(remove):
        parser.error("--scales needs one value per removed layer")
    dense, _, _ = load_model(args.model)
    dense.eval()
    models = {
        "dense": dense,
        "pruned (Prune&Comp fold)": prune_fixed(dense, remove, scales),
        "pruned (no fold)": prune_fixed(dense, remove, [1.0] * len(remove)),
    }
    generator = torch.Generator().manual_seed(0)
    vocab = dense.config.vocab_size
    decode_prompt = torch.randint(100, vocab, (1, args.prompt), generator=generator)
    prefill_prompt = torch.randint(100, vocab, (1, args.prefill), generator=generator)
    for model in models.values():  # warm-up: first-call allocations, kernel selection
        decode_seconds(model, decode_prompt, 4)
        prefill_seconds(model, prefill_prompt[:, :32])

    decode: dict[str, list[float]] = {n: [] for n in models}
    prefill: dict[str, list[float]] = {n: [] for n in models}
    names = list(models)
    for repeat in range(args.repeats):
        for name in names[repeat % 3 :] + names[: repeat % 3]:  # rotate the order: no model always goes first
            model = models[name]
            decode[name].append(args.new_tokens / decode_seconds(model, decode_prompt, args.new_tokens))
            prefill[name].append(prefill_seconds(model, prefill_prompt))
        print(f"repeat {repeat + 1}: " + ", ".join(
            f"{n} {decode[n][-1]:.1f} tok/s {1000 * prefill[n][-1]:.0f} ms" for n in models), flush=True)

    total_layers = resolve(dense).num_layers()
    k = len(remove)
    bound = 0.95 * total_layers / (total_layers - k)
    dense_layers, head = layer_and_head_params(dense)
    pruned_layers, _ = layer_and_head_params(models["pruned (no fold)"])
    cost_ratio = (dense_layers + head) / (pruned_layers + head)  # decode: weights read per token
    vocab_flops = vocab * dense.config.hidden_size  # prefill: head matmul per token, same as its params
    prefill_cost_ratio = (dense_layers + vocab_flops) / (pruned_layers + vocab_flops)
    dense_tps = statistics.median(decode["dense"])
    dense_ms = statistics.median(prefill["dense"])

    lines = [
        f"# Pruned model speed: {args.model}, {k} of {total_layers} layers removed ({args.remove})",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {next(dense.parameters()).dtype}, CPU; "
        f"{args.repeats} interleaved repeats on a shared, noisy 2-core machine.",
        f"Decode: greedy `generate`, KV cache, {args.new_tokens} new tokens after {args.prompt} prompt tokens. "
        f"Prefill: one forward over {args.prefill} tokens (batch 1).",
        "",
        "| model | params | decode tok/s min | decode tok/s median | speed-up (median) | prefill ms min | "
        "prefill ms median | speed-up (median) |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        tps, ms = statistics.median(decode[name]), statistics.median(prefill[name])
        lines.append(f"| {name} | {params:,} | {min(decode[name]):.1f} | {tps:.1f} | {tps / dense_tps:.3f} | "
                     f"{1000 * min(prefill[name]):.0f} | {1000 * ms:.0f} | {dense_ms / ms:.3f} |")
    folded = "pruned (Prune&Comp fold)"
    # ratios repeat by repeat (each repeat times every model within a short span), then their median
    pruned_decode = statistics.median(p / d for p, d in zip(decode[folded], decode["dense"]))
    pruned_prefill = statistics.median(d / p for p, d in zip(prefill[folded], prefill["dense"]))
    fold_overhead = statistics.median(a / b for a, b in zip(decode["pruned (no fold)"], decode[folded]))
    lines += [
        "",
        "Speed-ups below are medians of the repeat-by-repeat ratios (pruned with the fold over dense).",
        "",
        f"- issue target 0.95 x L/(L-k) = {bound:.3f}: decode {pruned_decode:.3f} "
        f"({'met' if pruned_decode >= bound else 'not met'}), prefill {pruned_prefill:.3f} "
        f"({'met' if pruned_prefill >= bound else 'not met'}).",
        f"- cost-model ideal (the embedding/LM head, {head:,} parameters, is not pruned): decode {cost_ratio:.3f}, "
        f"prefill {prefill_cost_ratio:.3f}; measured / ideal: decode {pruned_decode / cost_ratio:.3f}, "
        f"prefill {pruned_prefill / prefill_cost_ratio:.3f}.",
        f"- the fold adds no operation (same modules, rescaled weights): decode no-fold / fold = {fold_overhead:.3f}.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
