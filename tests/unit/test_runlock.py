"""The run-folder lock: one writer, released when its process dies (kill -9 included)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from mtl_ser.runlock import RunLock, RunLockedError, is_locked

HOLD = (
    "import sys, time; from mtl_ser.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def test_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    assert is_locked(tmp_path)
    with pytest.raises(RunLockedError, match=rf"{tmp_path}.*pid={holder.pid}"):
        RunLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while is_locked(tmp_path) and time.time() < deadline:
        time.sleep(0.05)
    assert not is_locked(tmp_path)
    with RunLock(tmp_path):
        assert is_locked(tmp_path)
    assert not is_locked(tmp_path)


def test_no_lock_file_means_unlocked(tmp_path):
    assert not is_locked(tmp_path / "missing")
