"""The cluster path end to end on the CPU, without Slurm: a tiny sweep submitted through
submitit's local executor, one job pre-empted mid-run (the signal Slurm sends) and requeued,
then `--status`, `report` and a re-submission; and a local sweep killed with SIGKILL, which
takes its run with it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mtl_ser.processes import process_alive
from mtl_ser.report import write_report
from mtl_ser.runlock import is_locked
from mtl_ser.sweep import execute_sweep, plan_sweep
from mtl_ser.sweep.cluster import ClusterOptions, SubmititLauncher
from mtl_ser.sweep.runfolder import read_events
from mtl_ser.sweep.status import sweep_status
from tests.recipes.helpers import ROOT, TINY, epoch_log, read_json
from tests.recipes.test_sweep import run_folder

# Compared with an uninterrupted run of the same configuration (the `mtl_run` fixture).
METRICS = ("wa", "ua", "macro_f1", "per_class_recall", "confusion_matrix", "wer", "cer")


def sweep_command(out, data, *options, epochs=2):
    command = [sys.executable, "-m", "mtl_ser.cli", "sweep", str(ROOT / "hparams/mtl.yaml")]
    command += ["--output-folder", str(out), "--alphas", "0.1", *options, "--", TINY]
    return command + [f"--data_folder={data}", f"--number_of_epochs={epochs}"]


def wait_for(condition, what: str, process=None, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the sweep ended (status {process.returncode}) before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def started_pid(folder) -> int | None:
    started = [e for e in read_events(folder) if e["event"] == "started"]
    return started[-1]["pid"] if started else None


@pytest.fixture(scope="module")
def preempted(demo_corpus, tmp_path_factory):
    """`mtl-ser sweep --launcher submitit-local --wait` of alpha 0.1 x folds 1-2 (2 epochs),
    whose fold-1 job gets SIGUSR2 once its epoch-1 checkpoint is complete. Returns (sweep
    folder, the sweep's exit status and output, the status rows seen before the signal)."""
    out = tmp_path_factory.mktemp("cluster_sweep")
    output = out.parent / f"{out.name}.txt"
    options = ("--folds", "1-2", "--launcher", "submitit-local", "--time-min", "30", "--wait")
    with open(output, "w") as f:
        # Its own process group holds the jobs' controllers and tasks, to end them on failure.
        sweep = subprocess.Popen(
            sweep_command(out, demo_corpus, *options),
            stdout=f,
            stderr=f,
            cwd=ROOT,
            start_new_session=True,
        )
    fold1 = run_folder(out, "0.1", 1)
    try:
        wait_for(lambda: list(fold1.glob("save/CKPT*/COMPLETE")), "epoch 1 of fold 1", sweep)
        before = {row.name: row for row in sweep_status(out)[0]}
        # What Slurm sends a job before its time limit, or when it is pre-empted.
        os.kill(started_pid(fold1), signal.SIGUSR2)
        sweep.wait(timeout=400)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    return out, sweep.returncode, output.read_text(), before


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(preempted):
    out, status, output, _ = preempted
    assert status == 0, output
    assert "2 runs, 2 done, 0 skipped, 0 failed" in output
    fold1, fold2 = run_folder(out, "0.1", 1), run_folder(out, "0.1", 2)
    events = read_events(fold1)
    assert [e["event"] for e in events] == ["submitted", "started", "requeued", "started", "ended"]
    assert len({e["job_id"] for e in events}) == 1  # one job, requeued
    assert events[-1]["exit_status"] == 0
    attempts = (fold1 / "sweep_log.txt").read_text().split("==== ")[1:]
    assert len(attempts) == 2 and attempts[1].split(" ")[1] == "resume"
    assert "Going into epoch 1\n" in attempts[0]
    assert "Going into epoch 1\n" not in attempts[1]  # resumed after the saved epoch 1
    epochs = [e["epoch"] for e in epoch_log(fold1)]
    assert epochs.count(1) == 1 and set(epochs) == {1, 2}
    assert read_json(fold1 / "results.json")["num_utterances"] == 53
    # The other job was not disturbed.
    assert [e["event"] for e in read_events(fold2)] == ["submitted", "started", "ended"]
    assert (fold2 / "sweep_log.txt").read_text().count("==== ") == 1
    assert [e["epoch"] for e in epoch_log(fold2)] == [1, 2]


def test_status_report_and_resubmission_of_the_cluster_sweep(preempted, demo_corpus):
    out, status, output, before = preempted
    assert status == 0, output
    name1, name2 = (f"mtl/loso/alpha0.1/fold{k}/seed1986" for k in (1, 2))
    assert before[name1].state == "running"
    assert before[name1].progress.text().startswith("epoch 1/2  valid UA")
    assert before[name2].state in ("queued", "running", "finished")

    rows, note = sweep_status(out)
    assert note == "" and [r.state for r in rows] == ["finished", "finished"]
    for row in rows:
        results = read_json(out / row.name / "results.json")
        assert row.job == f"local job {read_events(out / row.name)[0]['job_id']}"
        assert row.progress.epoch == 2 and row.progress.planned == 2
        assert f"UA {results['ua']:.2%}" in row.detail

    write_report([out], None, echo=lambda *_: None)
    with open(out / "runs.csv") as f:
        report_rows = list(csv.DictReader(f))
    assert sorted(int(r["fold"]) for r in report_rows) == [1, 2]
    for row in report_rows:
        results = read_json(out / f"mtl/loso/alpha0.1/fold{row['fold']}/seed1986/results.json")
        assert float(row["wa"]) == pytest.approx(results["wa"])

    # Submitting the same sweep again submits nothing.
    runs = plan_sweep(
        ROOT / "hparams/mtl.yaml",
        out,
        alphas=[0.1],
        folds=[1, 2],
        extra=[TINY, f"--data_folder={demo_corpus}", "--number_of_epochs=2"],
    )
    launcher = SubmititLauncher(out, ClusterOptions(time_min=30, gpus_per_node=0), "local")
    outcome = execute_sweep(runs, launcher, echo=lambda line: None)
    assert len(outcome.skipped) == 2 and not outcome.submitted
    assert [e["event"] for e in read_events(out / name2)] == ["submitted", "started", "ended"]


def test_preempted_run_matches_an_uninterrupted_run(preempted, mtl_run):
    """Needs bit-exact resume (RNG states restored from the checkpoint): the same test
    metrics as the fixture's uninterrupted run of the same configuration."""
    out, status, output, _ = preempted
    assert status == 0, output
    resumed = read_json(run_folder(out, "0.1", 1) / "results.json")
    uninterrupted = read_json(mtl_run[0] / "results.json")
    assert {k: resumed[k] for k in METRICS} == {k: uninterrupted[k] for k in METRICS}


def test_a_killed_local_sweep_takes_its_run_with_it(demo_corpus, tmp_path):
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(
        sweep_command(out, demo_corpus, "--folds", "1", epochs=1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    folder = run_folder(out, "0.1", 1)
    try:
        wait_for(lambda: started_pid(folder), "the run to start", sweep)
        child = started_pid(folder)
        assert process_alive(child, str(folder))
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    wait_for(lambda: not process_alive(child), "the orphaned run to end", timeout=5)
    assert not is_locked(folder)
    [row] = sweep_status(out)[0]
    assert row.state == "stopped" and row.job == f"pid {child}"
    assert json.loads((folder / "sweep_run.json").read_text())["fold"] == 1
