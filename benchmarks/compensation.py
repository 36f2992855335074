"""Fused linear compensation vs the paper's scalar: the README's "Beyond the paper" section.

    PRUNECOMP_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/compensation.py smollm2 \
        --methods none,scalar,scalar+linear-rel,scalar+recon [--metric bi] [--qa-limit 200] [--report]

Every method prunes the same dense model with the same calibration windows (C4 documents from
$PRUNECOMP_DATA/c4/c4-en-1000docs.json.gz) and is evaluated on different text: WikiText-2 test,
the local C4 validation subset (Paloma's Guardian domain, not in the calibration file) and PTB
test, plus zero-shot QA through lm-eval when --qa-limit is given. One JSON per (model, metric,
method) goes to benchmarks/results/compensation/<model>/ (<model>/calib<N>/ for --calib-windows N
other than 32); finished ones are skipped, so runs resume. --report writes results.md from
whatever is there.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch

from prunecomp.arch import resolve
from prunecomp.config import CalibConfig, PruneConfig
from prunecomp.eval.harness import HarnessResult, TaskScore, paired_difference
from prunecomp.eval.ppl import evaluate_perplexity
from prunecomp.io import load_model
from prunecomp.prune import calibration_windows, prune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "compensation"
QA_TASKS = ("arc_easy", "boolq", "copa", "piqa")
PPL = ("wikitext2", "c4", "ptb")
DEFAULT_CALIB_WINDOWS = 32
MODELS = {
    "smollm2": dict(source="smollm2-135m", k=5, ppl_windows=16),
    "gemma3": dict(source="gemma3-270m", k=3, ppl_windows=8),
}


def calib_file() -> str:
    return str(Path(os.environ["PRUNECOMP_DATA"]) / "c4" / "c4-en-1000docs.json.gz")


def evaluate(model, tokenizer, ppl_windows: int, qa_limit: int | None, batch_size: int) -> dict:
    out = {"ppl": {}, "ppl_protocol": {}}
    for name in PPL:
        res = evaluate_perplexity(model, tokenizer, name, seqlen=512, max_windows=ppl_windows, batch_size=batch_size)
        out["ppl"][name] = res.perplexity
        out["ppl_protocol"][name] = res.protocol()
    out["ppl_avg"] = sum(out["ppl"].values()) / len(PPL)
    if qa_limit:
        from prunecomp.eval.harness import run_harness

        qa = run_harness(model, tokenizer, QA_TASKS, limit=qa_limit, batch_size=batch_size, per_item=True)
        out["qa"] = {k: {"acc": v.acc, "stderr": v.acc_stderr, "n": v.n} for k, v in qa.tasks.items()}
        out["qa_items"] = qa.items  # for paired differences between methods on the same examples
        out["qa_avg"] = qa.average
        # the mean of independent task accuracies: SE = sqrt(sum se^2) / #tasks
        out["qa_avg_stderr"] = math.sqrt(sum((v.acc_stderr or 0) ** 2 for v in qa.tasks.values())) / len(qa.tasks)
    return out


def run_one(name: str, metric: str, method: str, dense, tokenizer, windows, calib_info, args) -> dict:
    path = results_dir(name, args.calib_windows) / f"{metric}-{method}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if not args.qa_limit or cached.get("qa_limit") == args.qa_limit:
            return cached
    spec = MODELS[name]
    model = copy.deepcopy(dense)
    started = time.perf_counter()
    if method == "dense":
        record = {"method": "dense", "removed": [], "rounds": [], "prune_s": 0.0}
    else:
        comp, _, select = method.partition("@")  # "scalar+linear-rel@compensated": compensation-aware selection
        config = PruneConfig(metric=metric, num_layers=spec["k"], batch_size=args.batch_size, comp=comp,
                             select=select or "metric", select_top=args.select_top)
        result = prune(model, tokenizer, config, windows)
        comp_rounds = result.recipe.calibration.get("comp_rounds", {})
        rounds = [{"removed": r.removed, "scale": r.scale, "map": comp_rounds.get(str(i))}
                  for i, r in enumerate(result.recipe.rounds)]
        record = {"method": method, "removed": result.recipe.removed_layers, "rounds": rounds, "prune_s": result.seconds,
                  "recon": result.recipe.calibration.get("comp_recon", {})}  # --comp *recon*: the refitted layers
    record["params"] = resolve(model).parameter_count()
    record |= evaluate(model, tokenizer, spec["ppl_windows"], args.qa_limit, args.batch_size)
    record["qa_limit"] = args.qa_limit
    record["calibration"] = calib_info
    record["total_s"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"{name} {metric} {method}: removed {record['removed']} ppl {record['ppl']} avg {record['ppl_avg']:.2f}"
          f" qa {record.get('qa_avg')} ({record['total_s']:.0f}s)", flush=True)
    return record


def _harness(record: dict) -> HarnessResult:
    tasks = {k: TaskScore(name=k, task=k, source="local", acc=v["acc"], acc_stderr=v["stderr"], n=v["n"], num_fewshot=0)
             for k, v in record["qa"].items()}
    return HarnessResult(tasks=tasks, items=record["qa_items"])


def paired_qa(rows: list[dict]) -> list[str]:
    """Each method's QA average minus the same metric's scalar (and dense minus scalar), paired per item."""
    by_file = {r["file"]: r for r in rows if "qa_items" in r}
    lines = []
    for r in rows:
        metric = r["file"].split("-")[0]
        # every method against the scalar; the refit (recon) also against the per-cut maps it competes with
        for base_method in ("scalar", "scalar+linear") if "recon" in r["method"] else ("scalar",):
            base = by_file.get(f"{metric}-{base_method}")
            if r["file"] not in by_file or base is None or r is base:
                continue
            d = paired_difference(_harness(r), _harness(base))
            per_task = ", ".join(f"{k} {100 * v['diff']:+.2f} ± {100 * v['se']:.2f}" for k, v in d.items() if k != "average")
            label = "dense" if r["method"] == "dense" else f"{metric} {r['method']}"
            lines.append(f"| {label} − {metric} {base_method} | {100 * d['average']['diff']:+.2f} ± "
                         f"{100 * d['average']['se']:.2f} | {per_task} |")
    if not lines:
        return []
    return ["", "QA accuracy differences on the same items (points; ± paired SE):", "",
            "| Comparison | QA avg | Per task |", "| :--- | ---: | :--- |", *lines]


def results_dir(name: str, calib_windows: int) -> Path:
    """One folder per model; a non-default calibration size gets its own (its rows compare only with each other)."""
    return OUT / name if calib_windows == DEFAULT_CALIB_WINDOWS else OUT / name / f"calib{calib_windows}"


def report(name: str, folder: Path) -> str:
    rows = [json.loads(p.read_text()) | {"file": p.stem} for p in sorted(folder.glob("*.json"))]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    if dense is None and (OUT / name / "bi-dense.json").exists():  # the dense model needs no calibration
        dense = json.loads((OUT / name / "bi-dense.json").read_text())
    lines = [f"### {MODELS[name]['source']} (k = {MODELS[name]['k']})", "",
             "| Metric | Compensation | Removed | WikiText-2 | C4 | PTB | PPL avg | × dense | QA avg (± SE) | QA w/o BoolQ "
             "| Maps (values) |",
             "| :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {m: i for i, m in enumerate(["dense", "none", "scalar"])}
    for r in sorted(rows, key=lambda r: (r["method"] != "dense", r["file"].split("-")[0], order.get(r["method"], 9), r["method"])):
        metric = "—" if r["method"] == "dense" else r["file"].split("-")[0]
        ratio = r["ppl_avg"] / dense["ppl_avg"] if dense else float("nan")
        qa = f"{100 * r['qa_avg']:.2f} ± {100 * r['qa_avg_stderr']:.2f}" if "qa_avg" in r else "—"
        # a 135M model's BoolQ mostly measures its yes/no bias (dense SmolLM2 is below the majority class)
        rest = [v["acc"] for k, v in r.get("qa", {}).items() if k != "boolq"]
        qa_rest = f"{100 * sum(rest) / len(rest):.2f}" if rest else "—"
        values = sum((x.get("map") or {}).get("values", 0) for x in r["rounds"])
        values += sum(x.get("values", 0) for x in r.get("recon", {}).values())
        lines.append(f"| {metric} | {r['method']} | {', '.join(map(str, r['removed'])) or '—'} | {r['ppl']['wikitext2']:.2f} "
                     f"| {r['ppl']['c4']:.2f} | {r['ppl']['ptb']:.2f} | {r['ppl_avg']:.2f} | {ratio:.2f} | {qa} | {qa_rest} | {values:,} |")
    if rows:
        protocol = rows[0]["ppl_protocol"]
        lines += ["", "_Perplexity: " + "; ".join(f"{k}: {v}" for k, v in protocol.items()) + "._"]
        qa_rows = [r for r in rows if "qa" in r]
        if qa_rows:
            counts = ", ".join(f"{k} {v['n']}" for k, v in qa_rows[0]["qa"].items())
            lines.append(f"_QA: zero-shot acc over {counts} items (first items of each task); SE of the average from the "
                         f"per-task binomial SEs._")
        c = rows[0]["calibration"]
        lines.append(f"_Calibration: {c['num_windows']} x {c['seqlen']} tokens from {Path(c['source']).name}, seed {c['seed']}._")
        lines += paired_qa(rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--methods", default="dense,none,scalar,linear,scalar+linear,scalar+linear-rel")
    parser.add_argument("--metric", default="bi")
    parser.add_argument("--calib-windows", type=int, default=DEFAULT_CALIB_WINDOWS)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--qa-limit", type=int, default=None)
    parser.add_argument("--select-top", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.methods:
        dense, tokenizer, _ = load_model(MODELS[args.model]["source"])
        windows, calib_info = calibration_windows(
            tokenizer, CalibConfig(source=calib_file(), num_windows=args.calib_windows, seqlen=args.seqlen, seed=0))
        for method in args.methods.split(","):
            run_one(args.model, args.metric, method, dense, tokenizer, windows, calib_info, args)
    if args.report:
        folder = results_dir(args.model, args.calib_windows)
        (folder / "results.md").write_text(report(args.model, folder))
        print(report(args.model, folder))


if __name__ == "__main__":
    main()
