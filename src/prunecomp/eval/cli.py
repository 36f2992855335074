"""`prunecomp eval` and `prunecomp compare` (registered by prunecomp.cli)."""

from __future__ import annotations

import json
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _add_eval_options(parser, default_seqlen: int) -> None:
    parser.add_argument("--ppl", default="wikitext2,c4,ptb", help="perplexity datasets, comma-separated ('' for none)")
    parser.add_argument("--eval-seqlen", type=int, default=default_seqlen, help=f"perplexity window length (default {default_seqlen})")
    parser.add_argument("--max-windows", type=int, default=None, help="cap perplexity windows per dataset (CPU budget)")
    parser.add_argument("--tasks", default="", help="lm-eval tasks, comma-separated, e.g. arc_easy,boolq,copa,piqa,mmlu; "
                        "'paper' = the paper's nine QA tasks")
    parser.add_argument("--limit", type=int, default=None, help="lm-eval examples per task (per subject for MMLU)")
    parser.add_argument("--eval-protocol", default="default", choices=["default", "paper", "both"],
                        help="perplexity protocol: default (prunecomp's: WikiText-2/PTB test, local C4 validation) or paper "
                             "(the official code's: one BOS per stream, PTB validation, GPTQ's C4 crops; exact splits, "
                             "local stand-ins only with --allow-substitute)")


def _protocols(value: str) -> tuple[str, ...]:
    return ("default", "paper") if value == "both" else (value,)


def _tasks(value: str) -> tuple[str, ...]:
    from .harness import PAPER_QA_TASKS

    names = []
    for name in _csv(value):
        names.extend(PAPER_QA_TASKS if name == "paper" else (name,))
    return tuple(names)


def cmd_eval(args) -> int:
    from ..io import load_model
    from .harness import HarnessResult, paired_difference, retained, run_harness
    from .ppl import evaluate_perplexity

    tasks = _tasks(args.tasks)
    needs_model = bool(_csv(args.ppl)) or (tasks and args.backend == "hf")
    if needs_model:
        model, tokenizer, source = load_model(args.model, args.dtype, args.device)
    else:  # vLLM loads the checkpoint itself
        model, tokenizer = None, None
    report: dict = {"model": args.model, "ppl": {}, "harness": None}
    from .compare import ppl_key

    for protocol in _protocols(args.eval_protocol):
        for dataset in _csv(args.ppl):
            result = evaluate_perplexity(model, tokenizer, dataset, args.eval_seqlen, args.max_windows, args.batch_size,
                                         progress=not args.quiet, protocol=protocol, allow_substitute=args.allow_substitute)
            report["ppl"][ppl_key(dataset, protocol)] = result.to_dict()
            print(f"{dataset:>10}  ppl {result.perplexity:10.3f}   ({result.protocol()}; {result.origin})")
    if tasks:
        pretrained = args.model if args.backend == "vllm" else None
        harness = run_harness(None if args.backend == "vllm" else model, tokenizer, list(tasks), limit=args.limit,
                              batch_size=args.batch_size, backend=args.backend, pretrained_path=pretrained,
                              per_item=True)  # kept in --json, so a later run can pair its examples with these
        report["harness"] = harness.to_dict()
        for name, score in harness.tasks.items():
            norm = f"  acc_norm {100 * score.acc_norm:6.2f}" if score.acc_norm is not None else ""
            print(f"{name:>10}  acc {100 * score.acc:6.2f}{norm}   (n={score.n}, {score.num_fewshot}-shot, {score.source})")
        if harness.average is not None:
            print(f"{'average':>10}  acc {100 * harness.average:6.2f}")
        if args.dense_results:
            dense = json.loads(Path(args.dense_results).read_text())
            rp = retained(harness, HarnessResult.from_dict(dense["harness"]))
            report["retained"] = rp
            value = "n/a (dense average is 0)" if rp["rp"] is None else f"{rp['rp']:6.2f}%"
            print(f"{'RP':>10}  {value} of the dense model's average over {', '.join(rp['compared'])}")
            try:
                paired = paired_difference(harness, HarnessResult.from_dict(dense["harness"]))
            except ValueError as exc:  # an older dense JSON (no per-example results), or another --limit
                print(f"{'vs dense':>10}  no paired difference: {exc}")
            else:
                report["paired_vs_dense"] = paired
                gap = paired.get("average") or next(iter(paired.values()))
                print(f"{'vs dense':>10}  {100 * gap['diff']:+6.2f} points ± {100 * gap['se']:.2f} "
                      f"(paired SE over the same {gap['n']} examples)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"saved: {args.json}")
    return 0


def cmd_compare(args) -> int:
    from ..cli import calib_config
    from ..io import load_model
    from .compare import CompareConfig, EvalSettings, run_compare

    config = CompareConfig(
        metrics=_csv(args.metrics),
        num_layers=args.layers,
        ablation_metric=args.ablation or None,
        seed=args.seed,
        batch_size=args.batch_size,
        estimator=args.estimator,
        calib=calib_config(args, paper_defaults=args.preset == "paper"),
        preset=args.preset,
        evaluation=EvalSettings(ppl_datasets=_csv(args.ppl), seqlen=args.eval_seqlen, max_windows=args.max_windows,
                                tasks=_tasks(args.tasks), limit=args.limit, batch_size=args.batch_size,
                                protocols=_protocols(args.eval_protocol), allow_substitute=args.allow_substitute),
    )
    model, tokenizer, source = load_model(args.model, args.dtype, args.device)
    results = run_compare(model, tokenizer, source.name, config, args.out, progress=not args.quiet)
    print((Path(args.out) / "results.md").read_text(encoding="utf-8").split("\n## ")[1][:4000])
    print(f"saved: {Path(args.out) / 'results.json'}, results.md and plots ({len(results['methods'])} methods)")
    return 0


def add_subcommands(sub, add_model_options, add_calib_options, _prune_config) -> None:
    e = sub.add_parser("eval", help="perplexity (WikiText-2, C4, PTB) and lm-eval QA / MMLU of a model or checkpoint")
    e.add_argument("model", help="checkpoint folder, hub id, .gguf or built-in name")
    _add_eval_options(e, default_seqlen=2048)
    e.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="lm-eval backend; vllm loads the saved checkpoint (GPU)")
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--allow-substitute", action="store_true",
                   help="paper protocol offline: score local stand-ins for missing exact splits (printed with each number)")
    e.add_argument("--dense-results", default=None, help="JSON from `prunecomp eval --json` of the dense model, for RP (%%)")
    e.add_argument("--json", default=None, help="write the report as JSON here")
    e.add_argument("--quiet", action="store_true")
    add_model_options(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="dense vs each metric vs +Prune&Comp, plus the ablation; tables and plots")
    c.add_argument("model")
    c.add_argument("--metrics", default="bi,taylor,mag,ppl,cl", help="comma-separated metrics")
    c.add_argument("--layers", type=int, required=True, help="layers to remove (k)")
    c.add_argument("--ablation", default="bi", help="metric for the one-shot/iterative/compensation ablation ('' to skip)")
    c.add_argument("--out", required=True, help="output folder (results.json, results.md, PNGs, cache/)")
    c.add_argument("--estimator", default="auto", choices=["auto", "channel_mean", "channel_mean_windows", "token_rms"])
    c.add_argument("--quiet", action="store_true")
    _add_eval_options(c, default_seqlen=512)
    add_calib_options(c)
    add_model_options(c)
    c.set_defaults(func=cmd_compare)
