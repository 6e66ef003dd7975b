"""One writer per run folder: an advisory lock that dies with its process.

A training run holds ``<output_folder>/run.lock`` (``fcntl.flock``, exclusive) from start to
end. The kernel releases the lock when the process ends in any way, ``kill -9`` included, so a
stale lock never blocks a re-run; a second process that tries to write into a folder whose
run is alive gets `RunLockedError` naming the folder and the holder. The file itself stays
(its presence means nothing; only the lock counts) and records the holder's host and pid for
the message.

On network file systems flock works where the mount supports it (NFSv4, Lustre with the
``flock`` mount option); elsewhere it may fail with OSError, which is reported as such.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """Exclusive lock of a run folder, held until `release` or the end of the process.

    Args:
        folder: the run's output folder (created if missing).
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock; raises `RunLockedError` when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({holder}); wait for it to end "
                "or use another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host={socket.gethostname()} pid={os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (also released by the kernel when the process ends)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(folder: str | Path) -> bool:
    """True while a live process holds ``folder``'s run lock (this process's own lock
    counts too); False when there is no lock file or nobody holds it."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the shared lock taken on success
    return False


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    return text or "holder unknown"
