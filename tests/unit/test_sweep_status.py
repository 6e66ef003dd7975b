"""One writer per run, the children of a sweep, and `--status`, with stand-in commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mtl_ser.processes import process_alive
from mtl_ser.runlock import RunLock
from mtl_ser.sweep import LocalLauncher, execute_sweep
from mtl_ser.sweep.cli import main as sweep_main
from mtl_ser.sweep.plan import record_plan
from mtl_ser.sweep.process import start_process, stop_process
from mtl_ser.sweep.runfolder import append_event, progress, read_events
from mtl_ser.sweep.status import status_lines, sweep_status
from tests.unit.test_sweep import fake_run

SLEEPER = "import sys, time; print('training in', sys.argv[1], flush=True); time.sleep(60)"


def local_execute(runs):
    lines = []
    outcome = execute_sweep(runs, LocalLauncher(jobs=1, gpus=[], cores=1), echo=lines.append)
    return outcome, lines


def write_epochs(folder, uas, planned):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"epoch": k, "valid_ua": ua}) for k, ua in enumerate(uas, 1)]
    (folder / "epoch_log.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "hyperparams.yaml").write_text(f"seed: 1\nnumber_of_epochs: {planned}\n")


def test_a_run_in_use_is_never_started_twice(tmp_path):
    runs = [fake_run(tmp_path, k) for k in (1, 2, 3)]
    for run in runs:  # an earlier attempt of each, interrupted
        run.folder.mkdir()
        (run.folder / "sweep_run.json").write_text(json.dumps(run.record()))
    # Run 1: a live writer holds its lock. Run 2: the process of its last attempt still
    # runs (a sweep elsewhere on this machine, before the recipe takes the lock).
    holder = RunLock(runs[0].folder).acquire()
    other = subprocess.Popen([sys.executable, "-c", SLEEPER, str(runs[1].folder)])
    append_event(runs[1].folder, "started", launcher="local", pid=other.pid)
    try:
        outcome, lines = local_execute(runs)
        assert [r.fold for r, _ in outcome.busy] == [1, 2]
        assert [r.fold for r, _ in outcome.done] == [3]
        [busy1] = [ln for ln in lines if "] busy" in ln and "fold1" in ln]
        assert "in use by a live process (run.lock is held)" in busy1
        [busy2] = [ln for ln in lines if "] busy" in ln and "fold2" in ln]
        assert f"pid {other.pid} is running" in busy2
        assert not (runs[0].folder / "results.json").exists()
    finally:
        holder.release()
        other.kill()
        other.wait()
    # Both writers gone: the next sweep resumes those two runs.
    outcome, _ = local_execute(runs)
    assert [r.fold for r, _ in outcome.done] == [1, 2] and len(outcome.skipped) == 1


def test_stop_process_ends_the_whole_process_group(tmp_path):
    code = (
        "import subprocess, sys, time;"
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, 'grandchild']);"
        "time.sleep(60)"
    )
    process = start_process([sys.executable, "-c", code], tmp_path / "log.txt")
    deadline = time.monotonic() + 10
    while "grandchild" not in (tmp_path / "log.txt").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    group = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
    members = [int(pid) for pid in group.stdout.split()]
    assert len(members) == 2
    stop_process(process, grace_s=5)
    assert process.returncode == -signal.SIGTERM
    time.sleep(0.2)
    assert not any(process_alive(pid) for pid in members)


def test_progress_reads_the_epoch_log_and_the_planned_epochs(tmp_path):
    write_epochs(tmp_path, [0.3, 0.5, 0.4], planned=100)
    with open(tmp_path / "epoch_log.jsonl", "a") as f:
        f.write('{"epoch": 4, "valid_')  # torn by a kill
    found = progress(tmp_path)
    assert (found.epoch, found.planned, found.best_valid_ua) == (3, 100, 0.5)
    assert found.text() == "epoch 3/100  valid UA 50.00%"
    assert progress(tmp_path / "nothing").text() == ""


def test_status_from_the_files(tmp_path, capsys):
    finished, failed, stopped, running, killed = (fake_run(tmp_path, k) for k in range(1, 6))
    (tmp_path / "fold2.crash").touch()
    local_execute([finished, failed])
    # A run stopped with its sweep (the sweep records it), and one whose sweep was killed.
    for run, events in ((stopped, ["started", "ended"]), (killed, ["started"])):
        run.folder.mkdir()
        (run.folder / "sweep_run.json").write_text(json.dumps(run.record()))
        write_epochs(run.folder, [0.25, 0.31], planned=8)
        append_event(run.folder, events[0], launcher="local", pid=2**22 + 1)
        if len(events) > 1:
            append_event(run.folder, "ended", exit_status=-15, stopped=True)
    running.folder.mkdir()
    (running.folder / "sweep_run.json").write_text(json.dumps(running.record()))
    write_epochs(running.folder, [0.4], planned=8)
    planned_only, stray = fake_run(tmp_path, 6), fake_run(tmp_path, 7)
    record_plan(tmp_path, [planned_only, stray])
    stray.folder.mkdir()
    (stray.folder / "notes.txt").write_text("not written by a sweep")

    with RunLock(running.folder):
        rows, note = sweep_status(tmp_path)
    by_name = {row.name: row for row in rows}
    assert note == ""
    assert {name: row.state for name, row in by_name.items()} == {
        "fold1": "finished",
        "fold2": "failed",
        "fold3": "stopped",
        "fold4": "running",
        "fold5": "stopped",
        "fold6": "missing",
        "fold7": "changed",
    }
    assert "test WA 50.00%  UA 25.00%  WER n/a" in by_name["fold1"].detail
    assert by_name["fold1"].job.startswith("pid ")
    log = failed.folder / "sweep_log.txt"
    assert by_name["fold2"].detail == f"exit status 1: ValueError: no such fold; log: {log}"
    assert "stopped with its sweep" in by_name["fold3"].detail
    assert by_name["fold3"].progress.text() == "epoch 2/8  valid UA 31.00%"
    assert by_name["fold4"].progress.text() == "epoch 1/8  valid UA 40.00%"
    assert "ended without results or an error" in by_name["fold5"].detail
    lines = status_lines(rows, note)
    assert lines[-1] == ("7 runs: 1 finished, 1 running, 1 failed, 2 stopped, 1 changed, 1 missing")
    assert lines[0].split()[:3] == ["finished", "fold1", "pid"]

    assert sweep_main(["--status", str(tmp_path)]) == 0
    assert "7 runs: 1 finished" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="holds no sweep"):
        sweep_status(tmp_path / "fold7")


def test_local_history_records_each_attempt(tmp_path):
    run = fake_run(tmp_path, 1)
    (tmp_path / "fold1.silent").touch()
    local_execute([run])
    (tmp_path / "fold1.silent").unlink()
    local_execute([run])
    events = read_events(run.folder)
    assert [e["event"] for e in events] == ["started", "ended", "started", "ended"]
    assert events[1]["error"] == "exited without results.json: forgot to write results"
    assert events[3]["exit_status"] == 0 and "error" not in events[3]
