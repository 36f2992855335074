"""The README's results section: Prune&Comp vs baselines on the two real models available offline.

    PRUNECOMP_DATA=../shared/data python benchmarks/quality.py [smollm2|gemma3|smollm2-paper ...] [--readme]

Each run is one `prunecomp compare` with the settings below (sized for a 2-core CPU), writing
results.json, results.md and plots into benchmarks/results/<run>/. Runs resume from their cache.
The `-paper` run uses the paper preset (`--preset paper`: the official protocol's data, samplers
and metric details, with WikiText-2 validation and the local C4 sample substituted for the train
splits that are not available offline, shrunk to 8 x 512-token scoring windows and 512-token
Taylor+ crops) and reports both evaluation protocols on 4 x 512-token windows per dataset (noisy: a few percent). With --readme, the tables are copied into README.md between the RESULTS markers.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from prunecomp.config import CalibConfig
from prunecomp.eval.compare import CompareConfig, EvalSettings, run_compare
from prunecomp.io import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QA_TASKS = ("arc_easy", "boolq", "copa", "piqa")

RUNS = {
    "smollm2": dict(
        source="smollm2-135m",
        config=CompareConfig(
            metrics=("bi", "taylor", "mag", "ppl", "cl"),
            num_layers=5,
            ablation_metric="bi",
            calib=CalibConfig(source="c4:train", num_windows=8, seqlen=256, seed=0),
            evaluation=EvalSettings(ppl_datasets=("wikitext2", "c4", "ptb"), seqlen=512, max_windows=8,
                                    protocols=("default", "paper"), allow_substitute=True,
                                    tasks=QA_TASKS, limit=50, batch_size=4),
            batch_size=4,
        ),
    ),
    "gemma3": dict(
        source="gemma3-270m",
        config=CompareConfig(
            # BI, Taylor+ and CL: the full grid for Mag+ and PPL as well did not fit this CPU's budget.
            metrics=("bi", "taylor", "cl"),
            num_layers=3,
            ablation_metric="bi",
            calib=CalibConfig(source="c4:train", num_windows=8, seqlen=256, seed=0),
            # Gemma's 262k-token vocabulary makes every scored token ~2x SmolLM2's cost: smaller eval budget.
            evaluation=EvalSettings(ppl_datasets=("wikitext2", "c4", "ptb"), seqlen=512, max_windows=4,
                                    protocols=("default", "paper"), allow_substitute=True,
                                    tasks=QA_TASKS, limit=25, batch_size=2),
            batch_size=2,
        ),
    ),
    "smollm2-paper": dict(
        source="smollm2-135m",
        config=CompareConfig(
            # BI and Taylor+ only: the paper's grid for the other metrics did not fit this CPU's budget.
            metrics=("bi", "taylor"),
            num_layers=5,
            ablation_metric=None,  # every metric has the full 2x2 grid
            preset="paper",
            calib=CalibConfig(num_windows=8, seqlen=512, allow_substitute=True),
            evaluation=EvalSettings(ppl_datasets=("wikitext2", "c4", "ptb"), seqlen=512, max_windows=4,
                                    protocols=("default", "paper"), allow_substitute=True, batch_size=1),
            batch_size=2,
        ),
    ),
    "gemma3-paper": dict(
        source="gemma3-270m",
        config=CompareConfig(
            metrics=("bi", "taylor"),
            num_layers=3,
            ablation_metric=None,
            preset="paper",
            calib=CalibConfig(num_windows=8, seqlen=512, allow_substitute=True),
            evaluation=EvalSettings(ppl_datasets=("wikitext2", "c4", "ptb"), seqlen=512, max_windows=4,
                                    protocols=("default", "paper"), allow_substitute=True, batch_size=1),
            batch_size=1,
        ),
    ),
}


def command_line(name: str) -> str:
    cfg = RUNS[name]["config"]
    ev = cfg.evaluation
    calib = (f"--preset paper --allow-substitute --calib-windows {cfg.calib.num_windows} --seqlen {cfg.calib.seqlen}"
             if cfg.preset else f"--calib {cfg.calib.source} --calib-windows {cfg.calib.num_windows} --seqlen {cfg.calib.seqlen}")
    protocol = "both" if len(ev.protocols) > 1 else ev.protocols[0]
    tasks = f" --tasks {','.join(ev.tasks)} --limit {ev.limit}" if ev.tasks else ""
    return (f"prunecomp compare {RUNS[name]['source']} --metrics {','.join(cfg.metrics)} --layers {cfg.num_layers} "
            f"--ablation '{cfg.ablation_metric or ''}' {calib} --ppl {','.join(ev.ppl_datasets)} --eval-protocol {protocol} "
            f"--eval-seqlen {ev.seqlen} --max-windows {ev.max_windows}{tasks} --batch-size {cfg.batch_size} "
            f"--out benchmarks/results/{name}")


def run(name: str) -> float:
    spec = RUNS[name]
    command = RESULTS / name / "command.txt"
    cache = RESULTS / name / "cache"
    before = set(cache.glob("*.json")) if cache.is_dir() else set()
    started = time.perf_counter()
    model, tokenizer, source = load_model(spec["source"])
    run_compare(model, tokenizer, source.name, spec["config"], RESULTS / name, progress=True)
    elapsed = time.perf_counter() - started
    timing = f"# wall time: {elapsed / 60:.1f} min"
    if before and set(cache.glob("*.json")) <= before and command.exists():  # only re-rendered from the cache
        timing = "\n".join(line for line in command.read_text().splitlines() if line.startswith("#"))
    command.write_text(f"{command_line(name)}\n{timing}\n")
    return elapsed


def update_readme() -> None:
    parts = []
    for name in RUNS:
        md = RESULTS / name / "results.md"
        if not md.exists():
            continue
        body = md.read_text(encoding="utf-8")
        body = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"![{m.group(1)}](benchmarks/results/{name}/{m.group(2)})", body)
        body = re.sub(r"^#", "###", body, flags=re.M)  # nest under the README's section
        command = (RESULTS / name / "command.txt").read_text(encoding="utf-8").strip()
        parts.append(f"Generated by `python benchmarks/quality.py {name} --readme`, i.e.\n\n```\n{command}\n```\n\n{body}")
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"
    if start not in text:
        raise SystemExit("README.md has no RESULTS markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + "\n" + "\n\n".join(parts) + "\n" + end + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"which of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--readme", action="store_true", help="copy the tables into README.md")
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(RUNS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {list(RUNS)}")
    for name in args.models or list(RUNS):
        print(f"{name}: {run(name) / 60:.1f} min", flush=True)
    if args.readme:
        update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
