"""The cluster launcher: the batch script submitit writes for Slurm (stand-in sbatch, srun
and sacct on PATH), never two jobs for one run, torchrun, and a failing job through
submitit's local executor."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from mtl_ser.cli import main as cli_main
from mtl_ser.sweep import execute_sweep
from mtl_ser.sweep.cluster import (
    ClusterOptions,
    SubmititLauncher,
    parse_sbatch_options,
    torchrun_command,
)
from mtl_ser.sweep.launch import SubmissionError
from mtl_ser.sweep.runfolder import read_events
from mtl_ser.sweep.status import sweep_status
from tests.unit.test_sweep import ROOT, fake_run

# sbatch: answers with the next job id of a counter file, or fails while <bin>/refuse exists.
SBATCH = """#!/bin/sh
here=$(dirname "$0")
if [ -e "$here/refuse" ]; then
  echo "sbatch: error: invalid partition specified: gpu" >&2
  exit 1
fi
n=$(cat "$here/next_id")
echo $((n + 1)) > "$here/next_id"
echo "Submitted batch job $n"
"""
# sacct: prints <bin>/sacct.txt (JobID|State|NodeList lines).
SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
cat "$(dirname "$0")/sacct.txt"
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A stand-in Slurm on PATH; returns its folder (write sacct.txt there)."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", "#!/bin/sh\nexit 0\n"), ("sacct", SACCT)):
        (bin_folder / name).write_text(text)
        (bin_folder / name).chmod(0o755)
    (bin_folder / "next_id").write_text("4242\n")
    (bin_folder / "sacct.txt").write_text("")
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    return bin_folder


def submit(runs, out, **options):
    lines = []
    launcher = SubmititLauncher(out, ClusterOptions(**{"time_min": 600, **options}))
    outcome = execute_sweep(runs, launcher, echo=lines.append)
    return outcome, lines


def test_slurm_array_with_the_requested_resources(tmp_path, slurm):
    out = tmp_path / "sweep"
    runs = [fake_run(out, k) for k in (1, 2, 3)]
    outcome, lines = submit(
        runs,
        out,
        gpus_per_node=4,
        nodes=2,
        cpus_per_node=40,
        mem_gb=64,
        partition="gpu",
        account="lab",
        sbatch=parse_sbatch_options(["qos=high", "exclusive"]),
        setup=("module load cuda/12.1",),
        max_parallel=2,
    )
    assert [job for _, job in outcome.submitted] == ["4242_0", "4242_1", "4242_2"]
    assert lines == [f"[{k}/3] submit  {runs[k - 1].name}  job 4242_{k - 1}" for k in (1, 2, 3)]
    script = (out / "submitit" / "4242_submission.sh").read_text()
    for option in (
        "--array=0-2%2",
        "--partition=gpu",
        "--account=lab",
        "--time=600",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=40",
        "--mem=64GB",
        "--qos=high",
        "--exclusive",
        "--signal=USR2@90",
        "--open-mode=append",
    ):
        assert re.search(rf"^#SBATCH {re.escape(option)}$", script, re.M), option
    assert script.index("module load cuda/12.1") < script.index("srun")
    assert f"{sys.executable} -u -m submitit.core._submit" in script
    for run, job in zip(runs, ("4242_0", "4242_1", "4242_2"), strict=True):
        [event] = read_events(run.folder)
        assert (event["event"], event["launcher"], event["job_id"]) == ("submitted", "slurm", job)
        assert json.loads((run.folder / "sweep_run.json").read_text())["command"] == list(
            run.command
        )


def test_slurm_jobs_are_never_submitted_twice(tmp_path, slurm):
    out = tmp_path / "sweep"
    runs = [fake_run(out, k) for k in (1, 2, 3, 4)]
    submit(runs, out)
    # 4242_3 ran and failed before starting the recipe (no `started` event).
    (slurm / "sacct.txt").write_text(
        "4242_0|RUNNING|node1\n4242_1|PENDING|\n4242_2|CANCELLED by 1000|node2\n"
        "4242_3|FAILED|node3\n"
    )
    rows = {row.name: row for row in sweep_status(out)[0]}
    assert [rows[f"fold{k}"].state for k in (1, 2, 3, 4)] == [
        "running",
        "queued",
        "failed",
        "failed",
    ]
    assert rows["fold2"].job == "job 4242_1" and "(PENDING)" in rows["fold2"].detail
    assert "(CANCELLED)" in rows["fold3"].detail
    assert str(out / "submitit" / "4242_3_0_log.err") in rows["fold4"].detail

    outcome, lines = submit(runs, out)
    assert [(r.fold, why) for r, why in outcome.busy] == [
        (1, "job 4242_0 is running (RUNNING)"),
        (2, "job 4242_1 is queued (PENDING)"),
    ]
    assert [(r.fold, job) for r, job in outcome.submitted] == [(3, "4243_0"), (4, "4243_1")]

    # Without a reachable scheduler, a job that may be alive is not submitted again.
    (slurm / "sacct").unlink()
    outcome, _ = submit(runs, out)
    assert len(outcome.busy) == 4 and not outcome.submitted
    assert "may still be alive (Slurm not reachable from this machine" in outcome.busy[0][1]
    rows, note = sweep_status(out)
    assert {row.state for row in rows} == {"unknown"}
    assert "last event: submitted" in rows[0].detail and "no sacct" in note


def test_a_refused_submission_is_an_error_naming_sbatch_s_message(tmp_path, slurm):
    (slurm / "refuse").touch()
    out = tmp_path / "sweep"
    with pytest.raises(SubmissionError, match="none was submitted.*invalid partition"):
        submit([fake_run(out, 1)], out, partition="gpu")
    assert read_events(out / "fold1") == []


def test_slurm_needs_its_tools_and_sane_resources(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="needs Slurm's sbatch and srun.*submitit-local"):
        SubmititLauncher(tmp_path, ClusterOptions(time_min=10))
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        ClusterOptions(time_min=10, nodes=0)
    with pytest.raises(ValueError, match="without dashes"):
        parse_sbatch_options(["--qos=high"])


def test_torchrun_above_one_gpu():
    command = ["py", "recipes/train_mtl.py", "hparams/mtl.yaml", "--fold=2"]
    assert torchrun_command(command, 1, 1, "n1", "77_3") == command
    assert torchrun_command(command, 4, 1, "n1", "77_3") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=4",
        "--standalone",
        *command[1:],
    ]
    two_nodes = torchrun_command(command, 8, 2, "gpu-node-17", "77_3")
    assert two_nodes[:8] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=8",
        "--nnodes=2",
        "--rdzv_backend=c10d",
        "--rdzv_id=77_3",
        two_nodes[7],
    ]
    host, port = two_nodes[7].removeprefix("--rdzv_endpoint=").split(":")
    assert host == "gpu-node-17" and 29400 <= int(port) < 30400
    assert two_nodes[8:] == command[1:]
    assert torchrun_command(command, 8, 2, "gpu-node-17", "77_3") == two_nodes


def test_a_failing_job_reports_its_log_and_is_not_retried(tmp_path):
    out = tmp_path / "sweep"
    run = fake_run(out, 1)
    out.mkdir()
    (out / "fold1.crash").touch()
    lines = []
    launcher = SubmititLauncher(out, ClusterOptions(time_min=5, gpus_per_node=0), "local", True)
    outcome = execute_sweep([run], launcher, echo=lines.append)
    log = run.folder / "sweep_log.txt"
    [(_, why)] = outcome.failed
    assert why == "exit status 1: ValueError: no such fold"
    assert f"] failed  {run.name}  exit status 1: ValueError: no such fold; log: {log}" in lines[-1]
    events = [e["event"] for e in read_events(run.folder)]
    assert events == ["submitted", "started", "ended"]
    assert log.read_text().count("==== ") == 1
    [row] = sweep_status(out)[0]
    assert (row.state, row.job) == ("failed", f"local job {outcome.submitted[0][1]}")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--launcher", "submitit-local"], "needs --time-min"),
        (["--launcher", "slurm", "--time-min", "60", "--jobs", "2"], "--jobs applies to"),
        (["--partition", "gpu", "--wait"], "--partition, --wait: cluster options"),
    ],
)
def test_cluster_options_are_checked(tmp_path, capsys, options, message):
    argv = ["sweep", str(ROOT / "hparams/mtl.yaml"), "--output-folder", str(tmp_path / "o")]
    assert cli_main([*argv, "--folds", "1", *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
