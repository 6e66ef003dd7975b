"""Whether a process still runs: one check for run-folder partials (mtl_ser/atomic.py) and
sweep jobs (mtl_ser/sweep). Standard library only, so torch-free code can use it."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int, mentions: str | None = None) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie does not).

    Args:
        pid: the process id.
        mentions: text its command line must contain (e.g. the run folder), so that a
            recycled pid is not taken for the process that had it; needs Linux's /proc,
            elsewhere only the pid is checked.
    """
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":  # zombie / dead
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return False
        return mentions is None or mentions in cmdline
    if Path("/proc/self").is_dir():  # Linux, and the pid is gone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
