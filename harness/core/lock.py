"""One writer per results folder: a lock file naming its holder (host, pid, start time).

The lock is created with O_CREAT | O_EXCL, so of two processes starting on one folder exactly one gets it. A lock
left by a process that died on this host is recognised (its pid is gone) and taken over, with a note; a lock from
another host cannot be checked from here, so it is reported with the fix (delete the file once that run is over).
Written here rather than taken from a package (filelock, portalocker): their locks hold no owner to name, and
flock-based locks are unreliable on the network file systems result folders often live on.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("harness.lock")

LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names it and the fix."""


class FolderLock:
    """`with FolderLock(folder): ...` holds `<folder>/.lock` for the block; reentrant within one process."""

    def __init__(self, folder: str | os.PathLike, purpose: str = "run"):
        self.path = Path(folder) / LOCK_NAME
        self.purpose = purpose
        self._held = 0

    def acquire(self) -> None:
        if self._held:
            self._held += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if not is_stale(holder, self.path):
                    raise FolderLockedError(self._busy_message(holder)) from None
                log.warning("%s: removing a stale lock of %s (process %s on this host is gone)", self.path,
                            holder.get("purpose", "a run"), holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                           "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, f)
            self._held = 1
            return
        raise FolderLockedError(f"{self.path}: could not take the lock (another process keeps taking it); "
                                "wait for it to finish")

    def release(self) -> None:
        if not self._held:
            return
        self._held -= 1
        if self._held == 0 and read_holder(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy_message(self, holder: dict) -> str:
        who = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f" since {holder['started_utc']}" if holder.get("started_utc") else ""
        return (f"{self.path.parent} is in use by {who}{since} ({holder.get('purpose', 'a run')}); two writers would "
                f"mix their records. Wait for it to finish, or use another --out; if that process is gone, delete "
                f"{self.path}")


def read_holder(path: Path) -> dict:
    """The lock's content ({} when unreadable: a holder that died while writing it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_stale(holder: dict, path: Path, grace_s: float = 10.0) -> bool:
    """True when the holder ran on this host and its process no longer exists, or when the lock file has stayed
    empty for `grace_s` seconds (its writer died between creating and filling it)."""
    if not holder:
        try:
            age = _dt.datetime.now().timestamp() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > grace_s
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False
