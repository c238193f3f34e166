"""One exception type for input the user can fix: command-line tools print it as one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (file, name, URL, config). The message names the problem and the fix."""


class StorageError(UserError):
    """The study storage refused a call for a reason a new connection would not fix (a read-only or locked
    file, a full disk, a missing table): one line naming the storage and the fix, at once."""


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the message says where, so a study can record why the trial failed."""


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` for an error message, at most `limit` characters: a value quoted from a file (a
    mapping nested a million times, a string of a megabyte) is shortened with '...', and only the part
    shown is ever formatted (reprlib), so quoting it costs no memory."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset, r.maxfrozenset, r.maxdeque, r.maxarray = 2, 4, 6, 6, 6, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = max(limit, 12)
    text = r.repr(value)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def clipped(text: object, limit: int = 80) -> str:
    """A name quoted as it is (a key from a file), at most `limit` characters."""
    text = text if isinstance(text, str) else shown(text, limit)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."
