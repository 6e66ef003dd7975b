"""Cross-validation and loss-weight ablation: one recipe run per (alpha, fold, seed), run on
this machine or on a Slurm cluster, resumable, with a status view.

    mtl-ser sweep hparams/mtl.yaml --alphas 0,0.001,0.01,0.1 --folds 1-5 --output-folder O \\
        [--protocol P] [--seeds 1986] [--alpha0-lr 1e-5] [--jobs N] \\
        [--launcher slurm --time-min 1440 --partition gpu ...] [-- extra recipe arguments]
    mtl-ser sweep --status O

Everything after ``--`` goes verbatim to every run (override files first, then
``--key=value``). The recipe script is chosen by the hparams' ``recipe`` key.

Modules, along the seam between planning and running:

    plan.py       the runs, their folders and commands, the resume rule (`run_state`)
    runfolder.py  the sweep's files in a run folder: record, log, job history, progress
    launch.py     `Launcher` (the seam) and `execute_sweep`: skip finished runs, never start
                  a run whose folder is locked or whose job is alive, launch the rest
    local.py      the local launcher (processes here, ``--jobs`` at once)
    cluster.py    the cluster launcher (submitit: Slurm, or its local executor) and the
                  job it runs, resumable after pre-emption or its time limit
    process.py    recipe processes that die with their parent
    jobs.py       whether a recorded job is alive (this machine, or Slurm's sacct)
    status.py     the `--status` view
    cli.py        the command line
"""

from mtl_ser.sweep.cli import main
from mtl_ser.sweep.launch import Launcher, SweepOutcome, execute_sweep
from mtl_ser.sweep.local import LocalLauncher, job_environments, visible_gpus
from mtl_ser.sweep.plan import (
    Run,
    complete_results,
    parse_number_list,
    plan_sweep,
    read_config,
    run_state,
)

__all__ = [
    "Launcher",
    "LocalLauncher",
    "Run",
    "SweepOutcome",
    "complete_results",
    "execute_sweep",
    "job_environments",
    "main",
    "parse_number_list",
    "plan_sweep",
    "read_config",
    "run_state",
    "visible_gpus",
]
