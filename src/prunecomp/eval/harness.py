"""Bridge to EleutherAI's lm-evaluation-harness: zero-shot QA and 5-shot MMLU, offline when possible.

    from prunecomp.eval.harness import run_harness, retained
    dense = run_harness(model, tokenizer, ["arc_easy", "boolq", "copa", "piqa", "mmlu"])
    pruned = run_harness(pruned_model, tokenizer, ["arc_easy", "boolq", "copa", "piqa", "mmlu"])
    retained(pruned, dense)["rp"]        # the paper's relative performance, in %

Task names are the paper's user-facing names (:data:`PAPER_QA_TASKS` plus :data:`MMLU`).
:func:`resolve_tasks` maps each to a task definition shipped in ``prunecomp/eval/tasks``
(``prunecomp_arc_easy``, ..., group ``prunecomp_mmlu``) when its files exist under the data
directory (``data_dir=`` or ``$PRUNECOMP_DATA``), else to lm-eval's own task, which downloads
its dataset from the Hugging Face hub. The shipped tasks load local files through
``custom_dataset`` loaders (``tasks/loaders.py``) and rebuild lm-eval's exact prompts, so their
numbers are comparable with lm-eval's ``arc_easy``/``boolq``/``copa``/``piqa``/``mmlu``.

Scoring: QA tasks are zero-shot; MMLU is 5-shot (the subject's ``dev`` rows) and reported as
the micro average over every scored test question (= lm-eval's size-weighted group accuracy).
``limit`` caps the examples per leaf task, so MMLU with ``limit=k`` scores up to ``57 * k``
questions.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_PACK_TOKENS",
    "LOCAL_TASKS",
    "MMLU",
    "PAPER_QA_TASKS",
    "TASKS_DIR",
    "HarnessResult",
    "TaskChoice",
    "TaskScore",
    "mmlu_subjects",
    "paired_difference",
    "resolve_tasks",
    "retained",
    "run_harness",
    "vllm_model_spec",
]

#: Zero-shot QA tasks of the paper, by lm-eval name.
PAPER_QA_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "boolq",
    "copa",
    "hellaswag",
    "piqa",
    "race",
    "winogrande",
    "wsc273",
)
#: 5-shot MMLU (57 subjects), reported as accuracy weighted by subject size.
MMLU = "mmlu"
#: Tasks with an offline definition shipped in prunecomp (used when their data files exist).
LOCAL_TASKS: tuple[str, ...] = ("arc_easy", "boolq", "copa", "piqa", MMLU)
#: Directory of the shipped lm-eval task YAMLs (passed to lm-eval's ``TaskManager(include_path=...)``).
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_ENV = "PRUNECOMP_DATA"
MMLU_FEWSHOT = 5
#: Tokens per packed forward of the log-likelihood scorer (see :func:`run_harness`); on one CPU
#: core a row of a few hundred tokens runs near peak matmul speed while attention over it stays cheap.
DEFAULT_PACK_TOKENS = 512

Source = Literal["local", "lm-eval"]

# user-facing name -> data files (relative to the data dir) that the local definition needs
_LOCAL_FILES: dict[str, tuple[str, ...]] = {
    "arc_easy": ("arc_easy/arc_easy_test.mosaicml.jsonl",),
    "boolq": ("boolq/boolq_val.mosaicml.jsonl",),
    "copa": ("copa/copa_val.mosaicml.jsonl",),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
}
_LOCAL_PREFIX = "prunecomp_"
# lm-eval log lines that are noise for in-process use
_NOISE = (
    "Custom kwargs can be passed to `--metadata`",
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)
log = logging.getLogger(__name__)


def mmlu_subjects() -> tuple[str, ...]:
    """The 57 MMLU subjects, read from the shipped ``tasks/mmlu/prunecomp_mmlu_<subject>.yaml`` files."""
    prefix = f"{_LOCAL_PREFIX}mmlu_"
    return tuple(sorted(p.stem[len(prefix) :] for p in (TASKS_DIR / "mmlu").glob(f"{prefix}*.yaml")))


@dataclass(frozen=True)
class TaskChoice:
    """How one user-facing task name is evaluated.

    ``task`` is the lm-eval task (or group, for MMLU) name; ``source`` is ``"local"`` for a
    definition shipped in prunecomp reading files under the data dir, ``"lm-eval"`` for
    lm-eval's own task (needs the HF hub). ``subjects`` (local MMLU only) lists the subjects
    found under the data dir: all 57 normally, fewer for a partial copy (e.g. test fixtures).
    """

    name: str
    task: str
    source: Source
    num_fewshot: int
    subjects: tuple[str, ...] = ()

    @property
    def is_group(self) -> bool:
        return self.name == MMLU


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    return Path(root).expanduser().resolve() if root else None


def _local_subjects(root: Path | None) -> tuple[str, ...]:
    """MMLU subjects whose ``dev`` and ``test`` CSVs both exist under ``root``."""
    if root is None:
        return ()
    data = root / "mmlu" / "data"
    return tuple(
        s for s in mmlu_subjects() if all((data / sp / f"{s}_{sp}.csv").is_file() for sp in ("dev", "test"))
    )


def _has_local(name: str, root: Path | None) -> bool:
    if root is None:
        return False
    if name == MMLU:
        return bool(_local_subjects(root))
    return name in _LOCAL_FILES and all((root / f).is_file() for f in _LOCAL_FILES[name])


def resolve_tasks(
    names: str | Iterable[str], data_dir: str | os.PathLike[str] | None = None
) -> list[TaskChoice]:
    """Map user-facing task names to task definitions (duplicates dropped, order kept).

    A name in :data:`LOCAL_TASKS` whose files exist under ``data_dir`` (default:
    ``$PRUNECOMP_DATA``) gets the shipped offline definition; any other known name gets
    lm-eval's own task (which needs internet). Unknown names raise :class:`ValueError`.
    MMLU is local as soon as one subject has its ``dev`` and ``test`` files; a partial copy is
    logged as a warning and evaluated over the subjects present.
    """
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    names = list(dict.fromkeys(names))
    known = (*PAPER_QA_TASKS, MMLU)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown}; choose from {list(known)}")
    if not names:
        raise ValueError(f"no evaluation tasks given; choose from {list(known)}")
    root = _data_dir(data_dir)
    out = []
    for name in names:
        local = _has_local(name, root)
        subjects = _local_subjects(root) if local and name == MMLU else ()
        if subjects and len(subjects) < len(mmlu_subjects()):
            log.warning("MMLU: only %d of %d subjects found under %s", len(subjects), len(mmlu_subjects()), root)
        out.append(
            TaskChoice(
                name=name,
                task=f"{_LOCAL_PREFIX}{name}" if local else name,
                source="local" if local else "lm-eval",
                num_fewshot=MMLU_FEWSHOT if name == MMLU else 0,
                subjects=subjects,
            )
        )
    return out


@dataclass(frozen=True)
class TaskScore:
    """Scores of one user-facing task.

    ``n`` is the number of examples scored (for MMLU: test questions over all subjects);
    ``subtasks`` (MMLU only) maps subject -> ``[acc, n]``.
    """

    name: str
    task: str
    source: Source
    acc: float
    acc_stderr: float | None
    n: int
    num_fewshot: int
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    subtasks: dict[str, list[float | int]] = field(default_factory=dict)


@dataclass
class HarnessResult:
    """lm-eval scores per user-facing task name, plus the paper's summary numbers.

    :attr:`average` is the unweighted mean of ``acc`` (not ``acc_norm``) over the zero-shot QA
    tasks present (everything but MMLU), as in the paper's "Avg" column; :attr:`mmlu_acc` is
    MMLU's accuracy micro-averaged over all scored questions. ``raw`` keeps lm-eval's own
    ``results`` dict (not part of :meth:`to_dict`).
    """

    tasks: dict[str, TaskScore]
    limit: int | float | None = None
    backend: str = "hf"
    seed: int = 0
    runtime_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: ``run_harness(per_item=True)``: each task's 0/1 correctness per example, in document order
    items: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def qa(self) -> dict[str, TaskScore]:
        return {k: v for k, v in self.tasks.items() if k != MMLU}

    @property
    def average(self) -> float | None:
        qa = self.qa
        return sum(s.acc for s in qa.values()) / len(qa) if qa else None

    @property
    def mmlu(self) -> TaskScore | None:
        return self.tasks.get(MMLU)

    @property
    def mmlu_acc(self) -> float | None:
        return self.mmlu.acc if self.mmlu else None

    @property
    def mmlu_questions(self) -> int | None:
        return self.mmlu.n if self.mmlu else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (round-trips through :meth:`from_dict`)."""
        return {
            "tasks": {k: asdict(v) for k, v in self.tasks.items()},
            "average": self.average,
            "mmlu": None if self.mmlu is None else {"acc": self.mmlu.acc, "questions": self.mmlu.n},
            "limit": self.limit,
            "backend": self.backend,
            "seed": self.seed,
            "runtime_s": self.runtime_s,
        } | ({"items": self.items} if self.items else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HarnessResult:
        """Rebuild from :meth:`to_dict` output (e.g. a dense baseline saved as JSON)."""
        return cls(
            tasks={k: TaskScore(**v) for k, v in data["tasks"].items()},
            limit=data.get("limit"),
            backend=data.get("backend", "hf"),
            seed=data.get("seed", 0),
            runtime_s=data.get("runtime_s", 0.0),
            items={k: list(v) for k, v in data.get("items", {}).items()},
        )


def paired_difference(a: HarnessResult, b: HarnessResult) -> dict[str, dict[str, float]]:
    """Accuracy of ``a`` minus ``b`` per task and for the QA average, with paired standard errors.

    Both results must come from ``run_harness(per_item=True)`` on the same examples. Two models
    scored on the same items mostly agree, so the SE of their difference, sqrt(var(d_i) / n) over
    the per-item differences d_i, is much smaller than either model's own binomial SE: that is what
    says whether a 1-point gap is noise. The average's difference is the mean of the QA tasks'
    differences (as :attr:`HarnessResult.average`), its SE sqrt(sum se_t^2) / #tasks.
    """
    out: dict[str, dict[str, float]] = {}
    for name in a.tasks:
        x, y = a.items.get(name), b.items.get(name)
        if x is None or y is None:
            raise ValueError(f"no per-item scores for {name!r}: run both with run_harness(per_item=True)")
        if len(x) != len(y):
            raise ValueError(f"{name!r} scored {len(x)} and {len(y)} examples; compare the same examples")
        d = [float(i - j) for i, j in zip(x, y)]
        mean = sum(d) / len(d)
        var = sum((v - mean) ** 2 for v in d) / (len(d) - 1) if len(d) > 1 else float("nan")
        out[name] = {"diff": mean, "se": math.sqrt(var / len(d)), "n": len(d)}
    qa = [v for k, v in out.items() if k != MMLU]
    if qa:
        out["average"] = {"diff": sum(v["diff"] for v in qa) / len(qa),
                          "se": math.sqrt(sum(v["se"] ** 2 for v in qa)) / len(qa), "n": sum(v["n"] for v in qa)}
    return out


def _ratio(p: float | None, d: float | None) -> float | None:
    return None if p is None or not d else 100.0 * p / d


def retained(pruned: HarnessResult, dense: HarnessResult) -> dict[str, Any]:
    """Relative performance of a pruned model: ``rp = 100 * pruned_average / dense_average`` (%).

    Both averages are taken over the QA tasks the two results share (so they are comparable);
    ``tasks`` gives ``100 * pruned_acc / dense_acc`` per shared task, MMLU included when both have it.
    """
    common = [n for n in dense.qa if n in pruned.qa]
    if not common:
        raise ValueError("retained(): the pruned and dense results share no QA task")
    p_avg = sum(pruned.tasks[n].acc for n in common) / len(common)
    d_avg = sum(dense.tasks[n].acc for n in common) / len(common)
    shared = [n for n in dense.tasks if n in pruned.tasks]
    return {
        "rp": _ratio(p_avg, d_avg),
        "pruned_average": p_avg,
        "dense_average": d_avg,
        "compared": common,
        "tasks": {n: _ratio(pruned.tasks[n].acc, dense.tasks[n].acc) for n in shared},
    }


def _scores_agree(packed: Any, plain: Any, dtype: Any) -> bool:
    import torch

    atol, rtol = (1e-3, 1e-4) if dtype in (torch.float32, torch.float64) else (5e-2, 2e-2)
    return abs(packed.logprob - plain.logprob) <= atol + rtol * abs(plain.logprob)


def _packed_lm_class() -> type:
    """lm-eval's ``HFLM`` with log-likelihood requests scored by the packed scorer.

    Built lazily so that importing this module does not import lm-eval. The first call checks
    the packed scores of its first requests against plain one-request-per-row scores; a
    model whose attention ignores custom 4-D masks or explicit positions fails that check and
    is scored by lm-eval's own loop instead (with a warning).
    """
    from lm_eval.models.huggingface import HFLM

    from ..nll import packed_continuation_scores, plain_continuation_scores

    class PackedHFLM(HFLM):
        token_budget: int = DEFAULT_PACK_TOKENS
        packing_ok: bool | None = None  # None until the first log-likelihood call checked it

        def _agrees_with_plain(self, pairs: list[tuple[list[int], list[int]]], packed: list[Any]) -> bool:
            """Once per instance: the packed scores of the first requests equal the plain ones."""
            if self.packing_ok is None:
                sample = pairs[:4]
                plain = plain_continuation_scores(self.model, sample, self.max_length)
                dtype = next(self.model.parameters()).dtype
                self.packing_ok = all(_scores_agree(a, b, dtype) for a, b in zip(packed, plain))
                if not self.packing_ok:
                    log.warning("packed scores differ from plain ones for this model; using lm-eval's loop")
            return self.packing_ok

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
            scores = None
            if self.backend == "causal" and pairs and self.packing_ok is not False:
                try:
                    scores = packed_continuation_scores(
                        self.model, pairs, self.token_budget, self.max_length, progress=not disable_tqdm
                    )
                except (RuntimeError, ValueError, TypeError) as exc:
                    log.warning("packed log-likelihood scoring failed (%s); using lm-eval's loop", exc)
                    self.packing_ok = False
            if scores is None or not self._agrees_with_plain(pairs, scores):
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            answers = []
            for (key, _, _), score in zip(requests, scores):
                answer = (score.logprob, score.is_greedy)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                answers.append(answer)
            return answers

    return PackedHFLM


def vllm_model_spec(
    pretrained_path: str | os.PathLike[str] | None, *, seed: int = 0, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """``(model name, model_args)`` for lm-eval's vLLM backend over a saved checkpoint directory.

    ``extra`` entries (e.g. ``tensor_parallel_size=2``, ``gpu_memory_utilization=0.8``) are added
    to / override the defaults. ``batch_size`` is not included: it goes to ``simple_evaluate``.
    """
    if pretrained_path is None:
        raise ValueError("backend='vllm' needs pretrained_path= (a checkpoint directory saved with save_pretrained)")
    path = Path(pretrained_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"backend='vllm': {path} is not a saved checkpoint directory (no config.json)")
    path = path.resolve()
    args: dict[str, Any] = {"pretrained": str(path), "tokenizer": str(path), "dtype": "auto", "seed": seed}
    args.update(extra)
    return "vllm", args


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(n in msg for n in _NOISE)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval loggers at WARNING (two noisy warnings dropped) and, in a log, its bars log-friendly."""
    import importlib

    from ..progress import log_friendly_tqdm

    root = logging.getLogger("lm_eval")
    noisy = [logging.getLogger(n) for n in ("lm_eval.api.task", "lm_eval.models.huggingface")]
    level = root.level
    flt = _DropNoise()
    root.setLevel(logging.WARNING)
    for lg in noisy:
        lg.addFilter(flt)
    # lm-eval's modules call `tqdm(...)` by that global name: swap it for the duration
    bar_modules = [m for m in map(importlib.import_module, _LM_EVAL_BAR_MODULES) if hasattr(m, "tqdm")]
    bars = [m.tqdm for m in bar_modules]
    for module in bar_modules:
        module.tqdm = log_friendly_tqdm(module.tqdm)
    try:
        yield
    finally:
        root.setLevel(level)
        for lg in noisy:
            lg.removeFilter(flt)
        for module, bar in zip(bar_modules, bars):
            module.tqdm = bar


#: lm-eval modules that draw tqdm bars during an evaluation
_LM_EVAL_BAR_MODULES = ("lm_eval.api.model", "lm_eval.api.task", "lm_eval.models.huggingface")


def _task_manager(data_dir: Path | None, with_defaults: bool):
    from lm_eval.tasks import TaskManager

    meta = {"prunecomp_data": str(data_dir)} if data_dir is not None else None
    # lm-eval's own ~10k task YAMLs are only indexed when a task falls back to lm-eval.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=with_defaults, metadata=meta)


def _partial_mmlu(tm: Any, c: TaskChoice) -> Any:
    """A flat size-weighted group over the local MMLU subjects present (partial data copies)."""
    from lm_eval.api.group import Group
    from lm_eval.config.group import GroupConfig

    names = [f"{c.task}_{s}" for s in c.subjects]
    group = Group.from_config(
        GroupConfig(
            group=c.task,
            group_alias=MMLU,
            task=names,
            aggregate_metric_list=[{"metric": "acc", "weight_by_size": True}],
            metadata={"version": 2},
        )
    )
    tasks = tm.load(names)["tasks"]
    for n in names:
        group.add(tasks[n])
    return group


def _load_tasks(tm: Any, choices: list[TaskChoice]) -> list[Any]:
    """Top-level Task/Group objects with each leaf task's few-shot count pinned."""
    objs = []
    for c in choices:
        if c.subjects and len(c.subjects) < len(mmlu_subjects()):
            obj = _partial_mmlu(tm, c)
        else:
            loaded = tm.load([c.task])
            obj = loaded["groups"][c.task] if c.task in loaded.get("groups", {}) else loaded["tasks"][c.task]
        for t in obj.get_all_tasks() if c.is_group else [obj]:
            t.set_config(key="num_fewshot", value=c.num_fewshot)
        objs.append(obj)
    return objs


def _metric(res: Mapping[str, Any], key: str) -> float | None:
    v = res.get(f"{key},none")
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def _leaves(name: str, group_subtasks: Mapping[str, list[str]]) -> list[str]:
    kids = group_subtasks.get(name)
    if not kids:
        return [name]
    return [leaf for k in kids for leaf in _leaves(k, group_subtasks)]


def _scores(raw: Mapping[str, Any], choices: list[TaskChoice]) -> dict[str, TaskScore]:
    results, nsamp = raw["results"], raw.get("n-samples", {})
    groups = raw.get("group_subtasks", {})
    out = {}
    for c in choices:
        res = results[c.task]
        if c.is_group:
            subs = {}
            for leaf in _leaves(c.task, groups):
                acc = _metric(results[leaf], "acc")
                n = int(nsamp[leaf]["effective"])
                alias = str(results[leaf].get("alias", leaf)).strip().lstrip("- ")
                subs[alias] = [acc if acc is not None else 0.0, n]
            n = sum(v[1] for v in subs.values())
            acc = sum(v[0] * v[1] for v in subs.values()) / n if n else float("nan")
        else:
            acc, n, subs = _metric(res, "acc"), int(nsamp[c.task]["effective"]), {}
            if acc is None:
                raise RuntimeError(f"lm-eval returned no accuracy for {c.task}: {res}")
        out[c.name] = TaskScore(
            name=c.name,
            task=c.task,
            source=c.source,
            acc=acc,
            acc_stderr=_metric(res, "acc_stderr"),
            n=n,
            num_fewshot=c.num_fewshot,
            acc_norm=_metric(res, "acc_norm"),
            acc_norm_stderr=_metric(res, "acc_norm_stderr"),
            subtasks=subs,
        )
    return out


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: str | Iterable[str],
    *,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    data_dir: str | os.PathLike[str] | None = None,
    backend: Literal["hf", "vllm"] = "hf",
    pretrained_path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    pack_tokens: int = DEFAULT_PACK_TOKENS,
    per_item: bool = False,
) -> HarnessResult:
    """Evaluate a causal LM with lm-eval on ``tasks`` (see :func:`resolve_tasks`).

    ``backend="hf"`` wraps the in-memory ``model``/``tokenizer`` in lm-eval's ``HFLM`` (on the
    model's device). ``backend="vllm"`` ignores them and has lm-eval's vLLM load the checkpoint
    saved at ``pretrained_path``.
    ``limit`` caps the examples per leaf task (lm-eval takes the first
    ``limit`` documents; a float < 1 is a fraction). All of lm-eval's seeds are set to ``seed``.

    Log-likelihood requests (hf backend) are scored by
    :func:`prunecomp.nll.packed_continuation_scores`: requests sharing a context share one pass
    over it, rows of up to ``pack_tokens`` tokens go through
    the model at once, and the LM head runs only where a continuation token is predicted. The
    scores equal lm-eval's up to float rounding; this is checked once per run against the plain
    one-request-per-forward scores, and lm-eval's own loop takes over on a mismatch.
    ``pack_tokens=0`` keeps lm-eval's loop with ``batch_size`` requests per forward (the old
    behaviour). Generation requests always use lm-eval's loop.
    ``per_item=True`` also keeps each example's 0/1 correctness (:attr:`HarnessResult.items`),
    for :func:`paired_difference`.
    """
    choices = resolve_tasks(tasks, data_dir)
    root = _data_dir(data_dir)
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        if model is None or tokenizer is None:
            raise ValueError("backend='hf' needs the model and its tokenizer")
        with _quiet_lm_eval():
            if pack_tokens == 0:  # lm-eval's own loop: one padded batch of `batch_size` requests per forward
                lm: Any = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            else:
                lm = _packed_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
                lm.token_budget = pack_tokens
        model_args = None
    elif backend == "vllm":
        lm, model_args = vllm_model_spec(pretrained_path, seed=seed)
        if find_spec("vllm") is None:
            raise ImportError(
                "backend='vllm' needs the vllm package (pip install vllm; CUDA only); use backend='hf' instead"
            )
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'hf' or 'vllm'")

    import lm_eval

    start = time.perf_counter()
    with _quiet_lm_eval():
        tm = _task_manager(root, with_defaults=any(c.source == "lm-eval" for c in choices))
        raw = lm_eval.simple_evaluate(
            model=lm,
            model_args=model_args,
            tasks=_load_tasks(tm, choices),
            task_manager=tm,
            batch_size=batch_size,
            limit=limit,
            log_samples=per_item,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if raw is None:  # non-zero rank in a distributed run
        raise RuntimeError("lm-eval returned no results on this process (distributed rank != 0)")
    return HarnessResult(
        tasks=_scores(raw, choices),
        limit=limit,
        backend=backend,
        seed=seed,
        runtime_s=time.perf_counter() - start,
        raw=dict(raw["results"]),
        items=_items(raw, choices) if per_item else {},
    )


def _items(raw: Mapping[str, Any], choices: list[TaskChoice]) -> dict[str, list[int]]:
    """Per-example correctness from lm-eval's logged samples (a group: its leaves in name order)."""
    samples, groups = raw.get("samples", {}), raw.get("group_subtasks", {})
    out = {}
    for c in choices:
        leaves = sorted(_leaves(c.task, groups)) if c.is_group else [c.task]
        out[c.name] = [int(round(float(x["acc"]))) for leaf in leaves
                       for x in sorted(samples.get(leaf, []), key=lambda x: x["doc_id"])]
    return out
