"""The plan of a sweep: which runs, their folders and commands, and where each one stands.

One run per (alpha, fold, seed) of one recipe, in its own folder below the sweep's folder::

    O/<recipe>/<protocol>/alpha<alpha>/fold<k>/seed<s>/
        sweep_run.json   the run's command and configuration, written before it starts
        sweep_log.txt    the recipe's stdout and stderr (appended on every attempt)
        results.json ... the recipe's outputs

Resume rule, per run folder (`run_state`):

- stored configuration equal and a complete ``results.json``: "complete" (skipped);
- stored configuration equal, no ``results.json`` (interrupted or failed): "resume"; the
  recipe resumes from its last checkpoint in that folder;
- stored configuration different (command line, or the content of the hparams / override
  files), or files that no sweep wrote: "changed" (an error, or deleted and redone with
  ``overwrite_changed``).

Alpha = 0 with the mtl recipe is Cai et al.'s SER-only setting inside the multi-task recipe
(no CTC head is built). Cai et al. trained that setting at lr 1e-5 instead of 5e-5; the sweep
does *not* change the learning rate on its own, so that alpha is the only difference between
runs. ``alpha0_lr`` (``--alpha0-lr 1e-5``) sets ``lr_encoder`` and ``lr_heads`` of the alpha = 0
runs for an exact reproduction of the paper's table.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import mtl_ser
from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.results import RESULTS_FILE

RECIPE_SCRIPTS = {"mtl": "train_mtl.py", "ser": "train_ser.py", "cnn": "train_cnn.py"}
SWEEP_RUN_FILE = "sweep_run.json"
SWEEP_LOG_FILE = "sweep_log.txt"
SWEEP_RUN_SCHEMA = 1
# The runs ever planned into a sweep folder (for `--status`: which runs are still missing).
PLAN_INDEX_FILE = "sweep_plan.json"
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
    if results.get("best_epoch") is None:  # an untrained model's (mtl-ser 0.1): not a result
        return None
    return results


# ------------------------------------------------------------------------- the plan index
def record_plan(output_folder: str | Path, runs: list[Run]) -> None:
    """Adds the runs' folders (relative to ``output_folder``, which holds them) to
    ``<output_folder>/sweep_plan.json``, the union over every sweep started into that folder,
    so that `--status` can name the runs not started yet."""
    output_folder = Path(output_folder).resolve()
    names = set(planned_names(output_folder))
    names |= {run.folder.resolve().relative_to(output_folder).as_posix() for run in runs}
    output_folder.mkdir(parents=True, exist_ok=True)
    tmp = output_folder / (PLAN_INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps({"runs": sorted(names)}, indent=2) + "\n")
    os.replace(tmp, output_folder / PLAN_INDEX_FILE)


def planned_names(output_folder: str | Path) -> list[str]:
    """The run folders recorded by `record_plan`, relative to ``output_folder`` (empty when
    the folder has no index)."""
    path = Path(output_folder) / PLAN_INDEX_FILE
    try:
        return list(json.loads(path.read_text())["runs"])
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a sweep plan index (delete it to rebuild it)") from None
