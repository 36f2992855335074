"""Atomic output, proven: SIGKILL the CLI at random moments of a real prune and save.

Each trial forks this (already imported) test process and runs `prunecomp.cli.main` in the child,
so a trial costs the prune and save (about a second), not a fresh interpreter's imports; the child
is a separate process, killed for real. One rerun goes through a fresh `python -m prunecomp.cli`.

After every kill the output must be absent or complete (and byte-identical to an uninterrupted
run), and whatever the kill left beside it (a hidden staging folder, a lock file) must be removed
by the next run into the same output. Half the kills land at a uniformly random time of the whole
run, half just after the staging folder appears, so the save itself is hit many times.
"""

from __future__ import annotations

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


def _cli_args(model: Path, calib: Path, out: Path) -> list[str]:
    return ["prune", str(model), "--layers", "2", "--calib", str(calib), "--calib-windows", "4", "--seqlen", "32",
            "--out", str(out), "--quiet"]


def _argv(model: Path, calib: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prunecomp.cli", *_cli_args(model, calib, out)]


class Forked:
    """`prunecomp.cli.main(args)` in a forked child; the Popen-like subset the tests use."""

    def __init__(self, args: list[str]):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # child: run the CLI, exit without running the parent's pytest machinery
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
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
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", RECIPE_FILENAME, "README.md", "tokenizer.json"} <= names, names
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert Recipe.load(out).rounds == Recipe.load(reference).rounds


def test_sigkill_at_random_moments_never_leaves_a_half_written_output(tiny_model_dir, sample_text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    reference = tmp_path / "reference"
    started = time.monotonic()
    assert Forked(_cli_args(tiny_model_dir, sample_text_file, reference)).wait(300) == 0
    full_run = time.monotonic() - started
    AutoModelForCausalLM.from_pretrained(reference)  # the reference itself loads

    rng = random.Random(10)
    outcomes = {"absent": 0, "complete": 0}
    left_behind: list[Path] = []
    kill_points = []
    for trial in range(TRIALS):
        out = tmp_path / "runs" / f"out{trial}"
        process = Forked(_cli_args(tiny_model_dir, sample_text_file, out))
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
    # the first thing a run does); one of them goes through the whole CLI.
    for index, out in enumerate(left_behind):
        if index == 0:
            rerun = _argv(tiny_model_dir, sample_text_file, out) + (["--overwrite"] if out.exists() else [])
            subprocess.run(rerun, env=ENV, check=True, capture_output=True, timeout=300)
            _assert_complete(out, reference)
        else:
            check_output_dir(out, overwrite=True)
            locking.release_output_lock(out)
        assert not _leftovers(out), f"the next run left {_leftovers(out)}"
    print(f"\nkill trials: {TRIALS}, survived: {TRIALS} in {time.monotonic() - started:.1f}s, output absent: {outcomes['absent']}, complete: "
          f"{outcomes['complete']}, left temporaries (all cleaned by the next run): {len(left_behind)}; "
          f"full run {full_run:.2f}s; kill times (s): {kill_points}")
    assert outcomes["absent"] + outcomes["complete"] == TRIALS


@pytest.mark.parametrize("moment", ["compute", "save"])
def test_sigterm_cleans_up(moment, tiny_model_dir, sample_text_file, tmp_path):
    out = tmp_path / "out"
    process = Forked(_cli_args(tiny_model_dir, sample_text_file, out))
    if moment == "compute":  # the output is locked at once; wait for the lock, then terminate mid-run
        deadline = time.monotonic() + 300
        while not locking.lock_path(out).exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)
        if process.poll() is not None:
            pytest.skip("the run finished before it could be terminated")
    elif not _wait_for_staging(out, process, timeout=300):
        process.wait(timeout=60)
        pytest.skip("the run finished before the staging folder was seen (machine too fast to catch it)")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143  # 128 + SIGTERM, after the same cleanup as Ctrl-C
    assert not out.exists() and not _leftovers(out), sorted(p.name for p in tmp_path.iterdir())
