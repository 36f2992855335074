"""Progress bars that stay readable in log files.

On a terminal, nested tqdm bars each get a line and move the cursor between them. In a log (stderr
redirected to a file, as on a cluster), those cursor moves arrive as literal ``ESC[A`` sequences.
There every bar draws at position 0 instead, in ASCII, at most every 10 seconds.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, desc: str, enabled: bool = True, leave: bool = False, **kwargs):
    return tqdm(iterable, desc=desc, disable=not enabled, leave=leave, **_log_defaults(kwargs))


def log_friendly_tqdm(bar_class):
    """`bar_class` (a tqdm), with progress_bar's log defaults when stderr is not a terminal.

    For libraries that create their own bars (lm-eval), whose bars would otherwise nest under ours
    with cursor moves.
    """

    def make(*args, **kwargs):
        return bar_class(*args, **_log_defaults(kwargs))

    return make


def _log_defaults(kwargs: dict) -> dict:
    if not _stderr_is_terminal():
        kwargs.setdefault("position", 0)
        kwargs.setdefault("mininterval", 10.0)
        kwargs.setdefault("ascii", True)
    return kwargs


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
