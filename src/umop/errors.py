"""Exception types for mistakes a user can fix (bad input, missing optional package, unavailable weights).

``umop.cli.main`` turns every :class:`UserError` (and ``ValueError`` / ``OSError`` from configs and data) into
one line on stderr and exit code 2, without a traceback (``UMOP_DEBUG=1`` shows it).
"""

from __future__ import annotations

__all__ = ["UserError", "MissingDependencyError"]


class UserError(Exception):
    """A mistake in the user's input or environment; the message says what to change."""


class MissingDependencyError(UserError, ImportError):
    """An optional package needed by the requested feature is not installed (the message names it)."""
