"""Typed exceptions: every refusal prunecomp makes is a PrunecompError subclass.

The CLI turns any of them into one line on stderr and exit code 2. Each class also derives from
the builtin that older code raised (ValueError, RuntimeError, ...), so existing `except` clauses
keep working.
"""

from __future__ import annotations


class PrunecompError(Exception):
    """Base class: a bad input or a refused action, explained in one line."""


class ModelLoadError(PrunecompError, RuntimeError):
    """The model could not be found, reached or loaded."""


class NonFiniteWeights(ModelLoadError):
    """A weight tensor holds NaN or Inf; pruning it would hide the damage."""


class UnsafeLoad(ModelLoadError):
    """Loading would run pickle or remote code and the user did not allow it."""


class OutputError(PrunecompError, RuntimeError):
    """The output folder cannot or must not be written."""


class OutputLocked(OutputError):
    """Another prunecomp process is writing the same output folder."""


class RecipeError(PrunecompError, ValueError):
    """A recipe file is unreadable, malformed or inconsistent."""


class RecipeMismatch(RecipeError):
    """A recipe does not fit the model it is applied to."""


class NumericalError(PrunecompError, FloatingPointError):
    """NaN, Inf or an overflow appeared in activations, scores, scales or folded weights."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread so that the same cleanup runs as for Ctrl-C."""
