"""One run at a time per project folder: an exclusive `flock` on `<project>/.zooflow.lock`.

A second run waits up to `orchestration.lock_wait_seconds` for the first, then refuses with a line
naming who holds the folder (exit code 75, EX_TEMPFAIL: try again later). The operating system
releases the lock when its process ends, however it ends, so a killed run never leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone

from tasks.errors import UserError
from tasks.layout import Layout

LOCK = ".zooflow.lock"


class ProjectBusy(UserError):
    """Another zooflow run writes into this project folder."""

    exit_code = 75


_HELD: dict[str, int] = {}  # folders this process holds, and how deep: `zooflow run` and its flow nest


@contextlib.contextmanager
def project_lock(layout: Layout, what: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the project folder for `what` (e.g. "zooflow run"); see the module doc. Re-entrant within
    a process (a second flock on another descriptor would wait for ourselves)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    path = layout.root / LOCK
    key = str(path)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProjectBusy(f"{layout.root} is in use by another zooflow run ({_holder(path)}); "
                                      f"wait for it to finish, or set orchestration.lock_wait_seconds to queue "
                                      f"behind it") from None
                if not announced:
                    print(f"waiting up to {wait_seconds:.0f} s for another zooflow run ({_holder(path)})",
                          file=sys.stderr, flush=True)
                    announced = True
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        holder = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "user": _user(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"{info.get('what', '?')}, pid {info.get('pid', '?')} on {info.get('host', '?')}, " \
           f"by {info.get('user', '?')} since {info.get('since', '?')}"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"
