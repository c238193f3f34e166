"""One exception type for input the user can fix: command-line tools print it as one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (file, name, URL, config). The message names the problem and the fix."""


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the message says where, so a study can record why the trial failed."""
