"""The files a sweep keeps in each run folder besides the recipe's own outputs.

    sweep_run.json     the run's command and configuration (`mtl_ser.sweep.plan`)
    sweep_log.txt      the recipe's output, one ``==== <time> <state>: <command>`` header per
                       attempt
    sweep_jobs.jsonl   the run's job history, one JSON event per line, appended by whoever
                       submits or runs the recipe: ``submitted`` (a cluster job id), ``started``
                       (host, pid, job id), ``requeued`` (pre-empted or out of time; resumes),
                       ``ended`` (exit status, error)

The history is append-only (each event one ``write``), so the submitting sweep and the job
never overwrite each other's lines. `progress` reads how far training got.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from mtl_ser.brain import EPOCH_LOG
from mtl_ser.checkpoints import COMPLETE
from mtl_ser.sweep.plan import SWEEP_LOG_FILE, SWEEP_RUN_FILE, Run

JOBS_FILE = "sweep_jobs.jsonl"


def now() -> str:
    """The local time in ISO format, to the second."""
    return datetime.now().isoformat(timespec="seconds")


def prepare_run_folder(run: Run, state: str) -> Path:
    """Makes ``run``'s folder ready for an attempt: deletes it first when its configuration
    changed (``state == "changed"``, only reached with ``overwrite_changed``) and writes
    sweep_run.json unless the run resumes. Returns the log file."""
    if state == "changed":
        shutil.rmtree(run.folder)
    run.folder.mkdir(parents=True, exist_ok=True)
    if state != "resume":
        record = {**run.record(), "created": now(), "cwd": os.getcwd()}
        tmp = run.folder / (SWEEP_RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, run.folder / SWEEP_RUN_FILE)
    return run.folder / SWEEP_LOG_FILE


def log_attempt(log: Path, state: str, command, where: str = "") -> None:
    """Appends the header of an attempt to the run's log."""
    where = f" ({where})" if where else ""
    with open(log, "a") as f:
        f.write(f"==== {now()} {state}{where}: {' '.join(command)}\n")


def append_event(folder: Path, event: str, **fields) -> None:
    """Appends ``{"event": event, "time": ..., "host": ..., **fields}`` to the run's job
    history (one ``write`` of one line)."""
    entry = {"event": event, "time": now(), "host": socket.gethostname(), **fields}
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(Path(folder) / JOBS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(folder: Path) -> list[dict]:
    """The run's job history, oldest first (a torn last line is ignored)."""
    try:
        lines = (Path(folder) / JOBS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def last_line(log: Path) -> str:
    """The last non-empty line of a log (usually the exception), at most 300 characters."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class Progress:
    """How far a run's training got.

    Attributes:
        epoch: the last validated epoch (None before the first one).
        planned: ``number_of_epochs`` of the run (None when unknown).
        best_valid_ua: the best validation UA so far (None before the first epoch).
    """

    epoch: int | None
    planned: int | None
    best_valid_ua: float | None

    def text(self) -> str:
        """E.g. ``epoch 12/100  valid UA 61.20%`` (empty before the first epoch)."""
        if self.epoch is None:
            return ""
        planned = f"/{self.planned}" if self.planned else ""
        ua = "" if self.best_valid_ua is None else f"  valid UA {self.best_valid_ua:.2%}"
        return f"epoch {self.epoch}{planned}{ua}"


def progress(folder: Path) -> Progress:
    """Reads a run folder's progress: epochs and validation UA from its epoch log, or from
    its complete checkpoints (``save/CKPT*/CKPT.yaml``) when it has no epoch log; the planned
    number of epochs from the ``hyperparams.yaml`` the recipe saved."""
    folder = Path(folder)
    epochs: dict[int, float | None] = {}
    try:
        for line in (folder / EPOCH_LOG).read_text().splitlines():
            try:
                entry = json.loads(line)
                epochs[int(entry["epoch"])] = entry.get("valid_ua")
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill
    except OSError:
        pass
    if not epochs:
        epochs = _checkpointed_epochs(folder / "save")
    planned = None
    try:
        found = re.search(
            r"^number_of_epochs:\s*(\d+)", (folder / "hyperparams.yaml").read_text(), re.M
        )
        planned = int(found.group(1)) if found else None
    except OSError:
        pass
    uas = [ua for ua in epochs.values() if ua is not None]
    return Progress(max(epochs) if epochs else None, planned, max(uas) if uas else None)


def _checkpointed_epochs(save: Path) -> dict[int, float | None]:
    """{epoch: validation UA} of the complete checkpoints below ``save``."""
    epochs = {}
    for meta in save.glob("CKPT*/CKPT.yaml"):
        if not (meta.parent / COMPLETE).is_file():
            continue
        try:
            data = yaml.safe_load(meta.read_text()) or {}
            epochs[int(data["epoch"])] = data.get("UA")
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
            continue
    return epochs
