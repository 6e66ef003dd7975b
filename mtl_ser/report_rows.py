"""Finished runs -> the rows of `mtl-ser report`: reading results.json, grouping by setting,
mean and spread over folds.

Shared by report.py (tables), ablation_plot.py (figure) and paired.py (comparisons); it
imports none of them, so none of them imports the others in a circle.

A *setting* is a run's ``setting.values`` (results.json schema 2, see `mtl_ser.settings`)
without `REPLICATE_KEYS` (fold, seed): runs of one protocol and setting are one row; runs
that differ in any other recorded key (pooling, max_len, the encoder's weights, ...) are
different rows, never averaged.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.results import RESULTS_FILE
from mtl_ser.settings import REPLICATE_KEYS, group_key
from mtl_ser.tasks.base import lower_is_better
from mtl_ser.tasks.text_emotion import oracle_suffix

# The results.json schema the report reads: the first with the "setting" record.
REPORT_SCHEMA = 2
METRICS = ("wa", "ua", "macro_f1", "wer", "cer", "wer_improvised")
PERCENT = {"wa", "ua", "macro_f1"}  # shown in %; error rates as fractions
METRIC_NAMES = {
    "wa": "WA %",
    "ua": "UA %",
    "macro_f1": "macro-F1 %",
    "wer": "WER",
    "cer": "CER",
    "wer_improvised": "WER impro.",
}
# Setting keys that differ between the folds of one experiment by construction: each fold's
# split has manifests of its own (`mtl_ser.settings.data_values`). Rows are grouped without
# them, and `aggregate` checks that the runs of one fold agree on them (the same data).
FOLD_KEYS = ("manifests_digest",)
# Shown in their own columns, so never repeated in a row's "setting" text.
COLUMN_KEYS = ("recipe", "protocol", "alpha")
# The emotion and CTC metrics results.json also holds at its top level: the task metrics of
# a run written before ``task_metrics`` existed (the same values, `Brain._end_of_test`).
TOP_LEVEL_TASK_METRICS = {
    "emotion": ("wa", "ua", "macro_f1"),
    "ctc": ("wer", "cer", "wer_improvised"),
}


# ---------------------------------------------------------------------------------- input
def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bad(path: Path, key: str, value, expected: str) -> ValueError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ValueError(
        f"{path}: key {key!r} is {shown}, expected {expected}; the file is damaged: re-run "
        "the run or move its folder out of the report's folders"
    )


def check_results(data, path: Path) -> dict:
    """Checks one parsed results.json: the schema with a setting record and the type of
    every key the report reads.

    Returns: ``data``. Raises ValueError, one line naming the file and the key.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: holds a JSON {type(data).__name__}, not a results.json object; re-run "
            "the run or move its folder out of the report's folders"
        )
    schema = data.get("schema")
    if schema != REPORT_SCHEMA or "setting" not in data:
        raise ValueError(
            f"{path}: results schema {schema} records no full setting (key 'setting'), so its "
            "runs could not be kept apart from other settings; re-run the run with this "
            "mtl-ser or re-score it with `mtl-ser evaluate`, then report again"
        )
    setting = data["setting"]
    if not isinstance(setting, dict):
        raise _bad(path, "setting", setting, "an object")
    if not isinstance(setting.get("values"), dict):
        raise _bad(path, "setting.values", setting.get("values"), "an object")
    if not isinstance(setting.get("digest"), str):
        raise _bad(path, "setting.digest", setting.get("digest"), "a string")
    for key, check, expected in (
        ("recipe", lambda v: isinstance(v, str), "a string"),
        ("protocol", lambda v: isinstance(v, str), "a string"),
        ("alpha", _is_number, "a number"),
        ("fold", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        (
            "labels",
            lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v),
            "a list of label names",
        ),
    ):
        if key not in data:
            raise ValueError(f"{path}: key {key!r} is missing; re-run the run")
        if not check(data[key]):
            raise _bad(path, key, data[key], expected)
    size = len(data["labels"])
    matrix = data.get("confusion_matrix")
    if not (
        isinstance(matrix, list)
        and len(matrix) == size
        and all(
            isinstance(r, list) and len(r) == size and all(_is_number(x) and x >= 0 for x in r)
            for r in matrix
        )
    ):
        raise _bad(path, "confusion_matrix", matrix, f"{size} x {size} counts (one per label)")
    for key in METRICS:
        if key not in data:
            raise ValueError(f"{path}: key {key!r} is missing; re-run the run")
        if data[key] is not None and not _is_number(data[key]):
            raise _bad(path, key, data[key], "a number or null")
    task_metrics = data.get("task_metrics")
    if task_metrics is not None and not isinstance(task_metrics, dict):
        raise _bad(path, "task_metrics", task_metrics, "an object {task: {metric: value}}")
    for task, metrics in (task_metrics or {}).items():
        if not isinstance(metrics, dict):
            raise _bad(path, f"task_metrics.{task}", metrics, "an object {metric: value}")
    for key in ("folds", "best_epoch"):
        value = data.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            raise _bad(path, key, value, "an integer or null")
    if data.get("best_epoch") is None and "evaluation" not in data:
        raise ValueError(
            f"{path}: best_epoch is null, the results of an untrained model (mtl-ser 0.1 "
            "tested runs of --number_of_epochs=0); remove the run or train it"
        )
    return data


def find_results(folders: list[str | Path]) -> list[dict]:
    """Loads every results.json below ``folders``.

    Returns: the results dicts, each with ``"path"`` (the file) added, sorted by identity.
    Raises ValueError (one line naming the file and key) for a file that is not a complete
    results.json of `REPORT_SCHEMA` (see `check_results`), FileNotFoundError when a folder
    is missing or holds none.
    """
    paths = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
        found = {p.resolve() for p in folder.rglob(RESULTS_FILE)}
        if not found:
            raise FileNotFoundError(f"no {RESULTS_FILE} below {folder}")
        paths |= found
    runs = []
    for path in sorted(paths):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not JSON ({err}); re-run the run") from None
        runs.append({**check_results(data, path), "path": str(path)})
    runs.sort(key=lambda r: (r["recipe"], r["protocol"], r["alpha"], r["fold"], r["seed"]))
    return runs


# --------------------------------------------------------------------------------- settings
def setting_values(run: dict) -> dict:
    """A run's setting: its ``setting.values`` without fold, seed and `FOLD_KEYS` (recipe and
    alpha taken from the run's identity where the values lack them)."""
    values = {"recipe": run["recipe"], "alpha": run["alpha"], **run["setting"]["values"]}
    return {k: v for k, v in values.items() if k not in REPLICATE_KEYS + FOLD_KEYS}


def setting_key(run: dict) -> tuple[str, str, float, str]:
    """(protocol, recipe, alpha, `mtl_ser.settings.group_key` of the setting values without
    `FOLD_KEYS`): equal for the folds and seeds of one experiment, and only for them (the
    per-fold data is checked by `aggregate`)."""
    values = run["setting"]["values"]
    digest = group_key({k: v for k, v in values.items() if k not in FOLD_KEYS})
    return run["protocol"], run["recipe"], float(run["alpha"]), digest


def value_text(value) -> str:
    """A setting value for a table: numbers in %g, strings bare, the rest as JSON."""
    if _is_number(value) and isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def varying_keys(settings: list[dict], skip=COLUMN_KEYS) -> list[str]:
    """The keys whose values differ among ``settings`` (a key one setting lacks differs),
    sorted, without ``skip``: what a table must show to tell its rows apart."""
    keys = sorted({k for s in settings for k in s} - set(skip))
    return [k for k in keys if len({value_text(s[k]) if k in s else None for s in settings}) > 1]


def setting_text(values: dict, keys) -> str:
    """``key=value`` for ``keys`` of a setting (``key=(absent)`` for one it lacks)."""
    return " ".join(f"{k}={value_text(values[k]) if k in values else '(absent)'}" for k in keys)


# --------------------------------------------------------------------------- task metrics
def task_metric_values(run: dict) -> dict[str, float | None]:
    """A run's task metrics, read generically from results.json's ``task_metrics``
    ({task: {metric: value}}, whatever tasks and metrics the run had).

    Returns: ``{"<task>/<metric>": value}`` in the file's order: every number or null whose
    name does not start with ``num_`` (utterance counts); a non-finite number (NaN) is None;
    other values (lists, text) are no metric to average and are left out. A run without
    ``task_metrics`` (written before it existed) gives its top-level emotion and CTC metrics
    (`TOP_LEVEL_TASK_METRICS`, the same values; CTC only when the run has a WER).
    """
    recorded = run.get("task_metrics")
    if recorded is None:
        recorded = {
            task: {m: run.get(m) for m in names}
            for task, names in TOP_LEVEL_TASK_METRICS.items()
            if task != "ctc" or run.get("wer") is not None
        }
    out = {}
    for task, metrics in recorded.items():
        for metric, value in metrics.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if str(metric).startswith("num_") or not (value is None or numeric):
                continue
            out[f"{task}/{metric}"] = float(value) if _is_number(value) else None
    return out


def metric_value(run: dict, metric: str) -> float | None:
    """A run's value of ``metric``: a top-level metric of `METRICS` (``ua``, ``wer``) or a
    task metric ``<task>/<metric>`` (`task_metric_values`); None when the run has none."""
    if "/" in metric:
        return task_metric_values(run).get(metric)
    value = run.get(metric)
    return float(value) if _is_number(value) else None


def lower_is_better_metric(metric: str) -> bool:
    """Whether smaller is better for ``metric`` (``ctc/wer``, ``dimensions/mae_arousal``,
    ``wer``): `mtl_ser.tasks.base.lower_is_better` of its name after the task."""
    return lower_is_better(metric.rpartition("/")[2])


def metric_title(metric: str, name: str | None = None) -> str:
    """``metric`` (or its display ``name``) with its direction: ``ctc/wer ↓``,
    ``dimensions/ccc_mean ↑``, ``WER ↓``."""
    return f"{name or metric} {'↓' if lower_is_better_metric(metric) else '↑'}"


def available_metrics(runs: list[dict]) -> list[str]:
    """The metrics ``runs`` report: the top-level `METRICS` some run has a value of, then
    every ``<task>/<metric>`` of `task_metric_values` (first-seen order)."""
    found = [m for m in METRICS if any(r.get(m) is not None for r in runs)]
    for run in runs:
        found += [m for m in task_metric_values(run) if m not in found]
    return found


def parse_metrics(text, runs: list[dict], option: str) -> tuple[str, ...]:
    """The metrics of a report option (``--paired-metrics``, ``--ablation-metrics``).

    Args:
        text: comma-separated names (``emotion/ua,dimensions/ccc_mean``; the top-level
            ``ua``, ``wa``, ``wer``, ... too) or a sequence of them.
        runs: the results dicts (what they report is what may be asked for).
        option: the option's name for messages.

    Returns: the names in the given order. Raises ValueError (one line naming the option,
    the metric and the metrics found) for a metric that no run reports.
    """
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    names = [m for m in names if m]
    found = available_metrics(runs)
    if not names:
        raise ValueError(f"{option}: no metric given; metrics found: {', '.join(found)}")
    for name in names:
        if name not in found:
            raise ValueError(
                f"{option}: no run reports {name!r}; metrics found: {', '.join(found)}"
            )
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------- aggregation
def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with ddof = 1, n); std is None for n < 2 and both are
    None for n = 0."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if n > 1 else None), n


def fold_stats(pairs: list[tuple[int, float]]) -> tuple[tuple, float | None]:
    """Mean and spread of a metric over folds, seeds apart.

    Args:
        pairs: (fold, value) of each run that reports the metric (seeds of a fold repeat
            the fold).

    Returns: ((mean, std, n), seed_std): mean and sample std (ddof = 1) over the folds of
    the per-fold means over seeds, n the number of folds; seed_std the seed-to-seed spread,
    sqrt of the mean over folds with >= 2 seeds of their sample variance over seeds (None
    when no fold has 2 seeds).
    """
    by_fold = defaultdict(list)
    for fold, value in pairs:
        by_fold[fold].append(float(value))
    stat = mean_std([float(np.mean(v)) for _, v in sorted(by_fold.items())])
    variances = [float(np.var(v, ddof=1)) for v in by_fold.values() if len(v) > 1]
    return stat, (math.sqrt(float(np.mean(variances))) if variances else None)


@dataclass
class Row:
    """One (protocol, setting) and what its runs give.

    Attributes:
        protocol: the runs' protocol.
        key: the digest of the setting (`mtl_ser.settings.group_key`).
        setting: the setting's values (without fold and seed).
        runs: its results dicts.
        stats: metric -> (mean, sample std or None when n < 2, n) over the folds of the
            per-fold means (seeds of a fold averaged first); (None, None, 0) when no run
            reports it (WER without CTC).
        seed_std: metric -> spread over seeds within folds (`fold_stats`), None without two
            seeds of a fold.
        confusion: summed confusion matrix (rows true, columns predicted).
        labels, encoder: shared by every run.
        folds: folds found; expected: the protocol's fold count (None if unknown).
        missing: seed -> folds of the protocol that this seed lacks (empty when complete).
        task_stats, task_seed_std: as stats and seed_std, for every ``<task>/<metric>``
            any run of the row has (`task_metric_values`).
    """

    protocol: str
    key: str
    setting: dict
    runs: list[dict]
    stats: dict
    seed_std: dict
    confusion: np.ndarray
    labels: list[str]
    encoder: str | None
    folds: list[int]
    expected: int | None
    missing: dict = field(default_factory=dict)
    task_stats: dict = field(default_factory=dict)
    task_seed_std: dict = field(default_factory=dict)

    def stat(self, metric: str) -> tuple[tuple, float | None]:
        """((mean, std, n), seed_std) of a top-level metric (``ua``) or a task metric
        (``dimensions/ccc_mean``); ((None, None, 0), None) when no run of the row has it."""
        if "/" in metric:
            return self.task_stats.get(metric, (None, None, 0)), self.task_seed_std.get(metric)
        return self.stats[metric], self.seed_std[metric]

    @property
    def recipe(self) -> str:
        return self.runs[0]["recipe"]

    @property
    def title(self) -> str:
        """The recipe as tables name the row: ``mtl (oracle text)`` when its emotion head
        read reference transcripts (`run_title`)."""
        return run_title(self.runs[0])

    @property
    def alpha(self) -> float:
        return float(self.runs[0]["alpha"])

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def complete(self) -> bool:
        return self.expected is not None and not any(self.missing.values())

    @property
    def pooled_wa(self) -> float:
        """Correct over all test utterances of the row's runs."""
        return float(np.trace(self.confusion) / self.confusion.sum())

    @property
    def pooled_ua(self) -> float:
        """Mean recall of the summed confusion matrix over the classes that occur."""
        totals = self.confusion.sum(axis=1)
        present = totals > 0
        return float(np.mean(np.diag(self.confusion)[present] / totals[present]))

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.runs})

    def folds_text(self) -> str:
        """E.g. ``5/5`` or ``2/5 (missing 3, 4, 5)``, per seed when seeds differ."""
        if self.expected is None:
            return f"{len(self.folds)} (protocol {self.protocol}: fold count unknown)"
        text = f"{len(self.folds)}/{self.expected}"
        lacking = {s: f for s, f in self.missing.items() if f}
        if not lacking:
            return text
        if len(self.missing) == 1:
            return f"{text} (missing {_join(next(iter(lacking.values())))})"
        return (
            text + " (" + "; ".join(f"seed {s} misses {_join(f)}" for s, f in lacking.items()) + ")"
        )


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def expected_folds(runs: list[dict], protocol: str) -> int | None:
    """The protocol's number of folds: as recorded by the runs (``folds``, from their
    preparation), else from the IEMOCAP protocol table; None when unknown."""
    recorded = {r.get("folds") for r in runs} - {None}
    if len(recorded) == 1:
        return int(recorded.pop())
    return PROTOCOL_FOLDS.get(protocol)


def aggregate(runs: list[dict]) -> list[Row]:
    """Groups runs by protocol and setting (`setting_key`: runs that differ in any
    result-changing key are different experiments, never averaged) and summarises each
    group.

    Returns: rows sorted by recipe, protocol, alpha. Raises ValueError when a group mixes
    label sets (their confusion matrices and recalls do not add up), holds the same
    (fold, seed) twice (a fold would count double) or runs of one fold on other data
    (`_check_fold_data`).
    """
    groups = defaultdict(list)
    for run in runs:
        groups[setting_key(run)].append(run)
    rows = []
    for (protocol, _, _, key), members in groups.items():
        first = members[0]
        name = f"{first['recipe']} {protocol} alpha={alpha_text(first['alpha'])} setting {key}"
        variants = defaultdict(list)
        for run in members:
            variants[json.dumps(run["labels"])].append(run["path"])
        if len(variants) > 1:
            listing = "; ".join(f"labels {v}: {', '.join(p)}" for v, p in variants.items())
            raise ValueError(f"{name}: runs differ in labels, refusing to average: {listing}")
        seen = {}
        for run in members:
            ident = (run["fold"], run["seed"])
            if ident in seen:
                raise ValueError(
                    f"{name}: fold {ident[0]} seed {ident[1]} twice: {seen[ident]} and "
                    f"{run['path']}"
                )
            seen[ident] = run["path"]
        _check_fold_data(name, members)
        stats, seed_std = {}, {}
        for m in METRICS:
            stats[m], seed_std[m] = fold_stats(
                [(r["fold"], r[m]) for r in members if r.get(m) is not None]
            )
        task_stats, task_seed_std = {}, {}
        per_run = [task_metric_values(r) for r in members]
        for metric in dict.fromkeys(m for values in per_run for m in values):
            task_stats[metric], task_seed_std[metric] = fold_stats(
                [
                    (r["fold"], values[metric])
                    for r, values in zip(members, per_run, strict=True)
                    if values.get(metric) is not None
                ]
            )
        expected = expected_folds(members, protocol)
        missing = {}
        for seed in sorted({r["seed"] for r in members}):
            have = {r["fold"] for r in members if r["seed"] == seed}
            missing[seed] = [k for k in range(1, (expected or 0) + 1) if k not in have]
        rows.append(
            Row(
                protocol=protocol,
                key=key,
                setting=setting_values(first),
                runs=members,
                stats=stats,
                seed_std=seed_std,
                confusion=np.sum([np.asarray(r["confusion_matrix"]) for r in members], axis=0),
                labels=list(first["labels"]),
                encoder=first.get("encoder"),
                folds=sorted({r["fold"] for r in members}),
                expected=expected,
                missing=missing,
                task_stats=task_stats,
                task_seed_std=task_seed_std,
            )
        )
    rows.sort(key=lambda r: (r.recipe, r.protocol, r.alpha, r.key))
    return rows


def task_metric_names(rows: list[Row]) -> list[str]:
    """Every ``<task>/<metric>`` of the rows, grouped by task (tasks and their metrics in
    first-seen order)."""
    names = list(dict.fromkeys(m for row in rows for m in row.task_stats))
    tasks = list(dict.fromkeys(m.partition("/")[0] for m in names))
    return sorted(names, key=lambda m: tasks.index(m.partition("/")[0]))


def _check_fold_data(name: str, members: list[dict]) -> None:
    """Raises ValueError (one line) when two runs of one fold of a row differ in a
    `FOLD_KEYS` value: they were tested on other data (another corpus or preparation), so
    their folds are no replicates of one experiment."""
    for key in FOLD_KEYS:
        seen: dict = {}
        for run in members:
            value = json.dumps(run["setting"]["values"].get(key))
            first = seen.setdefault((run["fold"], key), (value, run["path"]))
            if first[0] != value:
                raise ValueError(
                    f"{name}: fold {run['fold']} runs differ in {key} ({first[0]} in "
                    f"{first[1]}, {value} in {run['path']}): other data, refusing to average; "
                    "report the two corpora or preparations separately"
                )


def varying_details(rows: list[Row]) -> list[str]:
    """The setting keys (besides recipe, protocol, alpha) whose values differ among
    ``rows``: the ones a table must show to tell rows apart."""
    return varying_keys([r.setting for r in rows])


def alpha_text(alpha: float) -> str:
    return f"{alpha:g}"


def run_title(run: dict) -> str:
    """A run's recipe, marked ``(oracle text)`` when its emotion head read reference
    transcripts (text_source: reference, an upper bound no deployed model reaches)."""
    return run["recipe"] + oracle_suffix(run)


def csv_number(value) -> str:
    """A metric's CSV cell: the fraction at full precision (``repr``), "" when missing."""
    return "" if value is None else repr(float(value))


def row_name(row: Row, details: list[str]) -> str:
    """E.g. ``mtl loso alpha=0.1`` plus the varying details (``pooling=attention``); the
    recipe as `Row.title` (``mtl (oracle text) ...``)."""
    extra = setting_text(row.setting, details)
    return f"{row.title} {row.protocol} alpha={alpha_text(row.alpha)}" + (
        f" {extra}" if extra else ""
    )
