"""The cluster launcher: one Slurm job per run, submitted as one array through submitit.

Each job runs `RecipeJob`: the run's recipe command (under ``torchrun`` when the run has
several GPUs or nodes), output appended to the run's sweep_log.txt (``sweep_log.node<k>.txt``
for the other nodes of a multi-node run), events appended to its job history.

Pre-emption and time limits follow submitit's checkpointing protocol: Slurm signals the job
(SIGUSR2, ``signal_delay_s`` = 90 s before the time limit, and on pre-emption where the
cluster sends it), submitit calls `RecipeJob.checkpoint`, which stops the recipe and hands
back the same job, and submitit requeues it; the requeued job runs the same command, and the
recipe resumes from its last complete checkpoint (an epoch boundary). A recipe that fails
(non-zero exit status, no results) makes the job fail with the log's path and last line; it
is not retried: re-run the sweep to try again.

``cluster="local"`` runs the same jobs through submitit's LocalExecutor on this machine (no
Slurm): every run at once, each in its own process tree. It exists to try, and to test, the
cluster path; the jobs outlive the sweep command, as cluster jobs do.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from mtl_ser.runlock import RunLockedError, is_locked
from mtl_ser.sweep.launch import (
    Launcher,
    Pending,
    SubmissionError,
    SweepOutcome,
    metrics_text,
)
from mtl_ser.sweep.local import duration_text
from mtl_ser.sweep.plan import SWEEP_LOG_FILE, Run, complete_results
from mtl_ser.sweep.process import (
    available_cores,
    start_process,
    stop_process,
    thread_environment,
)
from mtl_ser.sweep.runfolder import (
    append_event,
    last_line,
    log_attempt,
    prepare_run_folder,
    read_events,
)

SUBMITIT_FOLDER = "submitit"  # below the sweep's folder: submitit's scripts, pickles, job logs
RDZV_BASE_PORT = 29400


@dataclass(frozen=True)
class ClusterOptions:
    """Resources of each run's job.

    Attributes:
        time_min: the job's time limit, minutes; a run that needs longer is requeued and
            resumes, up to ``max_timeouts`` times.
        gpus_per_node: GPUs on each node of a run (a run with more than one GPU in all is
            launched with torchrun).
        nodes: nodes per run.
        cpus_per_node: CPU cores per node (Slurm's ``--cpus-per-task``, one task per node);
            None: the partition's default.
        mem_gb: memory per node; None: the partition's default.
        partition, account: Slurm's ``--partition``, ``--account``.
        sbatch: further ``#SBATCH`` options, e.g. {"qos": "high", "exclusive": True}.
        setup: shell lines run in the batch script before the job (``module load ...``).
        max_parallel: runs of the array at once (Slurm's ``--array=...%N``); None: all.
        max_timeouts: how many times a job that reaches its time limit is requeued
            (pre-emptions do not count).
    """

    time_min: int
    gpus_per_node: int = 1
    nodes: int = 1
    cpus_per_node: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    account: str | None = None
    sbatch: dict = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    max_parallel: int | None = None
    max_timeouts: int = 10

    def __post_init__(self):
        least = {"time_min": 1, "nodes": 1, "gpus_per_node": 0, "max_timeouts": 0}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")


def parse_sbatch_options(items: list[str]) -> dict:
    """``["qos=high", "exclusive"]`` -> ``{"qos": "high", "exclusive": True}`` (``#SBATCH
    --qos=high``, ``#SBATCH --exclusive``). Raises ValueError on an empty key or a key given
    with its dashes."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key or key.startswith("-"):
            raise ValueError(
                f"--sbatch {item!r}: give KEY=VALUE or KEY without dashes, e.g. --sbatch qos=high"
            )
        options[key] = value if sep else True
    return options


def torchrun_command(
    command: list[str] | tuple[str, ...],
    gpus_per_node: int,
    nodes: int,
    master_host: str,
    job_id: str,
) -> list[str]:
    """The command of one node of a run: the recipe command itself for one GPU (or CPU),
    else ``python -m torch.distributed.run`` with one process per GPU.

    Args:
        command: the recipe command, interpreter first, then the script and its arguments.
        gpus_per_node: processes per node.
        nodes: nodes of the run; more than one uses c10d rendezvous on ``master_host``.
        master_host: the run's first node.
        job_id: the job id, the rendezvous id (and the source of its port, so that two runs
            sharing a first node do not collide).
    """
    python, script, *args = command
    if gpus_per_node * nodes <= 1:
        return list(command)
    launch = [python, "-m", "torch.distributed.run", f"--nproc_per_node={gpus_per_node}"]
    if nodes == 1:
        launch.append("--standalone")
    else:
        port = RDZV_BASE_PORT + zlib.crc32(str(job_id).encode()) % 1000
        launch += [
            f"--nnodes={nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_id={job_id}",
            f"--rdzv_endpoint={master_host}:{port}",
        ]
    return [*launch, script, *args]


class RecipeJob(submitit.helpers.Checkpointable):
    """What a run's job executes (on each node): the recipe, resumable.

    Args:
        run: the run.
        cwd: the folder the sweep was started from (relative paths in the command).
        launcher: "slurm" or "submitit-local", recorded in the run's history.
        gpus_per_node, nodes: the run's resources (torchrun above one GPU in all).
        threads: CPU threads per recipe process (None: this node's cores / processes).
        stop_grace_s: how long the recipe may take to stop on pre-emption before SIGKILL.
        kill_grace_s: when the recipe is killed from outside (Slurm signals every process of
            a pre-empted job), how long to wait for the requeue signal before calling it a
            failure.
    """

    def __init__(
        self,
        run: Run,
        cwd: str,
        launcher: str,
        gpus_per_node: int = 1,
        nodes: int = 1,
        threads: int | None = None,
        stop_grace_s: float = 60.0,
        kill_grace_s: float = 120.0,
    ):
        self.run = run
        self.cwd = cwd
        self.launcher = launcher
        self.gpus_per_node = gpus_per_node
        self.nodes = nodes
        self.threads = threads
        self.stop_grace_s = stop_grace_s
        self.kill_grace_s = kill_grace_s
        self._process = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_process"] = None  # a process is not carried over to a requeued job
        return state

    def __call__(self) -> dict | None:
        """Runs the recipe to its end. Returns the run's name and test metrics (None on the
        nodes other than the first); raises RuntimeError when the recipe fails."""
        job = submitit.JobEnvironment()
        main = job.global_rank == 0
        folder = self.run.folder
        # The first node's output goes to the run's log; other nodes' to their own.
        log = folder / (SWEEP_LOG_FILE if main else f"sweep_log.node{job.node}.txt")
        if main and is_locked(folder):
            message = f"{folder} is in use by another live process (run.lock is held)"
            append_event(folder, "ended", job_id=job.job_id, exit_status=None, error=message)
            raise RunLockedError(message)
        command = torchrun_command(
            self.run.command, self.gpus_per_node, self.nodes, job.hostnames[0], job.job_id
        )
        processes = max(1, self.gpus_per_node)
        threads = self.threads or max(1, available_cores() // processes)
        if main:
            resumed = any(e.get("event") == "started" for e in read_events(folder))
            state = "resume" if resumed or (folder / "save").is_dir() else "start"
            log_attempt(log, state, command, where=f"job {job.job_id} on {job.hostname}")
            append_event(
                folder, "started", launcher=self.launcher, job_id=job.job_id, pid=os.getpid()
            )
        self._process = start_process(
            command,
            log,
            env={**os.environ, **thread_environment(threads)},
            cwd=self.cwd,
            # Only this process acts on the requeue signal (Slurm sends it to all of them).
            ignore_signals=(getattr(signal, "SIG" + job.USR_SIG),),
        )
        try:
            while self._process.poll() is None:
                time.sleep(0.5)
            status = self._process.returncode
        finally:
            if self._process.poll() is None:  # left by an exception (e.g. no more requeues)
                stop_process(self._process, self.stop_grace_s)
        if status < 0:
            # Killed from outside: a pre-empted job gets SIGTERM before the requeue signal,
            # which then ends this process (through `checkpoint`). Give it time to come.
            time.sleep(self.kill_grace_s)
        if not main:
            if status != 0:
                raise RuntimeError(f"{self.run.name}: node {job.node} exit status {status}")
            return None
        results = complete_results(folder)
        if status == 0 and results is not None:
            append_event(folder, "ended", job_id=job.job_id, exit_status=0)
            return {"run": self.run.name, **{k: results.get(k) for k in ("wa", "ua", "wer")}}
        if status < 0:
            why = f"killed by {signal.Signals(-status).name}"
        else:
            why = f"exit status {status}" if status else "exited without results.json"
        error = f"{why}: {last_line(log)}"
        append_event(folder, "ended", job_id=job.job_id, exit_status=status, error=error)
        raise RuntimeError(f"{self.run.name} failed, {error}; log: {log}")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on pre-emption or time limit (SIGUSR2, first node only): stops
        the recipe (it resumes from its last complete checkpoint) and returns the same job
        for the requeue."""
        if self._process is not None:
            stop_process(self._process, self.stop_grace_s)
        job = submitit.JobEnvironment()
        append_event(self.run.folder, "requeued", job_id=job.job_id)
        fresh = RecipeJob(
            self.run,
            self.cwd,
            self.launcher,
            self.gpus_per_node,
            self.nodes,
            self.threads,
            self.stop_grace_s,
            self.kill_grace_s,
        )
        return submitit.helpers.DelayedSubmission(fresh)


class SubmititLauncher(Launcher):
    """Submits each run as a job through submitit: to Slurm (one array), or with
    ``cluster="local"`` to submitit's local executor (this machine, no scheduler).

    Args:
        output_folder: the sweep's folder; submitit's files go to its ``submitit/``.
        options: the jobs' resources.
        cluster: "slurm" or "local".
        wait: wait for the jobs and report each run's outcome (else return once submitted).
        poll_s: seconds between checks while waiting.
    """

    def __init__(
        self,
        output_folder: str | Path,
        options: ClusterOptions,
        cluster: str = "slurm",
        wait: bool = False,
        poll_s: float = 1.0,
    ):
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be 'slurm' or 'local', not {cluster!r}")
        if cluster == "slurm":
            missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
            if missing:
                raise ValueError(
                    f"--launcher slurm needs Slurm's {' and '.join(missing)} on this machine "
                    "(run the sweep on a login node of the cluster); to try the cluster path "
                    "without Slurm, use --launcher submitit-local"
                )
        elif options.nodes > 1:
            raise ValueError("--launcher submitit-local runs on one machine: --nodes-per-run 1")
        self.folder = Path(output_folder).resolve() / SUBMITIT_FOLDER
        self.options = options
        self.cluster = cluster
        self.launcher = "slurm" if cluster == "slurm" else "submitit-local"
        self.waits = wait
        self.poll_s = poll_s

    def describe(self) -> str:
        o = self.options
        gpus = f"{o.gpus_per_node} GPU{'s' if o.gpus_per_node != 1 else ''}"
        nodes = f" x {o.nodes} nodes" if o.nodes > 1 else ""
        where = "to Slurm" if self.cluster == "slurm" else "to submitit's local executor"
        partition = f" partition {o.partition}," if o.partition else ""
        return (
            f"one job per run {where} ({gpus}{nodes} per run,{partition} time limit "
            f"{o.time_min} min, requeued up to {o.max_timeouts} times at the limit)"
        )

    def executor(self) -> submitit.AutoExecutor:
        """The submitit executor holding the jobs' parameters."""
        o = self.options
        executor = submitit.AutoExecutor(
            folder=self.folder,
            cluster=self.cluster,
            **{f"{self.cluster}_max_num_timeout": o.max_timeouts},
        )
        executor.update_parameters(
            name="mtl-ser-sweep",
            timeout_min=o.time_min,
            nodes=o.nodes,
            tasks_per_node=1,  # one task per node; torchrun starts the per-GPU processes
            gpus_per_node=o.gpus_per_node,
            cpus_per_task=o.cpus_per_node,
            mem_gb=o.mem_gb,
            slurm_partition=o.partition,
            slurm_account=o.account,
            slurm_additional_parameters=dict(o.sbatch) or None,
            slurm_setup=list(o.setup) or None,
            slurm_array_parallelism=o.max_parallel,
        )
        return executor

    def launch(self, pending: list[Pending], outcome: SweepOutcome, echo) -> None:
        executor = self.executor()
        # On this machine all jobs run at once: share the cores (Slurm binds each job's).
        threads = max(1, available_cores() // len(pending)) if self.cluster == "local" else None
        functions = []
        for item in pending:
            prepare_run_folder(item.run, item.state)
            functions.append(
                RecipeJob(
                    item.run,
                    os.getcwd(),
                    self.launcher,
                    self.options.gpus_per_node,
                    self.options.nodes,
                    threads,
                )
            )
        try:
            jobs = executor.submit_array(functions)
        except (FailedJobError, FailedSubmissionError, OSError) as err:
            # sbatch's own message (FailedJobError carries its stderr), nothing submitted.
            raise SubmissionError(
                f"submitting {len(pending)} job(s) failed, none was submitted: {err}"
            ) from err
        for item, job in zip(pending, jobs, strict=True):
            append_event(
                item.run.folder,
                "submitted",
                launcher=self.launcher,
                job_id=str(job.job_id),
                submitit_folder=str(self.folder),
            )
            note = " (resumes)" if item.state == "resume" else ""
            echo(f"{item.tag} submit  {item.run.name}  job {job.job_id}{note}")
            outcome.submitted.append((item.run, str(job.job_id)))
        if self.waits:
            self._wait(list(zip(pending, jobs, strict=True)), outcome, echo)

    def _wait(self, submitted: list, outcome: SweepOutcome, echo) -> None:
        started = time.monotonic()
        while submitted:
            time.sleep(self.poll_s)
            for item, job in list(submitted):
                if not job.done():
                    continue
                submitted.remove((item, job))
                run, elapsed = item.run, duration_text(time.monotonic() - started)
                results = complete_results(run.folder)
                if results is not None:
                    echo(f"{item.tag} done    {run.name}  {metrics_text(results)}  ({elapsed})")
                    outcome.done.append((run, results))
                    continue
                ended = [e for e in read_events(run.folder) if e.get("event") == "ended"]
                error = ended[-1].get("error") if ended else None
                why = error or f"job {job.job_id} ended without results ({job.state})"
                echo(f"{item.tag} failed  {run.name}  {why}; log: {run.folder / SWEEP_LOG_FILE}")
                outcome.failed.append((run, why))
