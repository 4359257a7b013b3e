"""Errors a user can fix, said plainly.

Anything raised as a :class:`UserError` is a mistake in what the user asked for (a missing
file, a model with the wrong output, an invalid option).  The CLI prints its message in one
line and exits with code 2, without a traceback; the Python API lets it propagate.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` names the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class ConfigError(UserError):
    """An invalid option value or an unknown option."""


class DataError(UserError):
    """The corpus cannot be used: missing, empty, too small, undecodable, out of vocabulary."""


class ModelError(UserError):
    """The model cannot be loaded or does not behave like a causal language model."""


class PrecisionError(UserError):
    """The requested precision cannot be honoured (raised only with --strict-precision)."""


class OutOfMemory(UserError):
    """The device ran out of memory at the chosen batch, sequence length or precision."""
