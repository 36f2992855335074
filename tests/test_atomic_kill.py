"""Atomic output, proven: SIGKILL the CLI at random moments of a real prune and save.

The trials run in a fresh interpreter (this file as a script) that imports prunecomp once and forks
a child per trial to run `prunecomp.cli.main`, so a trial costs the prune and save (about a second),
not a new interpreter's imports; each child is a separate process, killed for real. One rerun goes
through a fresh `python -m prunecomp.cli`.

After every kill the output must be absent or complete (and byte-identical to an uninterrupted
run), and whatever the kill left beside it (a hidden staging folder, a lock file) must be removed
by the next run into the same output. Half the kills land at a uniformly random time of the whole
run, half just after the staging folder appears, so the save itself is hit many times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunecomp import locking
from prunecomp.io import check_output_dir, temporary_siblings
from prunecomp.recipe import RECIPE_FILENAME, Recipe

TRIALS = int(os.environ.get("PRUNECOMP_KILL_TRIALS", "20"))
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli_args(model: Path, calib: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(model), "--layers", "2", "--calib", str(calib), "--calib-windows", "4", "--seqlen", "32",
            "--out", str(out), "--quiet", *extra]


def _argv(model: Path, calib: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prunecomp.cli", *_cli_args(model, calib, out)]


class Forked:
    """`prunecomp.cli.main(args)` in a forked child; the Popen-like subset the tests use."""

    def __init__(self, args: list[str], stderr: Path | None = None):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # child: run the CLI, exit without running the parent's pytest machinery
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT, 0o644) if stderr else devnull, 2)
                from prunecomp.cli import main

                code = main(args)
            finally:
                locking.release_all()  # what atexit does in a normal exit
                os._exit(code if isinstance(code, int) else 1)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {self.pid} still running")
            time.sleep(0.005)
        return self.returncode


def _leftovers(out: Path) -> list[Path]:
    lock = locking.lock_path(out)
    return temporary_siblings(out) + ([lock] if lock.exists() else [])


def _wait_for_staging(out: Path, process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if temporary_siblings(out):
            return True
        time.sleep(0.001)
    return False


def _assert_complete(out: Path, reference: Path) -> None:
    """Complete: the same files as the uninterrupted run, weights byte-identical (one file or shards)."""
    names = {p.name for p in out.iterdir()}
    assert {"config.json", RECIPE_FILENAME, "README.md", "tokenizer.json"} <= names, names
    weights = sorted(p.name for p in reference.glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in out.glob("*.safetensors")), names
    for name in weights:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert Recipe.load(out).rounds == Recipe.load(reference).rounds


def _has_engine_option() -> bool:
    from prunecomp.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return any("--engine" in a.option_strings for a in sub.choices["prune"]._actions)


def run_kill_trials(model: Path, calib: Path, folder: Path, engine: str, trials: int) -> dict:
    """The trials themselves; raises AssertionError at the first violation."""
    extra = ("--engine", "layerwise") if engine == "layerwise" else ()
    reference = folder / "reference"
    started = time.monotonic()
    assert Forked(_cli_args(model, calib, reference, *extra)).wait(300) == 0
    full_run = time.monotonic() - started

    rng = random.Random(10)
    outcomes = {"absent": 0, "complete": 0}
    left_behind: list[Path] = []
    kill_points = []
    for trial in range(trials):
        out = folder / "runs" / f"out{trial}"
        process = Forked(_cli_args(model, calib, out, *extra))
        begun = time.monotonic()
        if trial % 2 == 0:
            time.sleep(rng.uniform(0.0, full_run))
        elif _wait_for_staging(out, process, timeout=3 * full_run):
            time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        kill_points.append(round(time.monotonic() - begun, 3))
        if out.exists():
            _assert_complete(out, reference)
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
        if _leftovers(out):
            left_behind.append(out)

    # The next run into the same output removes what the killed one left (check_output_dir is
    # the first thing a run does); one of them goes through the whole CLI in a fresh process.
    for index, out in enumerate(left_behind):
        if index == 0:
            rerun = _argv(model, calib, out) + list(extra) + (["--overwrite"] if out.exists() else [])
            subprocess.run(rerun, env=ENV, check=True, capture_output=True, timeout=300)
            _assert_complete(out, reference)
        else:
            check_output_dir(out, overwrite=True)
            locking.release_output_lock(out)
        assert not _leftovers(out), f"the next run left {_leftovers(out)}"
    return {"trials": trials, "survived": outcomes["absent"] + outcomes["complete"], **outcomes,
            "left_behind_and_cleaned": len(left_behind), "full_run_s": round(full_run, 2),
            "total_s": round(time.monotonic() - started, 1), "kill_times_s": kill_points, "reference": str(reference)}


def run_sigterm(model: Path, calib: Path, folder: Path, moment: str) -> dict:
    out = folder / "out"
    log = folder / "stderr.txt"  # the child's one-line message, for a failure to name its cause
    process = Forked(_cli_args(model, calib, out), stderr=log)
    if moment == "compute":  # the output is locked at once; wait for the lock, then terminate mid-run
        deadline = time.monotonic() + 300
        while not locking.lock_path(out).exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)
        if process.poll() is not None:
            return {"skipped": "the run finished before it could be terminated"}
    elif not _wait_for_staging(out, process, timeout=300):
        process.wait(timeout=60)
        return {"skipped": "the run finished before the staging folder was seen"}
    process.send_signal(signal.SIGTERM)
    return {"returncode": process.wait(timeout=60), "out_exists": out.exists(),
            "leftovers": [p.name for p in _leftovers(out)], "stderr": log.read_text()[-2000:]}


def _in_fresh_process(*args) -> dict:
    """Run this file's trials in a new interpreter: forking there is safe (no threads yet), while
    this pytest process may hold threads (weight loading pools) that make a fork hang."""
    done = subprocess.run([sys.executable, __file__, *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# The default path (whole model in memory, io.save_pruned) gets the full count; the layer-wise
# path (layers read from disk, its own save) half as many.
@pytest.mark.parametrize("engine,trials", [("default", TRIALS), ("layerwise", max(4, TRIALS // 2))])
def test_sigkill_at_random_moments_never_leaves_a_half_written_output(engine, trials, tiny_model_dir, sample_text_file,
                                                                      tmp_path):
    from transformers import AutoModelForCausalLM

    if engine == "layerwise" and not _has_engine_option():
        pytest.skip("this prunecomp has no layer-wise engine")
    summary = _in_fresh_process("kill", tiny_model_dir, sample_text_file, tmp_path, engine, trials)
    AutoModelForCausalLM.from_pretrained(summary["reference"])  # the finished output loads
    print(f"\n{engine} engine: {json.dumps(summary)}")
    assert summary["survived"] == summary["trials"] == trials


@pytest.mark.parametrize("moment", ["compute", "save"])
def test_sigterm_cleans_up(moment, tiny_model_dir, sample_text_file, tmp_path):
    result = _in_fresh_process("sigterm", tiny_model_dir, sample_text_file, tmp_path, moment)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["returncode"] == 143, result  # 128 + SIGTERM, after the same cleanup as Ctrl-C
    assert not result["out_exists"] and not result["leftovers"], result


if __name__ == "__main__":  # python tests/test_atomic_kill.py kill|sigterm MODEL CALIB FOLDER ...
    # Imported once here (no threads started), so each forked trial starts warm.
    import safetensors.torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import prunecomp.cli  # noqa: F401
    import prunecomp.prune  # noqa: F401

    mode, model_dir, calib_file, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    if mode == "kill":
        result = run_kill_trials(model_dir, calib_file, work, sys.argv[5], int(sys.argv[6]))
    else:
        result = run_sigterm(model_dir, calib_file, work, sys.argv[5])
    print(json.dumps(result))
