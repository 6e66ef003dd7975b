"""``mtl-ser sweep``: plan a sweep, launch it (here or on a cluster), or show its status.

mtl-ser sweep HPARAMS --output-folder O [--alphas ..] [--folds ..] [--seeds ..]
    [--launcher local|slurm|submitit-local] [local or cluster options] [-- recipe args]
mtl-ser sweep --status O
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.sweep.launch import SubmissionError, execute_sweep
from mtl_ser.sweep.local import LocalLauncher, duration_text, visible_gpus
from mtl_ser.sweep.plan import (
    SWEEP_LOG_FILE,
    parse_number_list,
    plan_sweep,
    record_plan,
    run_state,
)
from mtl_ser.sweep.status import status_lines, sweep_status

# Options of --launcher slurm / submitit-local (dest names), refused with --launcher local.
CLUSTER_OPTIONS = (
    "time_min",
    "gpus_per_run",
    "nodes_per_run",
    "cpus_per_run",
    "mem_gb",
    "partition",
    "account",
    "sbatch",
    "setup",
    "max_parallel",
    "max_timeouts",
    "wait",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-ser sweep",
        description="Run a recipe for every (alpha, fold, seed), here or on a Slurm cluster; "
        "resumable. `mtl-ser sweep --status O` shows where each run of O stands.",
        epilog="Arguments after -- go to every run verbatim, e.g. "
        "-- hparams/overrides/tiny.yaml --data_folder=/path/to/IEMOCAP --number_of_epochs=1",
    )
    parser.add_argument(
        "hparams", nargs="?", help="hparams file (its `recipe` key picks the script)"
    )
    parser.add_argument("--output-folder", help="the sweep's folder")
    parser.add_argument(
        "--status",
        metavar="O",
        help="show one line per run of the sweep folder O (finished / running / queued / "
        "failed / stopped / missing, job, epoch, best validation UA) and exit",
    )
    parser.add_argument("--alphas", help="CTC weights, e.g. 0,0.001,0.01,0.1 (default: hparams)")
    parser.add_argument("--folds", help="e.g. 1-5 or 1,3 (default: every fold of the protocol)")
    parser.add_argument("--seeds", help="training seeds, e.g. 1986,1987 (default: hparams)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOL_FOLDS), help="default: hparams")
    parser.add_argument(
        "--alpha0-lr",
        type=float,
        default=None,
        help="lr_encoder and lr_heads of the alpha = 0 runs (Cai et al.: 1e-5); "
        "default: the same learning rate as the other alphas",
    )
    parser.add_argument(
        "--overwrite-changed",
        action="store_true",
        help="delete and redo run folders whose stored configuration differs",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan, run nothing")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: processes of this machine (default); slurm: one Slurm job per run, "
        "through submitit; submitit-local: the slurm path on this machine, without Slurm",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local: runs at once (default: one per visible GPU, else 1); CPU threads are shared",
    )
    cluster = parser.add_argument_group("cluster (--launcher slurm or submitit-local)")
    cluster.add_argument(
        "--time-min",
        type=int,
        help="time limit of each job in minutes (required); a run that needs longer is "
        "requeued at the limit and resumes from its last checkpoint",
    )
    cluster.add_argument(
        "--gpus-per-run",
        type=int,
        help="GPUs per node of each run (default: 1 with slurm, 0 with submitit-local); "
        "more than one GPU in all runs the recipe under torchrun",
    )
    cluster.add_argument("--nodes-per-run", type=int, help="nodes per run (default 1)")
    cluster.add_argument("--cpus-per-run", type=int, help="CPU cores per node of each run")
    cluster.add_argument("--mem-gb", type=float, help="memory per node of each run, GB")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--account", help="Slurm account")
    cluster.add_argument(
        "--sbatch",
        action="append",
        metavar="KEY[=VALUE]",
        help="another #SBATCH option, repeatable: --sbatch qos=high --sbatch exclusive",
    )
    cluster.add_argument(
        "--setup",
        action="append",
        metavar="LINE",
        help="a shell line the job runs first, repeatable: --setup 'module load cuda/12.1'",
    )
    cluster.add_argument(
        "--max-parallel", type=int, help="jobs of the array running at once (default: all)"
    )
    cluster.add_argument(
        "--max-timeouts",
        type=int,
        help="requeues of a job at its time limit (default 10; pre-emptions are not counted)",
    )
    cluster.add_argument(
        "--wait",
        action="store_true",
        help="wait for the jobs and report each run (default: return once submitted)",
    )
    return parser


def _cluster_launcher(args, output_folder: str):
    from mtl_ser.sweep.cluster import ClusterOptions, SubmititLauncher, parse_sbatch_options

    if args.jobs is not None:
        raise ValueError("--jobs applies to --launcher local; the cluster runs every job")
    if args.time_min is None:
        raise ValueError(
            f"--launcher {args.launcher} needs --time-min (each job's time limit in minutes)"
        )
    default_gpus = 1 if args.launcher == "slurm" else 0
    options = ClusterOptions(
        time_min=args.time_min,
        gpus_per_node=default_gpus if args.gpus_per_run is None else args.gpus_per_run,
        nodes=args.nodes_per_run or 1,
        cpus_per_node=args.cpus_per_run,
        mem_gb=args.mem_gb,
        partition=args.partition,
        account=args.account,
        sbatch=parse_sbatch_options(args.sbatch or []),
        setup=tuple(args.setup or ()),
        max_parallel=args.max_parallel,
        max_timeouts=10 if args.max_timeouts is None else args.max_timeouts,
    )
    cluster = "slurm" if args.launcher == "slurm" else "local"
    return SubmititLauncher(output_folder, options, cluster=cluster, wait=args.wait)


def _launcher(args):
    if args.launcher == "local":
        given = [name for name in CLUSTER_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: cluster options, for --launcher slurm or submitit-local")
        gpus = visible_gpus()
        return LocalLauncher(jobs=args.jobs or max(1, len(gpus)), gpus=gpus)
    return _cluster_launcher(args, args.output_folder)


def show_status(output_folder: str) -> int:
    """Prints the status view of a sweep folder. Returns 0."""
    rows, note = sweep_status(output_folder)
    print("\n".join(status_lines(rows, note)))
    return 0


def main(argv: list[str]) -> int:
    """``mtl-ser sweep``: parses ``argv`` (sweep options, then ``--`` and the recipes'
    arguments), plans, launches; or shows the status. Returns the exit status (1 if a run
    failed)."""
    argv = list(argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.status is not None:
        if args.hparams or args.output_folder or extra:
            parser.error("--status O takes the sweep folder only")
        return show_status(args.status)
    if not args.hparams or not args.output_folder:
        parser.error("give the hparams file and --output-folder (or --status O)")
    runs = plan_sweep(
        args.hparams,
        args.output_folder,
        alphas=parse_number_list(args.alphas, float) if args.alphas else None,
        folds=parse_number_list(args.folds) if args.folds else None,
        seeds=parse_number_list(args.seeds) if args.seeds else None,
        protocol=args.protocol,
        extra=extra,
        alpha0_lr=args.alpha0_lr,
    )
    launcher = _launcher(args)
    first = runs[0]
    alphas = ", ".join(sorted({f"{r.alpha:g}" for r in runs}, key=float))
    folds = ", ".join(str(k) for k in sorted({r.fold for r in runs}))
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in runs}))
    print(
        f"sweep: {len(runs)} runs of {Path(first.command[1]).name} ({first.recipe}, protocol "
        f"{first.protocol}; alpha {alphas}; fold {folds}; seed {seeds}) into "
        f"{Path(args.output_folder).resolve()}; {launcher.describe()}"
    )
    if first.recipe == "mtl" and any(r.alpha == 0 for r in runs):
        lr = f"lr {args.alpha0_lr:g}" if args.alpha0_lr else "the same lr as the other alphas"
        print(f"sweep: alpha 0 = SER only (no CTC head), trained with {lr}")
    if args.dry_run:
        for run in runs:
            state, why = run_state(run)
            print(f"{state:8s} {run.name}{f' ({why})' if state == 'changed' else ''}")
            print("         " + " ".join(run.command))
        return 0
    # A terminated sweep (scheduler, `kill`, closed terminal) stops its local runs too, as
    # Ctrl-C does: the exception unwinds through the launcher, which stops its children.
    # A signal already ignored (SIGHUP under nohup) stays ignored.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, lambda num, _: sys.exit(128 + num))
    started = time.monotonic()
    record_plan(args.output_folder, runs)
    try:
        outcome = execute_sweep(runs, launcher, overwrite_changed=args.overwrite_changed)
    except SubmissionError as err:
        print(f"mtl-ser sweep: error: {err}", file=sys.stderr)
        return 2
    counts = (
        f"{len(runs)} runs, {len(outcome.done)} done, {len(outcome.skipped)} skipped, "
        f"{len(outcome.failed)} failed"
    )
    for word, items in (("busy", outcome.busy), ("submitted", outcome.submitted)):
        counts += f", {len(items)} {word}" if items else ""
    ended = "finished" if launcher.waits else "submitted"
    print(f"sweep {ended} in {duration_text(time.monotonic() - started)}: {counts}")
    for run, why in outcome.failed:
        print(f"  FAILED {run.name}: {why}\n         log: {run.folder / SWEEP_LOG_FILE}")
    if outcome.submitted and not outcome.done and not outcome.failed:
        print(f"follow the jobs with: mtl-ser sweep --status {args.output_folder}")
    elif outcome.ok:
        print(f"tables and plots: mtl-ser report {args.output_folder}")
    return 0 if outcome.ok else 1
