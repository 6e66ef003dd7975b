"""The local launcher: the runs as processes of this machine, ``jobs`` at a time.

Each recipe runs in its own process group, with its output appended to its folder's
sweep_log.txt, and dies with the sweep (`mtl_ser.sweep.process`): Ctrl-C or SIGTERM stops
the sweep and its runs, SIGKILL of the sweep stops its runs through the kernel (Linux). A
stopped run resumes from its last checkpoint when the sweep is run again.
"""

from __future__ import annotations

import os
import time
from collections import deque

from mtl_ser.results import RESULTS_FILE
from mtl_ser.sweep.launch import Launcher, Pending, SweepOutcome, metrics_text
from mtl_ser.sweep.plan import SWEEP_LOG_FILE, complete_results
from mtl_ser.sweep.process import (
    available_cores,
    dies_with_parent_supported,
    start_process,
    stop_process,
    thread_environment,
)
from mtl_ser.sweep.runfolder import append_event, last_line, log_attempt, prepare_run_folder


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def job_environments(jobs: int, cores: int, gpus: list[str]) -> list[dict[str, str]]:
    """Environment variables of each job slot.

    Args:
        jobs: runs at once.
        cores: CPU cores to share among them.
        gpus: visible GPU ids (empty on CPU).

    Returns: one dict per slot: thread counts (cores // jobs, at least 1: concurrent runs must
    not each start a thread per core) and, with GPUs, the slot's GPU (slots share GPUs
    round-robin when there are more jobs than GPUs).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    envs = []
    for slot in range(jobs):
        env = thread_environment(max(1, cores // jobs))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    return envs


def duration_text(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 10 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LocalLauncher(Launcher):
    """Runs the recipes on this machine, ``jobs`` at once, and waits for them.

    Args:
        jobs: runs at once.
        gpus: GPU ids to spread the runs over (None: the visible ones).
        cores: CPU cores to share (None: those available to this process).
        stop_grace_s: how long a run may take to stop after SIGTERM when the sweep is
            interrupted, before SIGKILL.
    """

    def __init__(
        self,
        jobs: int = 1,
        gpus: list[str] | None = None,
        cores: int | None = None,
        stop_grace_s: float = 30.0,
    ):
        self.gpus = visible_gpus() if gpus is None else gpus
        self.jobs = jobs
        self.envs = job_environments(jobs, cores or available_cores(), self.gpus)
        self.stop_grace_s = stop_grace_s

    def describe(self) -> str:
        devices = f"GPUs {', '.join(self.gpus)}" if self.gpus else "CPU"
        limit = "" if dies_with_parent_supported() else " (runs outlive a sweep killed by SIGKILL)"
        return f"{self.jobs} at once on {devices}{limit}"

    def launch(self, pending: list[Pending], outcome: SweepOutcome, echo) -> None:
        queue = deque(pending)
        free, running = list(range(self.jobs)), {}
        try:
            while queue or running:
                while queue and free:
                    slot = free.pop(0)
                    item = queue.popleft()
                    running[slot] = (item, self._start(item, slot), time.monotonic())
                    note = " (resuming)" if item.state == "resume" else ""
                    gpu = self.envs[slot].get("CUDA_VISIBLE_DEVICES")
                    where = f" on GPU {gpu}" if gpu is not None else ""
                    echo(f"{item.tag} start   {item.run.name}{where}{note}")
                time.sleep(0.2)
                for slot, (item, process, started) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    self._finish(
                        item, process.returncode, time.monotonic() - started, outcome, echo
                    )
        finally:
            # Interrupted (Ctrl-C, SIGTERM) or crashed: stop the runs this sweep started;
            # each resumes from its checkpoint next time.
            for item, process, _ in running.values():
                stop_process(process, self.stop_grace_s)
                append_event(item.run.folder, "ended", exit_status=process.returncode, stopped=True)

    def _start(self, item: Pending, slot: int):
        run = item.run
        log = prepare_run_folder(run, item.state)
        log_attempt(log, item.state, run.command)
        process = start_process(run.command, log, env={**os.environ, **self.envs[slot]})
        append_event(run.folder, "started", launcher="local", pid=process.pid)
        return process

    def _finish(self, item: Pending, status: int, seconds: float, outcome, echo) -> None:
        run = item.run
        elapsed = duration_text(seconds)
        results = complete_results(run.folder)
        log = run.folder / SWEEP_LOG_FILE
        if status == 0 and results is not None:
            append_event(run.folder, "ended", exit_status=0)
            echo(f"{item.tag} done    {run.name}  {metrics_text(results)}  ({elapsed})")
            outcome.done.append((run, results))
            return
        why = f"exit status {status}" if status else f"exited without {RESULTS_FILE}"
        error = last_line(log)
        append_event(run.folder, "ended", exit_status=status, error=f"{why}: {error}")
        echo(f"{item.tag} failed  {run.name}  {why} after {elapsed}; log: {log}")
        outcome.failed.append((run, f"{why}: {error}"))
