"""`mtl-ser sweep --status O`: one line per run of the sweep folder O, from the files on disk
and, when it can be asked, the scheduler.

The runs are those ever planned into O (its sweep_plan.json) and every folder below O with a
sweep_run.json. Each gets one state:

    finished  complete results.json
    running   its folder is locked by a live process, or its job is running
    queued    its job waits in the scheduler's queue (submitted, or requeued after a
              pre-emption or its time limit)
    failed    its latest attempt ended with an error (exit status and the log's last line)
    stopped   it ended without results and without an error of its own: stopped with its
              sweep, killed, cancelled, out of time; resumes when the sweep is run again
    unknown   its job was not asked (another machine's process, or no scheduler reachable)
              and its files do not settle it
    changed   the folder holds files that no sweep wrote
    missing   planned, never started

with the job (Slurm job id, local pid), the epoch reached and the best validation UA.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mtl_ser.runlock import is_locked
from mtl_ser.sweep.jobs import job_liveness, job_view
from mtl_ser.sweep.launch import metrics_text
from mtl_ser.sweep.plan import SWEEP_LOG_FILE, SWEEP_RUN_FILE, complete_results, planned_names
from mtl_ser.sweep.runfolder import Progress, progress, read_events

# `mtl_ser.sweep.plan.run_subfolder`'s layout.
RUN_NAME = re.compile(r"([^/]+)/([^/]+)/alpha([^/]+)/fold(\d+)/seed(\d+)")
STATES = ("finished", "running", "queued", "failed", "stopped", "unknown", "changed", "missing")


@dataclass(frozen=True)
class RunStatus:
    """One line of the status view."""

    name: str
    state: str
    job: str  # e.g. "job 1234_5", "pid 999", "" when none
    progress: Progress
    detail: str

    def line(self, width: int) -> str:
        parts = [f"{self.state:8s}", f"{self.name:{width}s}", f"{self.job:16s}"]
        parts += [f"{self.progress.text():28s}", self.detail]
        return "  ".join(parts).rstrip()


def find_runs(output_folder: Path) -> list[str]:
    """Names of the runs of a sweep folder: planned ones and those with a sweep_run.json,
    ordered by recipe, protocol, alpha, fold and seed (numbers as numbers)."""
    found = {
        path.parent.relative_to(output_folder).as_posix()
        for path in output_folder.rglob(SWEEP_RUN_FILE)
    }
    return sorted(found | set(planned_names(output_folder)), key=_identity_key)


def _identity_key(name: str) -> tuple:
    match = RUN_NAME.fullmatch(name)
    try:
        recipe, protocol, alpha, fold, seed = match.groups()
        return (0, recipe, protocol, float(alpha), int(fold), int(seed))
    except (AttributeError, ValueError):  # not the sweep's layout: after those, by name
        return (1, name)


def sweep_status(output_folder: str | Path) -> tuple[list[RunStatus], str]:
    """The state of every run of a sweep folder.

    Returns: (one RunStatus per run, by name; a note on where states came from, or "").
    Raises FileNotFoundError when the folder holds no sweep.
    """
    output_folder = Path(output_folder)
    if not output_folder.is_dir():
        raise FileNotFoundError(f"no folder {output_folder}")
    names = find_runs(output_folder)
    if not names:
        raise FileNotFoundError(f"{output_folder} holds no sweep (no {SWEEP_RUN_FILE} below it)")
    views = {}
    for name in names:
        folder = output_folder / name
        view = job_view(read_events(folder))
        if view is not None and view.phase != "ended":
            views[name] = (view, folder)
    liveness, note = job_liveness(views)
    rows = []
    for name in names:
        folder = output_folder / name
        view = job_view(read_events(folder))
        state, detail = _classify(folder, view, liveness.get(name))
        rows.append(RunStatus(name, state, view.label() if view else "", progress(folder), detail))
    return rows, note


def _classify(folder: Path, view, alive) -> tuple[str, str]:
    """(state, detail) of one run folder; see the module's docstring."""
    log = folder / SWEEP_LOG_FILE
    if not (folder / SWEEP_RUN_FILE).is_file():
        if folder.is_dir() and any(folder.iterdir()):
            return "changed", f"holds files but no {SWEEP_RUN_FILE}"
        return "missing", ""
    results = complete_results(folder)
    if results is not None:
        return "finished", f"test {metrics_text(results)}"
    if is_locked(folder):
        return "running", ""
    scheduler = f" ({alive.scheduler_state})" if alive and alive.scheduler_state else ""
    if alive is not None and alive.state in ("running", "queued"):
        requeued = "; requeued, resumes" if view.phase == "requeued" else ""
        return alive.state, f"{view.label()} {alive.state}{scheduler}{requeued}".strip()
    if view is None:
        return "stopped", "no job recorded; resumes when the sweep is run again"
    if view.phase == "ended":
        last = view.last
        if last.get("stopped"):
            return "stopped", "stopped with its sweep; resumes when the sweep is run again"
        if last.get("exit_status") == 0:
            return "failed", f"the recipe ended without a complete results.json; log: {log}"
        return "failed", f"{last.get('error') or 'failed'}; log: {log}"
    if alive is not None and alive.state == "unknown":
        return "unknown", f"last event: {view.phase} at {view.last.get('time')} on {view.host}"
    # The job is gone, but never said how it ended.
    if view.phase in ("started", "requeued"):
        return "stopped", f"ended without results or an error{scheduler} (killed?); resumes"
    job_log = _job_log(view)
    return "failed", f"job ended before the recipe started{scheduler}; job log: {job_log}"


def _job_log(view) -> str:
    """submitit's error log of a job, where the job failed before running the recipe."""
    if not view.submitit_folder or not view.job_id:
        return "none recorded"
    from submitit.core.utils import JobPaths

    return str(JobPaths(view.submitit_folder, job_id=view.job_id, task_id=0).stderr)


def status_lines(rows: list[RunStatus], note: str) -> list[str]:
    """The status view: one line per run, then the count per state (and the note)."""
    width = max(len(r.name) for r in rows)
    lines = [row.line(width) for row in rows]
    counts = Counter(row.state for row in rows)
    summary = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
    lines.append(f"{len(rows)} runs: {summary}")
    if note:
        lines.append(f"note: {note}")
    return lines
