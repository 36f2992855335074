"""lm-eval log-likelihood throughput: lm-eval's own loop (the old settings) against prunecomp's packed scorer.

    OMP_NUM_THREADS=1 PRUNECOMP_DATA=... python benchmarks/eval_throughput.py smollm2-135m \
        --task arc_easy --limit 40 --repeats 3 --out benchmarks/results/speed/eval_throughput.md

Both settings score the same items (the first `--limit` documents of the shipped offline task)
through `prunecomp.eval.harness.run_harness`, alternately (old, new, old, new, ...) so that a
drift in the machine's speed hits both. Timed is lm-eval's `loglikelihood` call (tokenisation and
scoring of every request), not model loading or task building. "old" is `pack_tokens=0` with
`--old-batch-size` requests per forward (1 was the default); "new" is the packed scorer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from prunecomp.eval.harness import DEFAULT_PACK_TOKENS, run_harness
from prunecomp.io import load_model


@contextmanager
def timed_loglikelihood(log: list[tuple[int, float]]):
    """Record (requests, seconds) of every lm-eval ``loglikelihood`` call made inside."""
    from lm_eval.models.huggingface import HFLM

    original = HFLM.loglikelihood

    def wrapper(self, requests, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, requests, *args, **kwargs)
        log.append((len(requests), time.perf_counter() - start))
        return out

    HFLM.loglikelihood = wrapper
    try:
        yield
    finally:
        HFLM.loglikelihood = original


def measure(model, tokenizer, task: str, limit: int, pack_tokens: int, batch_size: int) -> dict:
    log: list[tuple[int, float]] = []
    with timed_loglikelihood(log):
        result = run_harness(model, tokenizer, [task], limit=limit, batch_size=batch_size, pack_tokens=pack_tokens)
    requests = sum(n for n, _ in log)
    seconds = sum(s for _, s in log)
    score = result.tasks[task]
    return {"requests": requests, "seconds": seconds, "rps": requests / seconds, "acc": score.acc,
            "acc_norm": score.acc_norm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-batch-size", type=int, default=1, help="lm-eval batch size of the old settings")
    parser.add_argument("--pack-tokens", type=int, default=DEFAULT_PACK_TOKENS, help="token budget of the packed scorer")
    parser.add_argument("--only", choices=["old", "new"], default=None, help="measure one setting only")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()

    model, tokenizer, _ = load_model(args.model)
    settings = {"old": dict(pack_tokens=0, batch_size=args.old_batch_size),
                "new": dict(pack_tokens=args.pack_tokens, batch_size=args.old_batch_size)}
    names = [args.only] if args.only else ["old", "new"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        for name in names:
            run = measure(model, tokenizer, args.task, args.limit, **settings[name])
            runs[name].append(run)
            print(f"repeat {repeat + 1} {name}: {run['requests']} requests in {run['seconds']:.2f} s "
                  f"= {run['rps']:.2f} req/s (acc {run['acc']:.4f})", flush=True)

    lines = [
        f"# lm-eval log-likelihood throughput: {args.model}, {args.task}, first {args.limit} questions",
        "",
        f"torch threads: {torch.get_num_threads()}; dtype: {next(model.parameters()).dtype}; "
        f"{args.repeats} alternating repeats on a shared, noisy 2-core CPU.",
        "",
        "| setting | requests | req/s min | req/s median | req/s max | acc | acc_norm |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    label = {"old": f"old: lm-eval loop, batch size {args.old_batch_size}",
             "new": f"new: packed, {args.pack_tokens} tokens per forward"}
    for name in names:
        rps = [r["rps"] for r in runs[name]]
        first = runs[name][0]
        lines.append(f"| {label[name]} | {first['requests']} | {min(rps):.2f} | {statistics.median(rps):.2f} | "
                     f"{max(rps):.2f} | {first['acc']:.4f} | {first['acc_norm']:.4f} |")
    if len(names) == 2:
        ratios = [n["rps"] / o["rps"] for o, n in zip(runs["old"], runs["new"])]
        lines += ["", f"speed-up (new/old, pair by pair): min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x, "
                      f"max {max(ratios):.1f}x"]
        same = all(o["acc"] == n["acc"] and o["acc_norm"] == n["acc_norm"] for o, n in zip(runs["old"], runs["new"]))
        lines.append(f"same accuracies: {same}")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
