"""Where a run's latest job is now: running, queued, gone, or unknown.

A run's job history (`mtl_ser.sweep.runfolder`, ``sweep_jobs.jsonl``) names its latest job:
a local process (pid), a job of submitit's local executor (the pid of its controller), or a
Slurm job (``1234`` or array task ``1234_5``). Asking the machine or the scheduler whether it
is alive is the only launcher-specific part of `--status` and of the sweep's rule "never
start a run twice"; it lives here, shared by both.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass

from mtl_ser.processes import process_alive

# Slurm job states (sacct), by what they mean for the run.
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
SLURM_QUEUED = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "RESIZING",
    "SUSPENDED",
    "RESV_DEL_HOLD",
}


@dataclass(frozen=True)
class JobView:
    """The latest job of a run, from its history.

    Attributes:
        launcher: "local", "slurm" or "submitit-local".
        job_id: the scheduler's id (None for the local launcher).
        host: where it was submitted (or, for the local launcher, started).
        pid: the process of its latest attempt (local: the recipe; submitit: the job task).
        phase: its last event: "submitted", "started", "requeued" or "ended".
        last: that event (its time, exit status, error, ...).
        submitit_folder: submitit's folder of the job (its logs), None for local runs.
    """

    launcher: str
    job_id: str | None
    host: str
    pid: int | None
    phase: str
    last: dict
    submitit_folder: str | None = None

    def label(self) -> str:
        """``job 1234_5`` (Slurm), ``local job 4321`` (submitit's local executor) or
        ``pid 999`` (the local launcher)."""
        if self.launcher == "slurm":
            return f"job {self.job_id}"
        if self.launcher == "submitit-local":
            return f"local job {self.job_id}"
        return f"pid {self.pid}" if self.pid else ""


def job_view(events: list[dict]) -> JobView | None:
    """The latest job in a run's history (None when it has none)."""
    start = None
    for index, event in enumerate(events):
        opens_job = event.get("event") == "submitted" or (
            event.get("event") == "started" and event.get("launcher") == "local"
        )
        if opens_job:
            start = index
    if start is None:
        return None
    first = events[start]
    mine = [first] + [e for e in events[start + 1 :] if e.get("job_id") == first.get("job_id")]
    pids = [e["pid"] for e in mine if e.get("event") == "started" and e.get("pid")]
    return JobView(
        launcher=first.get("launcher", "local"),
        job_id=first.get("job_id"),
        host=first.get("host", ""),
        pid=pids[-1] if pids else None,
        phase=mine[-1].get("event", ""),
        last=mine[-1],
        submitit_folder=first.get("submitit_folder"),
    )


@dataclass(frozen=True)
class Liveness:
    """What the machine or the scheduler says about a job.

    Attributes:
        state: "running", "queued", "gone" (ended, in any way) or "unknown" (cannot tell:
            another machine's process, or the scheduler not reachable).
        scheduler_state: Slurm's own word (``PENDING``, ``CANCELLED``, ...), if asked.
    """

    state: str
    scheduler_state: str | None = None


def job_liveness(views: dict[str, tuple[JobView, str]]) -> tuple[dict[str, Liveness], str]:
    """Asks where each job is, Slurm jobs all in one ``sacct`` call.

    Args:
        views: {key: (job view, the run folder)}; the folder identifies a local recipe
            process by its command line.

    Returns: ({key: liveness}, a note for the user: "" or why Slurm could not be asked).
    """
    here = socket.gethostname()
    out, slurm = {}, {}
    for key, (view, folder) in views.items():
        if view.launcher == "slurm":
            slurm[key] = view.job_id
        elif view.host != here:
            out[key] = Liveness("unknown")
        elif view.launcher == "submitit-local":
            # The job id is the pid of submitit's controller, alive through requeues.
            alive = view.job_id is not None and process_alive(int(view.job_id), "submitit")
            phase_running = view.phase == "started"
            out[key] = Liveness(("running" if phase_running else "queued") if alive else "gone")
        else:
            alive = view.pid is not None and process_alive(view.pid, str(folder))
            out[key] = Liveness("running" if alive else "gone")
    note = ""
    if slurm:
        states, note = slurm_states(sorted(set(slurm.values())))
        for key, job_id in slurm.items():
            word = states.get(job_id)
            if word is None:
                out[key] = Liveness("unknown")
            elif word in SLURM_RUNNING:
                out[key] = Liveness("running", word)
            elif word in SLURM_QUEUED:
                out[key] = Liveness("queued", word)
            else:
                out[key] = Liveness("gone", word)
    return out, note


def slurm_states(job_ids: list[str]) -> tuple[dict[str, str], str]:
    """Slurm's state of each job id (``1234`` or ``1234_5``), through ``sacct``.

    Returns: ({job id: first word of its state, e.g. RUNNING, CANCELLED}, note); a job sacct
    does not list (unknown, or too recent for its database) is left out; with no sacct on
    this machine, or when it fails, the dict is empty and the note says so.
    """
    if not job_ids:
        return {}, ""
    if shutil.which("sacct") is None:
        return {}, "Slurm not reachable from this machine (no sacct): states from the files only"
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for job_id in job_ids:
        watcher.register_job(str(job_id))
    watcher.update()  # one sacct call; on failure submitit logs a warning and knows nothing
    states = {}
    for job_id in job_ids:
        word = watcher.get_state(str(job_id), mode="cache").split(" ")[0].upper()
        if word and word != "UNKNOWN":
            states[job_id] = word
    note = "" if states else "sacct knows none of these jobs (or failed): states from the files"
    return states, note
