"""User-facing errors: the CLI turns these into one line `error: ...` and an exit code (2 by default).

`user_error(exc)` sorts any exception into a problem the user can fix (a `UserError`, possibly made from
an environment fault: a full disk, a denied path, memory) or None: a bug, shown with its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (params, data, a name) or a fault they can fix: never a traceback."""

    exit_code = 2


class ParamsError(UserError):
    """A key or value in params.yaml or an `-S` override is wrong."""


class DataError(UserError):
    """The dataset is unreadable, malformed or fails a blocking check."""


class DiskFull(UserError):
    """A write failed for lack of space."""


class ArchitecturesFailed(Exception):
    """Architectures failed under `orchestration.fail_fast: true`: the run registers nothing. Not the
    user's input at fault (exit code 1); `summary` holds the leaderboard with the failures."""

    exit_code = 1

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error(exc: BaseException) -> UserError | None:
    """The user-fixable problem behind `exc` (or anything it was raised from), or None for a bug."""
    for link in _chain(exc):
        if isinstance(link, UserError):
            return link
        if isinstance(link, OSError) and link.errno in _FULL:
            return disk_full(link.filename)
        if isinstance(link, RuntimeError) and ("No space left on device" in str(link) or "file write failed" in str(link)):
            return disk_full(None)
        if isinstance(link, PermissionError):
            return UserError(f"permission denied: {link.filename or link}; give this user write access there, "
                             f"or run from a folder it owns")
        if isinstance(link, MemoryError) or type(link).__name__ == "OutOfMemoryError":
            return UserError(f"out of memory ({type(link).__name__}); lower train.batch_size or "
                             f"evaluate.batch_size, or train a smaller architecture")
    return None


def disk_full(path: str | None) -> DiskFull:
    import shutil
    from pathlib import Path

    where = Path(path) if path else Path.cwd()
    folder = next((p for p in (where, *where.parents) if p.exists()), Path.cwd())
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"disk full writing {path or 'into ' + str(folder)} ({free} on that disk); free some space "
                    f"and re-run: what was being written was left out, nothing half-written remains")
