"""Cross-validation and loss-weight ablation: one recipe run per (alpha, fold, seed).

    mtl-ser sweep hparams/mtl.yaml --alphas 0,0.001,0.01,0.1 --folds 1-5 --output-folder O \\
        [--protocol P] [--seeds 1986] [--jobs N] [--alpha0-lr 1e-5] [-- extra recipe arguments]

Everything after ``--`` goes verbatim to every run (override files first, then
``--key=value``), e.g. ``-- hparams/overrides/tiny.yaml --data_folder=data/demo_corpus``.
The recipe script is chosen by the hparams' ``recipe`` key (``extends:`` chains and override
files are followed exactly as the recipes do).

Each run is the recipe's ordinary run in its own folder::

    O/<recipe>/<protocol>/alpha<alpha>/fold<k>/seed<s>/
        sweep_run.json   the run's command and configuration, written before it starts
        sweep_log.txt    the recipe's stdout and stderr (appended on every attempt)
        results.json ... the recipe's outputs

Resume rule, per run folder:

- stored configuration equal and a complete ``results.json``: skipped;
- stored configuration equal, no ``results.json`` (interrupted or failed): launched again; the
  recipe resumes from its last checkpoint in that folder;
- stored configuration different (command line, or the content of the hparams / override
  files), or files that no sweep wrote: an error naming the folders, before anything runs,
  unless ``overwrite_changed`` (then that folder is deleted and trained afresh).

A failed run does not stop the others; it is listed at the end with its log file and the
sweep's exit status is 1.

Alpha = 0 with the mtl recipe is Cai et al.'s SER-only setting inside the multi-task recipe
(no CTC head is built). Cai et al. trained that setting at lr 1e-5 instead of 5e-5; the sweep
does *not* change the learning rate on its own, so that alpha is the only difference between
runs. ``alpha0_lr`` (``--alpha0-lr 1e-5``) sets ``lr_encoder`` and ``lr_heads`` of the alpha = 0
runs for an exact reproduction of the paper's table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import mtl_ser
from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.results import RESULTS_FILE

RECIPE_SCRIPTS = {"mtl": "train_mtl.py", "ser": "train_ser.py", "cnn": "train_cnn.py"}
SWEEP_RUN_FILE = "sweep_run.json"
SWEEP_LOG_FILE = "sweep_log.txt"
SWEEP_RUN_SCHEMA = 1
# Keys every run gets from the sweep's own options; setting them after `--` would be ambiguous.
MANAGED_KEYS = ("alpha", "fold", "seed", "protocol", "output_folder")
LR_KEYS = ("lr_encoder", "lr_heads")
# What a results.json must hold to count as a finished run.
RESULT_KEYS = ("wa", "ua", "confusion_matrix", "labels", "alpha", "fold", "seed")


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Run:
    """One recipe run of a sweep.

    Attributes:
        recipe, protocol, alpha, fold, seed: the run's identity.
        folder: its output folder.
        command: the full command line (interpreter first).
        config_digest: fingerprint of the merged hparams configuration (see `read_config`).
    """

    recipe: str
    protocol: str
    alpha: float
    fold: int
    seed: int
    folder: Path
    command: tuple[str, ...]
    config_digest: str

    @property
    def name(self) -> str:
        """The run folder below the sweep's folder, e.g. ``mtl/loso/alpha0.1/fold1/seed1986``."""
        return run_subfolder(self.recipe, self.protocol, self.alpha, self.fold, self.seed)

    def record(self) -> dict:
        """The content of sweep_run.json (without its creation time)."""
        return {
            "schema": SWEEP_RUN_SCHEMA,
            "recipe": self.recipe,
            "protocol": self.protocol,
            "alpha": self.alpha,
            "fold": self.fold,
            "seed": self.seed,
            "command": list(self.command),
            "config_digest": self.config_digest,
        }


def run_subfolder(recipe: str, protocol: str, alpha: float, fold: int, seed: int) -> str:
    """``<recipe>/<protocol>/alpha<alpha>/fold<fold>/seed<seed>``, the layout of the recipes'
    default ``output_folder`` (alpha written as Python writes the float: 0.0, 0.001, 1e-05)."""
    return f"{recipe}/{protocol}/alpha{float(alpha)}/fold{fold}/seed{seed}"


def parse_number_list(text: str, kind=int) -> list:
    """Parses ``"1-5"``, ``"1,3,5"``, ``"1-3,7"`` (ints) or ``"0,0.001,0.1"`` (floats).

    Args:
        text: comma-separated values; with ``kind=int`` also inclusive ranges ``a-b``.
        kind: int or float.

    Returns: the values in the given order. Raises ValueError on a malformed or repeated value.
    """
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            if kind is int and "-" in item[1:]:
                low, high = (int(x) for x in item.split("-", 1))
                if high < low:
                    raise ValueError
                values.extend(range(low, high + 1))
            else:
                values.append(kind(item))
        except ValueError:
            raise ValueError(
                f"cannot read {item!r} in {text!r} as {kind.__name__} values"
            ) from None
    if len(set(values)) != len(values):
        raise ValueError(f"{text!r} repeats a value")
    return values


def read_config(hparams_file: str | Path, extra: list[str]) -> tuple[dict, str]:
    """The configuration a recipe would see, without building any object.

    Args:
        hparams_file: the hparams file (may ``extends:`` another).
        extra: override files and ``--key=value`` arguments, as given to the recipe.

    Returns: (merged mapping with plain values and tags as text, sha256 of that mapping).
    Comments and formatting do not change the digest; any value, tag or key does.
    """
    from ruamel.yaml import YAML

    from mtl_ser.experiment import merge_into, parse_arguments

    base_file, _, overrides = parse_arguments([str(hparams_file), *extra])
    yaml = YAML()
    with open(base_file) as f:
        config = _plain(yaml.load(f) or {})
    merge_into(config, _plain(yaml.load(overrides) or {}) if overrides else {})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return config, digest


def _plain(node):
    """ruamel round-trip data -> JSON-able data; a tagged node keeps its tag as text."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, dict):
        value = {str(k): _plain(v) for k, v in node.items()}
    elif isinstance(node, list | tuple):
        value = [_plain(v) for v in node]
    elif hasattr(node, "value") and tag is not None:  # TaggedScalar
        return f"{tag} {node.value}"
    elif isinstance(node, bool) or node is None:
        return node
    elif isinstance(node, int | float):
        return int(node) if isinstance(node, int) else float(node)
    else:
        return str(node)
    return {"__tag__": tag, "value": value} if tag else value


def recipes_folder() -> Path:
    """The recipes/ folder of the source checkout holding the mtl_ser package."""
    folder = Path(mtl_ser.__file__).resolve().parents[1] / "recipes"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no recipes folder at {folder}: the sweep runs the recipe scripts of a source "
            "checkout; install mtl_ser from one with `pip install -e .`"
        )
    return folder


def recipe_script(recipe: str) -> Path:
    """The script of a ``recipe`` key (mtl, ser, cnn). Raises if unknown or missing."""
    if recipe not in RECIPE_SCRIPTS:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {sorted(RECIPE_SCRIPTS)}")
    script = recipes_folder() / RECIPE_SCRIPTS[recipe]
    if not script.is_file():
        raise FileNotFoundError(f"recipe {recipe!r} needs {script}, which does not exist")
    return script


def _option_key(arg: str) -> str | None:
    return arg[2:].split("=", 1)[0] if arg.startswith("--") else None


def _absolute_override_files(extra: list[str]) -> list[str]:
    """Leading ``*.yaml`` arguments are override files: made absolute so that the stored
    command does not depend on the working directory; a missing one is an error."""
    out, leading = [], True
    for arg in extra:
        if leading and not arg.startswith("-") and arg.endswith((".yaml", ".yml")):
            path = Path(arg)
            if not path.is_file():
                raise FileNotFoundError(f"override file {arg} not found")
            out.append(str(path.resolve()))
        else:
            leading = False
            out.append(arg)
    return out


def _plain_value(config: dict, key: str, hparams_file) -> object:
    if key not in config:
        raise ValueError(f"{hparams_file} has no {key!r} key, which the sweep needs")
    value = config[key]
    if isinstance(value, dict) or (isinstance(value, str) and value.startswith("!")):
        raise ValueError(f"the sweep reads {key!r} as a plain value, but it is {value!r}")
    return value


def plan_sweep(
    hparams_file: str | Path,
    output_folder: str | Path,
    alphas: list[float] | None = None,
    folds: list[int] | None = None,
    seeds: list[int] | None = None,
    protocol: str | None = None,
    extra: list[str] = (),
    alpha0_lr: float | None = None,
    python: str = sys.executable,
) -> list[Run]:
    """The runs of a sweep, in launch order (seed, fold, then alpha: every alpha of fold 1
    finishes before fold 2 starts, so an interrupted sweep still compares alphas).

    Args:
        hparams_file: hparams of the recipe; its ``recipe`` key chooses the script.
        output_folder: the sweep's folder; runs go to ``run_subfolder(...)`` below it.
        alphas, folds, seeds, protocol: None = the configuration's value (all folds of the
            protocol for ``folds``).
        extra: arguments for every run (override files, then ``--key=value``); must not set
            alpha, fold, seed, protocol or output_folder.
        alpha0_lr: learning rate of the alpha = 0 runs (mtl recipe only); None = unchanged.
        python: the interpreter that runs the recipes.

    Returns: the list of runs. Raises ValueError / FileNotFoundError on a bad request.
    """
    hparams_file = Path(hparams_file)
    if not hparams_file.is_file():
        raise FileNotFoundError(f"hparams file {hparams_file} not found")
    extra = _absolute_override_files(list(extra))
    keys = {_option_key(a) for a in extra} - {None}
    managed = sorted(keys & set(MANAGED_KEYS))
    if managed:
        raise ValueError(
            f"set {', '.join(managed)} with the sweep's own options (--alphas, --folds, --seeds, "
            "--protocol, --output-folder), not after --"
        )
    config, digest = read_config(hparams_file, extra)
    recipe = _plain_value(config, "recipe", hparams_file)
    script = recipe_script(recipe)
    protocol = protocol or _plain_value(config, "protocol", hparams_file)
    if protocol not in PROTOCOL_FOLDS:
        raise ValueError(f"protocol {protocol!r} is not one of {sorted(PROTOCOL_FOLDS)}")
    n_folds = PROTOCOL_FOLDS[protocol]
    folds = list(folds) if folds else list(range(1, n_folds + 1))
    bad = [k for k in folds if not 1 <= k <= n_folds]
    if bad:
        raise ValueError(f"protocol {protocol} has folds 1..{n_folds}; no fold {bad}")
    alphas = (
        [float(a) for a in alphas]
        if alphas
        else [float(_plain_value(config, "alpha", hparams_file))]
    )
    if any(a < 0 for a in alphas):
        raise ValueError(f"alpha must be >= 0, got {alphas}")
    seeds = list(seeds) if seeds else [int(_plain_value(config, "seed", hparams_file))]
    if alpha0_lr is not None:
        if recipe != "mtl":
            raise ValueError(f"--alpha0-lr applies to the mtl recipe, not to {recipe!r}")
        if not alpha0_lr > 0:
            raise ValueError(f"--alpha0-lr must be > 0, got {alpha0_lr}")
        if keys & set(LR_KEYS):
            raise ValueError("--alpha0-lr and --lr_encoder / --lr_heads after -- conflict")

    output_folder = Path(output_folder).resolve()
    runs = []
    for seed in seeds:
        for fold in folds:
            for alpha in alphas:
                folder = output_folder / run_subfolder(recipe, protocol, alpha, fold, seed)
                command = [python, str(script), str(hparams_file.resolve()), *extra]
                if "--noprogressbar" not in extra:
                    command.append("--noprogressbar")  # the log is a file, not a terminal
                if alpha == 0 and alpha0_lr is not None:
                    command += [f"--{key}={alpha0_lr}" for key in LR_KEYS]
                command += [
                    f"--alpha={alpha}",
                    f"--fold={fold}",
                    f"--seed={seed}",
                    f"--protocol={protocol}",
                    f"--output_folder={folder}",
                ]
                runs.append(
                    Run(recipe, protocol, alpha, fold, seed, folder, tuple(command), digest)
                )
    return runs


# ----------------------------------------------------------------------------- run state
def run_state(run: Run) -> tuple[str, object]:
    """Where a run stands.

    Returns: ("new", None) | ("complete", results dict) | ("resume", None) |
    ("changed", reason text).
    """
    stored_file = run.folder / SWEEP_RUN_FILE
    if not stored_file.is_file():
        if run.folder.is_dir() and any(run.folder.iterdir()):
            return "changed", f"holds files but no {SWEEP_RUN_FILE} (not started by a sweep)"
        return "new", None
    try:
        stored = json.loads(stored_file.read_text())
    except ValueError:
        return "changed", f"unreadable {SWEEP_RUN_FILE}"
    reason = _difference(stored, run.record())
    if reason:
        return "changed", reason
    results = complete_results(run.folder)
    return ("complete", results) if results is not None else ("resume", None)


def _difference(stored: dict, now: dict) -> str:
    """Why a stored run record differs from the planned one ("" if it does not). The
    interpreter path is not compared: another venv path for the same code is the same run."""
    old, new = stored.get("command", [])[1:], now["command"][1:]
    if old != new:
        removed = [a for a in old if a not in new]
        added = [a for a in new if a not in old]
        return f"command differs: stored with {removed or old}, now with {added or new}"
    if stored.get("config_digest") != now["config_digest"]:
        return "the hparams / override files have changed since the run was started"
    if stored.get("schema") != now["schema"]:
        return f"{SWEEP_RUN_FILE} schema {stored.get('schema')} != {now['schema']}"
    return ""


def complete_results(folder: Path) -> dict | None:
    """The run's results.json if it is complete (the recipe writes it atomically, last), else
    None."""
    try:
        results = json.loads((Path(folder) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or any(k not in results for k in RESULT_KEYS):
        return None
    return results


# ------------------------------------------------------------------------------ execution
def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_environments(jobs: int, cores: int, gpus: list[str]) -> list[dict[str, str]]:
    """Environment variables of each job slot.

    Args:
        jobs: runs at once.
        cores: CPU cores to share among them.
        gpus: visible GPU ids (empty on CPU).

    Returns: one dict per slot: thread counts (cores // jobs, at least 1: concurrent runs must
    not each start a thread per core) and, with GPUs, the slot's GPU (slots share GPUs
    round-robin when there are more jobs than GPUs).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = str(max(1, cores // jobs))
    envs = []
    for slot in range(jobs):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    return envs


@dataclass
class SweepOutcome:
    """What happened to each run: lists of (run, detail)."""

    done: list = field(default_factory=list)  # (run, results)
    skipped: list = field(default_factory=list)  # (run, results)
    failed: list = field(default_factory=list)  # (run, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _metrics_text(results: dict) -> str:
    wer = results.get("wer")
    wer_text = "n/a" if wer is None else f"{wer:.3f}"
    return f"WA {results['wa']:.2%}  UA {results['ua']:.2%}  WER {wer_text}"


def _last_line(log: Path) -> str:
    """The last non-empty line of a log (usually the exception), for the failure summary."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


def execute_sweep(
    runs: list[Run],
    jobs: int = 1,
    overwrite_changed: bool = False,
    gpus: list[str] | None = None,
    cores: int | None = None,
    echo=print,
) -> SweepOutcome:
    """Runs the unfinished runs, ``jobs`` at a time, each recipe in a subprocess.

    Args:
        runs: from `plan_sweep`.
        jobs: runs at once.
        overwrite_changed: delete and redo runs whose stored configuration differs (else
            such runs are an error before anything is started).
        gpus: GPU ids to spread the jobs over (None: the visible ones).
        cores: CPU cores to share (None: those available to this process).
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
    gpus = visible_gpus() if gpus is None else gpus
    envs = job_environments(jobs, cores or available_cores(), gpus)
    outcome = SweepOutcome()
    width = len(str(len(runs)))
    pending = deque()
    for index, (run, (state, detail)) in enumerate(zip(runs, states, strict=True), 1):
        tag = f"[{index:>{width}}/{len(runs)}]"
        if state == "complete":
            echo(f"{tag} skip    {run.name}  (complete: {_metrics_text(detail)})")
            outcome.skipped.append((run, detail))
        else:
            pending.append((tag, run, state))

    free, running = list(range(jobs)), {}
    try:
        while pending or running:
            while pending and free:
                slot = free.pop(0)
                tag, run, state = pending.popleft()
                running[slot] = (tag, run, _launch(run, state, envs[slot]), time.monotonic())
                note = " (resuming)" if state == "resume" else ""
                gpu = envs[slot].get("CUDA_VISIBLE_DEVICES")
                where = f" on GPU {gpu}" if gpu is not None else ""
                echo(f"{tag} start   {run.name}{where}{note}")
            time.sleep(0.2)
            for slot, (tag, run, process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[slot]
                free.append(slot)
                elapsed = _duration(time.monotonic() - started)
                results = complete_results(run.folder)
                log = run.folder / SWEEP_LOG_FILE
                if process.returncode == 0 and results is not None:
                    echo(f"{tag} done    {run.name}  {_metrics_text(results)}  ({elapsed})")
                    outcome.done.append((run, results))
                else:
                    why = (
                        f"exit status {process.returncode}"
                        if process.returncode
                        else f"exited without {RESULTS_FILE}"
                    )
                    echo(f"{tag} failed  {run.name}  {why} after {elapsed}; log: {log}")
                    outcome.failed.append((run, f"{why}: {_last_line(log)}"))
    finally:
        # Interrupted (Ctrl-C) or crashed: stop the runs this sweep started; each resumes
        # from its checkpoint next time.
        for _, _, process, _ in running.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:  # ended in the meantime
                    pass
        for _, _, process, _ in running.values():
            process.wait()
    return outcome


def _launch(run: Run, state: str, env: dict[str, str]) -> subprocess.Popen:
    if state == "changed":  # only reached with overwrite_changed
        shutil.rmtree(run.folder)
    run.folder.mkdir(parents=True, exist_ok=True)
    if state != "resume":
        record = {**run.record(), "created": datetime.now().isoformat(timespec="seconds")}
        record["cwd"] = os.getcwd()
        tmp = run.folder / (SWEEP_RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, run.folder / SWEEP_RUN_FILE)
    with open(run.folder / SWEEP_LOG_FILE, "a") as log:
        log.write(f"==== {datetime.now().isoformat(timespec='seconds')} {state}: ")
        log.write(" ".join(run.command) + "\n")
        log.flush()
        # Own process group: an interrupted sweep stops the run with its loader workers.
        return subprocess.Popen(
            run.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-ser sweep",
        description="Run a recipe for every (alpha, fold, seed); resumable.",
        epilog="Arguments after -- go to every run verbatim, e.g. "
        "-- hparams/overrides/tiny.yaml --data_folder=/path/to/IEMOCAP --number_of_epochs=1",
    )
    parser.add_argument("hparams", help="hparams file (its `recipe` key picks the script)")
    parser.add_argument("--output-folder", required=True, help="the sweep's folder")
    parser.add_argument("--alphas", help="CTC weights, e.g. 0,0.001,0.01,0.1 (default: hparams)")
    parser.add_argument("--folds", help="e.g. 1-5 or 1,3 (default: every fold of the protocol)")
    parser.add_argument("--seeds", help="training seeds, e.g. 1986,1987 (default: hparams)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOL_FOLDS), help="default: hparams")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at once (default: one per visible GPU, else 1); CPU threads are shared",
    )
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
    return parser


def main(argv: list[str]) -> int:
    """``mtl-ser sweep``: parses ``argv`` (sweep options, then ``--`` and the recipes'
    arguments), plans, runs. Returns the exit status (1 if a run failed)."""
    argv = list(argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
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
    gpus = visible_gpus()
    jobs = args.jobs or max(1, len(gpus))
    first = runs[0]
    alphas = ", ".join(sorted({f"{r.alpha:g}" for r in runs}, key=float))
    folds = ", ".join(str(k) for k in sorted({r.fold for r in runs}))
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in runs}))
    devices = f"GPUs {', '.join(gpus)}" if gpus else "CPU"
    print(
        f"sweep: {len(runs)} runs of {Path(first.command[1]).name} ({first.recipe}, protocol "
        f"{first.protocol}; alpha {alphas}; fold {folds}; seed {seeds}) into "
        f"{Path(args.output_folder).resolve()}; {jobs} at once on {devices}"
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
    # A terminated sweep (scheduler, `kill`) stops its runs too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    outcome = execute_sweep(runs, jobs=jobs, overwrite_changed=args.overwrite_changed, gpus=gpus)
    print(
        f"sweep finished in {_duration(time.monotonic() - started)}: {len(runs)} runs, "
        f"{len(outcome.done)} done, {len(outcome.skipped)} skipped, {len(outcome.failed)} failed"
    )
    for run, why in outcome.failed:
        print(f"  FAILED {run.name}: {why}\n         log: {run.folder / SWEEP_LOG_FILE}")
    if outcome.ok:
        print(f"tables and plots: mtl-ser report {args.output_folder}")
    return 0 if outcome.ok else 1
