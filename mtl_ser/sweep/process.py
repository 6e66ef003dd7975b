"""Recipe processes that never outlive the process that started them.

A sweep (or a cluster job) starts each recipe in its own process group, so that stopping it
also stops its data-loader workers, and asks the kernel to send the recipe SIGTERM when its
parent dies, however it dies (``kill -9`` included): an orphaned recipe would keep writing
into a run folder that the next sweep resumes, a second writer. That request
(``prctl(PR_SET_PDEATHSIG)``) exists on Linux only; elsewhere a recipe outlives a sweep killed
with SIGKILL (SIGTERM and Ctrl-C still stop it, through `stop_process`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def dies_with_parent_supported() -> bool:
    """True where `start_process` can tie a child's life to its parent (Linux)."""
    return _libc() is not None


def _child_setup(parent: int, ignore: tuple[int, ...]):
    """What the child runs between fork and exec: die with ``parent``, ignore ``ignore``."""
    libc = _libc()

    def setup() -> None:
        for signum in ignore:  # an ignored disposition survives exec, unlike a handler
            signal.signal(signum, signal.SIG_IGN)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            # The parent may have died between fork and prctl: then nobody will tell us.
            if os.getppid() != parent:
                os._exit(1)

    return setup


def start_process(
    command: list[str] | tuple[str, ...],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    ignore_signals: tuple[int, ...] = (),
) -> subprocess.Popen:
    """Starts ``command`` with stdout and stderr appended to ``log``.

    Args:
        command: the command line.
        log: file the output is appended to.
        env: the whole environment (None: this process's).
        cwd: working folder (None: this process's).
        ignore_signals: signals the child (and what it starts) ignores, e.g. a cluster's
            requeue signal that only the job's own handler must act on.

    Returns: the process, leader of its own process group, which receives SIGTERM when this
    process (precisely: this thread) ends, on Linux.
    """
    with open(log, "a") as out:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid(), ignore_signals),
        )


def _has_ended(process: subprocess.Popen) -> bool:
    """Like ``process.poll() is not None``, but also from a signal handler that interrupted a
    ``poll`` or ``wait`` of the same process (Popen's own lock is then held)."""
    if process.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        return True
    if pid == 0:
        return False
    process.returncode = os.waitstatus_to_exitcode(status)
    return True


def stop_process(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stops ``process`` and its process group: SIGTERM, then SIGKILL after ``grace_s``
    seconds; returns when it has ended."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if _has_ended(process):
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _has_ended(process):
                return
            time.sleep(0.05)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, which Slurm sets for a job)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_environment(threads: int) -> dict[str, str]:
    """The variables that cap a recipe's CPU threads (concurrent runs must not each start a
    thread per core)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
