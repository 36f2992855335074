"""Reload pruned checkpoints with plain transformers (no prunecomp import) and report, per folder:
loading problems, the largest logit difference from the in-memory pruned model, and whether
greedy generation is the same with and without the KV cache.

Usage: python reload_check.py OUT.json DIR [DIR ...]; each DIR holds `expected.pt` with the
probe `ids` and the in-memory model's `logits`.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def greedy(model, ids, use_cache: bool) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return out[0].tolist()


def check(folder: str) -> dict:
    expected = torch.load(f"{folder}/expected.pt")
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    model.eval()
    ids = expected["ids"]
    with torch.no_grad():
        logits = model(ids).logits
    problems = {key: sorted(map(str, value)) for key, value in info.items() if value and key != "error_msgs"}
    return {
        "num_layers": model.config.num_hidden_layers,
        "loading_problems": problems,
        "max_abs_logit_diff": float((logits - expected["logits"]).abs().max()),
        "greedy_cached": greedy(model, ids[:1], True),
        "greedy_uncached": greedy(model, ids[:1], False),
    }


if __name__ == "__main__":
    assert "prunecomp" not in sys.modules
    results = {}
    for folder in sys.argv[2:]:
        try:
            results[folder] = check(folder)
        except Exception as exc:  # reported per folder, so one family's failure names itself
            results[folder] = {"error": f"{type(exc).__name__}: {exc}"}
    results["prunecomp_imported"] = "prunecomp" in sys.modules
    with open(sys.argv[1], "w") as handle:
        json.dump(results, handle)
