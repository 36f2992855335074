"""Progress bars in log files: nested bars must not write cursor-movement escapes."""

from __future__ import annotations

import io
import os
import subprocess
import sys

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_nested_bars_in_a_log_have_no_escape_sequences(tiny_model_dir, sample_text_file, tmp_path):
    # stderr is a pipe here, as when a run is logged to a file; no --quiet, so every bar is drawn
    done = subprocess.run([sys.executable, "-m", "prunecomp.cli", "prune", str(tiny_model_dir), "--layers", "2",
                           "--metric", "bi", "--calib", str(sample_text_file), "--calib-windows", "4", "--seqlen", "32",
                           "--out", str(tmp_path / "out")], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pruning (bi)" in done.stderr  # the round bar is there ...
    assert "calibration" in done.stderr or "stats" in done.stderr  # ... and so are the nested ones
    assert "\x1b[" not in done.stderr  # ... but no "ESC[A" cursor moves


def test_bars_on_a_terminal_keep_tqdm_defaults(monkeypatch):
    from prunecomp import progress

    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    with progress.progress_bar(range(3), desc="outer", file=io.StringIO()) as outer:
        with progress.progress_bar(range(3), desc="inner", file=io.StringIO()) as inner:
            assert inner.pos != outer.pos and inner.mininterval == 0.1  # tqdm's own nesting and rate
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: False)
    with progress.progress_bar(range(3), desc="outer", file=io.StringIO(), leave=True) as outer:
        with progress.progress_bar(range(3), desc="inner", file=io.StringIO()) as inner:
            assert inner.pos == outer.pos == 0 and inner.mininterval == 10.0 and outer.leave and not inner.leave
