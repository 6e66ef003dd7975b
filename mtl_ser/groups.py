"""Per-group results: UA / WA per speaker, per gender and per any categorical manifest column,
with confidence intervals from a speaker-level (cluster) bootstrap.

A *group column* names a key of the manifest records (``speaker`` reads ``spk``; ``gender``,
``scripted``, ``session``, ``corpus``, ... read themselves). Its value of every test utterance
is written to predictions.csv (``speaker`` and ``scripted`` are already there), and for each
value (group) results.json gets, under ``"groups"`` (`per_group_results`)::

    {"columns": {column: {"groups": {value: stats}, "missing": n, "notes": [...]}},
     "samples": B, "level": 0.95, "seed": 0}

    stats = {"utterances", "speakers", "ua", "wa", "macro_f1" (`mtl_ser.metrics`),
             "ua_ci": [low, high] | None, "wa_ci": [low, high] | None,
             "ci_unit": "speaker" | "utterance" | None, "note": str | None}

The interval resamples the group's speakers with replacement, each with all its utterances
(`mtl_ser.stats.cluster_bootstrap`): a speaker's utterances are not independent draws. Two
exceptions, each said in ``ci_unit`` / ``note``:

- the ``speaker`` column: each group is one speaker, so its utterances are resampled (the
  interval for that speaker; copies of an utterance in several seeds stay together);
- a group of one speaker in any other column (a LOSO fold's test set holds one speaker per
  gender): no interval (None); with K speakers the interval keeps (K - 1) / K of the
  variance, so fewer than `FEW_CLUSTERS` get a note. `mtl-ser report` pools the folds of a
  setting and so rests on all their speakers.

Utterances without a value (a corpus whose preparation knows no gender: CSV, HF datasets,
CREMA-D without its demographics file) are left out of that column and counted under
``missing``, with a note; a column no utterance has gets no groups and a note, never silence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtl_ser.metrics import classification_metrics, weighted_ua, weighted_wa
from mtl_ser.stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, FEW_CLUSTERS, cluster_bootstrap

DEFAULT_GROUP_COLUMNS = ("speaker", "gender")
# Group columns whose manifest key has another name.
MANIFEST_KEYS = {"speaker": "spk"}
# predictions.csv columns that a group column must not shadow (speaker and scripted are
# group columns already there).
RESERVED = ("id", "true", "predicted", "reference", "hypothesis", "has_text")
LEVEL = 0.95


def check_columns(columns, where: str = "group_columns") -> tuple[str, ...]:
    """Checks a list of group column names.

    Args:
        columns: a sequence of names (or a comma-separated string).
        where: how messages name the option.

    Returns: the names as a tuple. Raises ValueError (one line) for a name that is empty,
    not a string, given twice, or one of predictions.csv's own columns.
    """
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    if not isinstance(columns, list | tuple):
        raise ValueError(f"{where}: expected a list of column names, got {columns!r}")
    seen = []
    for column in columns:
        if not isinstance(column, str) or not column.strip():
            raise ValueError(f"{where}: {column!r} is not a column name")
        if column in RESERVED or column.startswith("p_"):
            raise ValueError(
                f"{where}: {column!r} is a column of predictions.csv itself, not a manifest "
                "column; choose among the manifest's keys (e.g. speaker, gender)"
            )
        if column in seen:
            raise ValueError(f"{where}: {column!r} is given twice")
        seen.append(column)
    return tuple(seen)


def value_text(value) -> str | None:
    """A group value as text: None and "" are missing; booleans "True" / "False"."""
    if value is None or value == "":
        return None
    return str(value)


def record_values(records: dict[str, dict], ids: Sequence[str], column: str) -> list[str | None]:
    """The values of ``column`` (``speaker`` reads ``spk``) of the utterances ``ids`` in
    manifest ``records`` ({utt_id: record}); None where a record lacks it."""
    key = MANIFEST_KEYS.get(column, column)
    return [value_text(records.get(utt, {}).get(key)) for utt in ids]


def attach_groups(log, records: dict[str, dict], columns: Sequence[str]) -> None:
    """Sets ``log.groups`` ({column: {utt_id: value or None}}) of a `PredictionLog` from the
    manifest records of its utterances, for predictions.csv and results.json."""
    ids = [r.id for r in log.rows]
    log.groups = {c: dict(zip(ids, record_values(records, ids, c), strict=True)) for c in columns}


def _interval(result: dict) -> list[float]:
    return [result["ci_low"], result["ci_high"]]


def group_stats(
    true: np.ndarray,
    predicted: np.ndarray,
    labels: Sequence[str],
    clusters: Sequence | None,
    cluster_unit: str,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """UA / WA / macro-F1 of one group and the cluster-bootstrap intervals of UA and WA.

    Args:
        true, predicted: ``[N]`` class ids of the group's utterances.
        labels: the class names.
        clusters: ``[N]`` the resampled unit of each utterance (speaker, or utterance id);
            None: no interval.
        cluster_unit: "speaker" or "utterance" (what ``clusters`` holds).
        samples, seed: of the bootstrap.

    Returns: the ``stats`` dict of the module docstring (``speakers`` is filled by the
    caller; ``note`` says why an interval is missing or too narrow).
    """
    scores = classification_metrics(list(true), list(predicted), labels)
    out = {"utterances": int(len(true)), "speakers": None}
    out |= {k: scores[k] for k in ("ua", "wa", "macro_f1")}
    out |= {"ua_ci": None, "wa_ci": None, "ci_unit": None, "note": None}
    k = 0 if clusters is None else len({str(c) for c in clusters})
    if k < 2:
        out["note"] = (
            f"1 {cluster_unit}: no {cluster_unit}-level interval (it needs at least 2)"
            if clusters is not None
            else None
        )
        return out
    true, predicted = np.asarray(true), np.asarray(predicted)
    for metric, function in (("ua", weighted_ua), ("wa", weighted_wa)):
        result = cluster_bootstrap(
            lambda w, f=function: f(true, predicted, w), clusters, None, samples, seed, LEVEL
        )
        out[f"{metric}_ci"] = _interval(result)
    out["ci_unit"] = cluster_unit
    if cluster_unit == "speaker" and k < FEW_CLUSTERS:
        out["note"] = (
            f"{k} speakers: a cluster bootstrap keeps (K - 1) / K of the variance, so the "
            "interval is too narrow"
        )
    return out


def column_results(
    column: str,
    values: Sequence[str | None],
    true: Sequence[int],
    predicted: Sequence[int],
    speakers: Sequence[str | None],
    items: Sequence[str],
    labels: Sequence[str],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """The per-group results of one column over a set of utterances (one run's, or the
    pooled runs of a report row).

    Args:
        column: the column's name (``speaker``: groups are single speakers, intervals over
            utterances).
        values: ``[N]`` each utterance's value (None: missing).
        true, predicted: ``[N]`` class ids.
        speakers: ``[N]`` each utterance's speaker (None where unknown: then utterances are
            resampled, and a note says so).
        items: ``[N]`` utterance ids (one utterance's copies in several seeds share it).
        labels: the class names.
        samples, seed: of the bootstrap.

    Returns: {"groups": {value: stats}, "missing": utterances without a value, "notes"}.
    """
    true, predicted = np.asarray(true), np.asarray(predicted)
    notes = []
    missing = sum(v is None for v in values)
    if missing == len(values):
        notes.append(
            f"no test utterance has a {column!r} (its manifest records none: the corpus or "
            "its preparation does not give it)"
        )
    elif missing:
        notes.append(f"{missing} utterance(s) without a {column!r} are left out")
    no_speaker = any(s is None for s in speakers)
    if column != "speaker" and no_speaker and missing < len(values):
        notes.append(
            "some utterances have no speaker: intervals resample utterances, not speakers, "
            "and are too narrow"
        )
    members_of: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        if value is not None:
            members_of.setdefault(value, []).append(i)
    groups = {}
    for value in sorted(members_of):
        index = members_of[value]
        members = {speakers[i] for i in index}
        if column == "speaker" or no_speaker:
            clusters, unit = [items[i] for i in index], "utterance"
        else:
            clusters, unit = [speakers[i] for i in index], "speaker"
        stats = group_stats(true[index], predicted[index], labels, clusters, unit, samples, seed)
        stats["speakers"] = None if None in members else len(members)
        groups[value] = stats
    return {"groups": groups, "missing": missing, "notes": notes}


def per_group_results(log, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The ``"groups"`` section of a run's results.json (module docstring) from a
    `PredictionLog` whose ``groups`` were attached (`attach_groups`)."""
    rows = log.rows
    true = [r.true for r in rows]
    predicted = [r.predicted for r in rows]
    speakers = [r.speaker for r in rows]
    ids = [r.id for r in rows]
    columns = {}
    for column, by_id in log.groups.items():
        values = [by_id.get(r.id) for r in rows]
        columns[column] = column_results(
            column, values, true, predicted, speakers, ids, log.labels, samples, seed
        )
    return {"columns": columns, "samples": samples, "level": LEVEL, "seed": seed}
