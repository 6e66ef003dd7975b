"""The seam between a sweep's plan and what runs it: `Launcher`, and `execute_sweep`, which
decides what to launch the same way for every launcher.

Before anything starts, every planned run is sorted out:

- a folder whose stored configuration differs is an error (nothing starts), unless
  ``overwrite_changed``;
- a run whose folder is locked by a live writer (``run.lock``, `mtl_ser.runlock`), or whose
  latest job is still queued or running (or may be: its scheduler cannot be asked), is left
  alone and listed as busy: a run is never started twice;
- a run with complete results is skipped;
- every other run is handed to the launcher, which starts it (the local launcher, and waits)
  or submits it (the cluster launcher, and returns).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from mtl_ser.runlock import is_locked
from mtl_ser.sweep.jobs import job_liveness, job_view
from mtl_ser.sweep.plan import Run, run_state
from mtl_ser.sweep.runfolder import read_events


class SubmissionError(RuntimeError):
    """A launcher could not hand the runs over (e.g. the scheduler refused the jobs)."""


@dataclass(frozen=True)
class Pending:
    """A run to launch: its progress tag (``[3/20]``), the run, and its state ("new",
    "resume", or "changed" with ``overwrite_changed``)."""

    tag: str
    run: Run
    state: str


@dataclass
class SweepOutcome:
    """What happened to each run: lists of (run, detail)."""

    done: list = field(default_factory=list)  # (run, results)
    skipped: list = field(default_factory=list)  # (run, results)
    failed: list = field(default_factory=list)  # (run, reason)
    busy: list = field(default_factory=list)  # (run, why it was not started)
    submitted: list = field(default_factory=list)  # (run, job id)

    @property
    def ok(self) -> bool:
        return not self.failed


class Launcher(ABC):
    """Runs the recipe commands of a sweep's runs somewhere.

    Attributes:
        waits: whether `launch` returns only when the runs have ended (else once they are
            submitted).
    """

    waits: bool = True

    @abstractmethod
    def describe(self) -> str:
        """Where the runs go, for the sweep's first line (e.g. ``2 at once on CPU``)."""

    @abstractmethod
    def launch(self, pending: list[Pending], outcome: SweepOutcome, echo) -> None:
        """Starts or submits ``pending`` (each run's folder still to prepare with
        `mtl_ser.sweep.runfolder.prepare_run_folder`), recording each run's jobs in its
        history, and adds what happened to ``outcome`` (done / failed for a launcher that
        waits, submitted for one that does not). ``echo`` takes progress lines."""


def metrics_text(results: dict) -> str:
    """``WA 71.20%  UA 70.10%  WER 0.201`` of a results dict."""
    wer = results.get("wer")
    wer_text = "n/a" if wer is None else f"{wer:.3f}"
    return f"WA {results['wa']:.2%}  UA {results['ua']:.2%}  WER {wer_text}"


def busy_reasons(runs: list[Run]) -> dict[Run, str]:
    """Why some of ``runs`` must not be started now: their folder is locked by a live
    process, or their latest job is queued or running, or may be (the scheduler cannot be
    asked). Returns {run: reason} for those runs only."""
    reasons, views = {}, {}
    for run in runs:
        if is_locked(run.folder):
            reasons[run] = "in use by a live process (run.lock is held)"
            continue
        view = job_view(read_events(run.folder))
        if view is not None and view.phase != "ended":
            views[run] = (view, run.folder)
    liveness, note = job_liveness(views)
    for run, alive in liveness.items():
        view = views[run][0]
        word = f" ({alive.scheduler_state})" if alive.scheduler_state else ""
        if alive.state in ("running", "queued"):
            reasons[run] = f"{view.label()} is {alive.state}{word}"
        elif alive.state == "unknown":
            where = note or f"it was started on {view.host}"
            reasons[run] = f"{view.label()} may still be alive ({where}); not started again"
    return reasons


def execute_sweep(
    runs: list[Run], launcher: Launcher, overwrite_changed: bool = False, echo=print
) -> SweepOutcome:
    """Launches the runs that are neither complete nor busy.

    Args:
        runs: from `mtl_ser.sweep.plan.plan_sweep`.
        launcher: what runs them.
        overwrite_changed: delete and redo runs whose stored configuration differs (else
            such runs are an error before anything is started).
        echo: where progress lines go.

    Returns: the outcome. Raises ValueError listing the changed runs (nothing started).
    """
    states = [run_state(run) for run in runs]
    changed = [
        (run, why) for run, (state, why) in zip(runs, states, strict=True) if state == "changed"
    ]
    if changed and not overwrite_changed:
        lines = "\n".join(f"  {run.folder}: {why}" for run, why in changed)
        raise ValueError(
            f"{len(changed)} run folder(s) hold another configuration:\n{lines}\n"
            "use another --output-folder, or --overwrite-changed to delete and redo them"
        )
    started_before = [run for run, (state, _) in zip(runs, states, strict=True) if state != "new"]
    busy = busy_reasons(started_before)
    outcome = SweepOutcome()
    width = len(str(len(runs)))
    pending = []
    for index, (run, (state, detail)) in enumerate(zip(runs, states, strict=True), 1):
        tag = f"[{index:>{width}}/{len(runs)}]"
        if run in busy:
            echo(f"{tag} busy    {run.name}  ({busy[run]})")
            outcome.busy.append((run, busy[run]))
        elif state == "complete":
            echo(f"{tag} skip    {run.name}  (complete: {metrics_text(detail)})")
            outcome.skipped.append((run, detail))
        else:
            pending.append(Pending(tag, run, state))
    if pending:
        launcher.launch(pending, outcome, echo)
    return outcome
