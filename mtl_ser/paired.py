"""Paired comparisons of settings for `mtl-ser report`: is "alpha 0.1 beats alpha 0" real?

Two settings (`mtl_ser.report_rows.setting_key`) are compared when their runs share test
sets: runs with the same protocol and fold test on the same utterances. By default settings
are paired when they differ in exactly one key of their recorded setting (e.g. alpha, or
pooling; or in alpha and the learning rates together: Cai et al. trained alpha = 0 at another
rate, `sweep --alpha0-lr`) and use the same label set. With a baseline (`report --baseline
alpha=0`, `mtl_ser.baseline.baseline_pairs`) every other setting of the baseline's
protocol and label set is compared with it instead, however many keys they differ in. For
each pair and metric:

- per fold (the unit of the tests): the difference second - first of each metric (default
  WA, UA, macro-F1 and WER; any top-level metric or task metric ``<task>/<metric>`` of the
  runs' results.json with ``report --paired-metrics``, `mtl_ser.report_rows.metric_value`),
  each setting's value first averaged over the seeds both have in
  that fold (seeds of a fold test the same utterances and speakers, so they are one unit,
  not independent ones); the mean and sample std over folds, a paired t-test and a Wilcoxon
  signed-rank test (two-sided; with n folds the smallest Wilcoxon p is 2 / 2^n, e.g. 0.0625
  for 5 folds);
- pooled over the shared runs' utterances (from predictions.csv): WA, UA and WER of each
  setting (emotion WA / UA, greedy CTC WER and the accuracy / UA of a classification task
  whose predictions.csv has ``<task>_true`` / ``<task>_predicted`` columns, whichever of them
  the metrics ask for; the other metrics, e.g. CCC, are compared over folds only, which the
  outputs say) and the difference, with a 95% paired cluster-bootstrap confidence interval
  (`mtl_ser.stats.cluster_bootstrap`): speakers are resampled with replacement within each
  fold, all their utterances of every seed together, the same draw for both settings.
  predictions.csv files without a ``speaker`` column (older runs) fall back to the utterance
  as the cluster (its copies in the seeds of a fold still together), and the report says so.

Kept apart from the grouping (which decides what is averaged) on purpose: pairing asks a
different question of the same runs.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtl_ser.metrics import weighted_ua, weighted_wa, word_errors
from mtl_ser.report_rows import (
    metric_title,
    metric_value,
    setting_key,
    setting_text,
    setting_values,
    value_text,
)
from mtl_ser.results import PREDICTIONS_FILE
from mtl_ser.stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, FEW_CLUSTERS, cluster_bootstrap

# The per-run keys `mtl-ser evaluate` copies from the trained run into its results.json.
DETAIL_FIELDS = (
    "lr_encoder",
    "lr_heads",
    "ctc_reduction",
    "ctc_sum_utterances",
    "checkpoint_selection",
)
# A pair may differ in alpha and these together (`sweep --alpha0-lr`).
ALPHA_WITH_RATES = {"alpha", "lr_encoder", "lr_heads"}
FOLD_METRICS = ("wa", "ua", "macro_f1", "wer")  # the default metrics
# The metrics that the pooled bootstrap computes from predictions.csv, by the names a metric
# may be asked for with (`report --paired-metrics`).
POOLED_AS = {
    "wa": "wa",
    "emotion/wa": "wa",
    "ua": "ua",
    "emotion/ua": "ua",
    "wer": "wer",
    "ctc/wer": "wer",
}
NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "wer": "WER"}


@dataclass
class Comparison:
    """One pair of settings on one protocol, and the tests of each metric.

    Attributes:
        protocol: the shared protocol.
        first, second: the two settings' values (second - first is reported); first is the
            smaller value of the differing key (alpha 0 before alpha 0.1).
        differs_in: the key that differs (with a baseline: the keys, comma-separated).
        units: the (fold, seed) runs both settings have.
        metrics: the metrics compared (top-level names or ``<task>/<metric>``).
        per_fold: metric -> {"folds": [...], "first": [...], "second": [...]}: each
            setting's mean over the shared seeds of each fold.
        tests: metric -> dict of statistics over folds (see `paired_tests`).
        pooled: metric -> dict (first, second, diff, ci_low, ci_high, n, clusters,
            cluster_unit, samples) or absent.
        notes: why something could not be computed.
    """

    protocol: str
    first: dict
    second: dict
    differs_in: str
    units: list[tuple]
    metrics: tuple = FOLD_METRICS
    per_fold: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)
    pooled: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def folds(self) -> list[int]:
        return sorted({fold for fold, _ in self.units})

    @property
    def first_text(self) -> str:
        return comparison_text(self.first, self.differs_in, self.second)

    @property
    def second_text(self) -> str:
        return comparison_text(self.second, self.differs_in, self.first)


def comparison_text(values: dict, differs_in: str, other: dict) -> str:
    """A setting in a comparison: its recipe and alpha, and the keys it differs in from
    ``other`` (e.g. ``recipe=mtl alpha=0.1 pooling=mean``)."""
    keys = [k for k in ("recipe", "alpha") if k in values]
    keys += sorted(
        k
        for k in set(values) | set(other)
        if k not in keys and value_text(values.get(k)) != value_text(other.get(k))
    )
    keys += [k for k in differs_in.split(",") if k and k not in keys]
    return setting_text(values, keys)


def _differing(a: dict, b: dict) -> set[str]:
    """Keys whose values differ between two settings. A key that one side lacks or holds
    as null (not applicable: no CTC reduction at alpha = 0) does not count, except alpha."""
    return {
        k
        for k in set(a) | set(b)
        if value_text(a.get(k)) != value_text(b.get(k))
        and (k == "alpha" or (a.get(k) is not None and b.get(k) is not None))
    }


def settings_by_key(runs: list[dict]) -> tuple[dict, dict, dict, list]:
    """The settings of ``runs``: ({`setting_key`: {(fold, seed): run}}, {key: setting
    values}, {key: labels}, the keys in a fixed order (recipe, protocol, alpha, values))."""
    by_setting: dict[tuple, dict[tuple, dict]] = {}
    values: dict[tuple, dict] = {}
    labels: dict[tuple, list] = {}
    for run in runs:
        key = setting_key(run)
        by_setting.setdefault(key, {})[(run["fold"], run["seed"])] = run
        values[key] = setting_values(run)
        labels[key] = run.get("labels")

    def order(key):
        return (*key[:3], json.dumps(values[key], sort_keys=True, default=str))

    return by_setting, values, labels, sorted(by_setting, key=order)


def find_pairs(runs: list[dict]) -> list[tuple[str, dict, dict, str, list, tuple]]:
    """Pairs of settings to compare.

    Returns: [(protocol, first setting values, second setting values, differing key,
    [(fold, seed)], (first, second) `setting_key`)], for settings on the same protocol and
    label set that differ in exactly one setting key (or alpha with the learning rates) and
    share at least one (fold, seed).
    """
    by_setting, values, labels, ordered = settings_by_key(runs)
    pairs = []
    for ka, kb in itertools.combinations(ordered, 2):
        if ka[0] != kb[0] or labels[ka] != labels[kb]:
            continue
        differing = _differing(values[ka], values[kb])
        if len(differing) == 1:
            field_name = differing.pop()
        elif "alpha" in differing and differing <= ALPHA_WITH_RATES:
            field_name = "alpha"
        else:
            continue
        units = sorted(set(by_setting[ka]) & set(by_setting[kb]))
        if units:
            pairs.append((ka[0], values[ka], values[kb], field_name, units, (ka, kb)))
    return pairs


def paired_tests(first: list[float], second: list[float]) -> dict:
    """Paired statistics of ``second - first``.

    Returns: {"n", "mean_diff", "std_diff" (ddof 1, None for n < 2), "t", "p_t" (paired
    t-test; None for n < 2 or zero variance), "w", "p_wilcoxon" (Wilcoxon signed-rank,
    two-sided; None when every difference is 0 or n < 1)}.
    """
    from scipy import stats

    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    d = b - a
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else None, "std_diff": None}
    out.update({"t": None, "p_t": None, "w": None, "p_wilcoxon": None})
    if n >= 2:
        out["std_diff"] = float(d.std(ddof=1))
        if out["std_diff"] > 0:
            result = stats.ttest_rel(b, a)
            out["t"], out["p_t"] = float(result.statistic), float(result.pvalue)
    if n >= 1 and np.any(d != 0):
        result = stats.wilcoxon(d)
        out["w"], out["p_wilcoxon"] = float(result.statistic), float(result.pvalue)
    return out


# ------------------------------------------------------------------------- utterances
def read_predictions(run: dict) -> dict[str, dict]:
    """``{utt_id: {"true", "predicted", "errors", "words", "speaker", "row"}}`` from a run's
    predictions.csv (``row``: all its cells by column).

    ``words`` is the reference's word count for utterances with text (else None);
    ``errors`` the word edits of the hypothesis, None without text or without a CTC head
    (a run whose results.json has no WER); ``speaker`` None when the file has no speaker
    column (runs of older mtl-ser).
    """
    path = Path(run["path"]).parent / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {PREDICTIONS_FILE} next to {run['path']}")
    ctc = run.get("wer") is not None
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            has_text = row.get("has_text") == "True"
            out[row["id"]] = {
                "true": row["true"],
                "predicted": row["predicted"],
                "errors": word_errors(row["reference"], row["hypothesis"])
                if has_text and ctc
                else None,
                "words": len(row["reference"].split()) if has_text else None,
                "speaker": row.get("speaker") or None,
                "row": row,
            }
    return out


def pooled_arrays(first_runs: list[dict], second_runs: list[dict], labels: list[str]) -> dict:
    """Joins the two settings' predictions utterance by utterance over the shared runs.

    Returns: {"true", "first", "second"} class ids ``[N]``, "stratum" ``[N]`` (the fold),
    "cluster" ``[N]`` (the speaker, or the utterance id when a predictions.csv lacks
    speakers), "cluster_unit" ("speaker" or "utterance") and, where both settings have CTC
    hypotheses, {"words", "errors_first", "errors_second"} ``[N]`` (0 words for utterances
    without text). Raises ValueError when a unit's two runs tested different utterances or
    labels.
    """
    index = {name: i for i, name in enumerate(labels)}
    true, first, second, words, err_a, err_b = [], [], [], [], [], []
    strata, speakers, ids, rows_a, rows_b = [], [], [], [], []
    wer_ok = all(r.get("wer") is not None for r in [*first_runs, *second_runs])
    for run_a, run_b in zip(first_runs, second_runs, strict=True):
        a, b = read_predictions(run_a), read_predictions(run_b)
        if set(a) != set(b):
            raise ValueError(
                f"{run_a['path']} and {run_b['path']} tested different utterances "
                f"({len(set(a) ^ set(b))} differ): not a paired comparison"
            )
        for utt in sorted(a):
            if a[utt]["true"] != b[utt]["true"]:
                raise ValueError(
                    f"{utt}: true label differs between {run_a['path']} and {run_b['path']}"
                )
            true.append(index[a[utt]["true"]])
            first.append(index[a[utt]["predicted"]])
            second.append(index[b[utt]["predicted"]])
            words.append(a[utt]["words"] or 0)
            err_a.append(a[utt]["errors"] or 0)
            err_b.append(b[utt]["errors"] or 0)
            strata.append(run_a["fold"])
            speakers.append(a[utt]["speaker"] or b[utt]["speaker"])
            ids.append(utt)
            rows_a.append(a[utt]["row"])
            rows_b.append(b[utt]["row"])
    by_speaker = all(s is not None for s in speakers)
    out = {
        "true": np.array(true),
        "first": np.array(first),
        "second": np.array(second),
        "stratum": np.array(strata),
        "cluster": np.array(speakers if by_speaker else ids, dtype=object),
        "cluster_unit": "speaker" if by_speaker else "utterance",
    }
    if wer_ok and sum(words) > 0:
        out.update(
            words=np.array(words), errors_first=np.array(err_a), errors_second=np.array(err_b)
        )
    out["tasks"] = _class_task_arrays(rows_a, rows_b, out)
    return out


def _class_task_arrays(rows_a: list[dict], rows_b: list[dict], out: dict) -> list[str]:
    """Adds ``<task>:true`` / ``<task>:first`` / ``<task>:second`` class ids ``[N]`` and
    ``<task>:mask`` ``[N]`` (1 where the utterance has a target and both predictions) to
    ``out`` for every classification task whose predictions.csv columns
    ``<task>_true`` / ``<task>_predicted`` both settings' runs wrote (e.g. a
    speaker_attribute task), from the two settings' predictions.csv rows (cells by column)
    in the order of the other arrays; returns those tasks."""
    if not rows_a:
        return []
    columns = set(rows_a[0]) & set(rows_b[0])
    tasks = sorted(c[: -len("_true")] for c in columns if c.endswith("_true"))
    tasks = [t for t in tasks if f"{t}_predicted" in columns]
    for task in tasks:
        cells = [
            (a.get(f"{task}_true") or "", a.get(f"{task}_predicted") or "")
            + (b.get(f"{task}_predicted") or "",)
            for a, b in zip(rows_a, rows_b, strict=True)
        ]
        index = {v: i for i, v in enumerate(sorted({v for c in cells for v in c} - {""}))}
        out[f"{task}:mask"] = np.array([float(all(c)) for c in cells])
        for k, which in enumerate(("true", "first", "second")):
            out[f"{task}:{which}"] = np.array([index.get(c[k], -1) for c in cells])
    return tasks


def pooled_kind(metric: str, arrays: dict) -> str | None:
    """What the bootstrap computes for ``metric``: ``wa`` / ``ua`` / ``wer`` (`POOLED_AS`),
    ``<task>:accuracy`` / ``<task>:ua`` for a classification task with per-utterance columns
    (`_class_task_arrays`), or None (fold-level tests only)."""
    if metric in POOLED_AS:
        kind = POOLED_AS[metric]
        return None if kind == "wer" and "words" not in arrays else kind
    task, _, name = metric.rpartition("/")
    if name in ("accuracy", "ua") and task in arrays.get("tasks", ()):
        return f"{task}:{name}"
    return None


def pooled_metric(metric: str, arrays: dict, weights: np.ndarray, which: str) -> np.ndarray:
    """A pooled metric (a `pooled_kind`) of setting ``which`` ("first" / "second") under
    item weights ``[B, N]`` (each utterance counted as often as the resample holds it) ->
    ``[B]``."""
    if metric == "wer":
        errors = (weights * arrays[f"errors_{which}"]).sum(1)
        return errors / np.maximum((weights * arrays["words"]).sum(1), 1e-12)
    if ":" in metric:  # a classification task's accuracy / UA over its scored utterances
        task, _, name = metric.partition(":")
        true, predicted = arrays[f"{task}:true"], arrays[f"{task}:{which}"]
        scored = arrays[f"{task}:mask"] > 0
        score = weighted_wa if name == "accuracy" else weighted_ua
        return score(true[scored], predicted[scored], weights[:, scored])
    if metric == "wa":
        return weighted_wa(arrays["true"], arrays[which], weights)
    return weighted_ua(arrays["true"], arrays[which], weights)


def bootstrap(
    arrays: dict, metric: str, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """The pooled metric of both settings, their difference and its paired cluster-bootstrap
    95% CI (clusters ``arrays["cluster"]`` resampled within strata ``arrays["stratum"]``;
    without them, every utterance is its own cluster).

    Returns: {"first", "second", "diff", "ci_low", "ci_high", "n" (utterances), "clusters",
    "min_clusters" (fewest in one fold), "cluster_unit", "samples"}.
    """
    n = len(arrays["true"])
    clusters = arrays.get("cluster", np.arange(n))
    ones = np.ones((1, n))
    result = cluster_bootstrap(
        lambda w: (
            pooled_metric(metric, arrays, w, "second") - pooled_metric(metric, arrays, w, "first")
        ),
        clusters,
        arrays.get("stratum"),
        samples=samples,
        seed=seed,
    )
    a = float(pooled_metric(metric, arrays, ones, "first")[0])
    b = float(pooled_metric(metric, arrays, ones, "second")[0])
    return {
        "first": a,
        "second": b,
        "diff": b - a,
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "n": n,
        "clusters": result["clusters"],
        "min_clusters": result["min_clusters"],
        "cluster_unit": arrays.get("cluster_unit", "utterance"),
        "samples": samples,
    }


# ------------------------------------------------------------------------------ main
def per_fold(runs_a: list[dict], runs_b: list[dict], metric: str) -> dict | None:
    """Each setting's mean of ``metric`` (`mtl_ser.report_rows.metric_value`) over the seeds
    of each fold where both report it.

    Returns: {"folds", "first", "second"} lists over folds, or None when no fold has it.
    """
    by_fold: dict[int, list] = {}
    for ra, rb in zip(runs_a, runs_b, strict=True):
        a, b = metric_value(ra, metric), metric_value(rb, metric)
        if a is not None and b is not None:
            by_fold.setdefault(ra["fold"], []).append((a, b))
    if not by_fold:
        return None
    folds = sorted(by_fold)
    return {
        "folds": folds,
        "first": [float(np.mean([p[0] for p in by_fold[k]])) for k in folds],
        "second": [float(np.mean([p[1] for p in by_fold[k]])) for k in folds],
    }


def compare_settings(
    runs: list[dict],
    samples: int = BOOTSTRAP_SAMPLES,
    metrics: tuple[str, ...] = FOLD_METRICS,
    pairs: list[tuple] | None = None,
) -> list[Comparison]:
    """Paired comparisons among ``runs`` (results dicts with ``path``), see the module
    docstring.

    Args:
        runs: the runs.
        samples: bootstrap resamples.
        metrics: the metrics compared: top-level (``ua``) or ``<task>/<metric>``; those
            with per-utterance values (`pooled_kind`) also pooled with the bootstrap.
        pairs: the pairs (`find_pairs` or `mtl_ser.baseline.baseline_pairs`); default
            `find_pairs`.

    Returns: one `Comparison` per pair.
    """
    index = {(*setting_key(r), r["fold"], r["seed"]): r for r in runs}
    comparisons = []
    for protocol, first, second, differs_in, units, (ka, kb) in (
        find_pairs(runs) if pairs is None else pairs
    ):
        runs_a = [index[(*ka, *u)] for u in units]
        runs_b = [index[(*kb, *u)] for u in units]
        comparison = Comparison(protocol, first, second, differs_in, units, tuple(metrics))
        for metric in metrics:
            values = per_fold(runs_a, runs_b, metric)
            if values is None:
                continue
            comparison.per_fold[metric] = values
            comparison.tests[metric] = paired_tests(values["first"], values["second"])
        if any(m in POOLED_AS or m.rpartition("/")[2] in ("accuracy", "ua") for m in metrics):
            _pool(comparison, runs_a, runs_b, samples)
        comparisons.append(comparison)
    return comparisons


def _pool(comparison: Comparison, runs_a: list[dict], runs_b: list[dict], samples: int) -> None:
    """Adds the pooled bootstrap of the comparison's metrics that have per-utterance values
    (`pooled_kind`), or a note why there is none."""
    try:
        arrays = pooled_arrays(runs_a, runs_b, list(runs_a[0]["labels"]))
    except (FileNotFoundError, ValueError) as err:
        comparison.notes.append(f"no pooled bootstrap: {err}")
        return
    if arrays["cluster_unit"] != "speaker":
        comparison.notes.append(
            f"{PREDICTIONS_FILE} has no speaker column (a run of an older mtl-ser): "
            "the bootstrap resamples utterances (each with its copies in the seeds "
            "of its fold), not speakers, so its interval is too narrow"
        )
    for metric in comparison.metrics:
        kind = pooled_kind(metric, arrays)
        if kind is not None:
            comparison.pooled[metric] = bootstrap(arrays, kind, samples)
    if not comparison.pooled:
        return
    fewest = min(r["min_clusters"] for r in comparison.pooled.values())
    if arrays["cluster_unit"] == "speaker" and fewest < FEW_CLUSTERS:
        comparison.notes.append(
            f"only {fewest} speaker(s) in a fold: a cluster bootstrap with K speakers "
            "per fold keeps (K - 1) / K of the variance, so the pooled interval is too "
            "narrow; the per-fold tests are the safer guide"
        )


def format_value(value, metric: str, signed: bool = False) -> str:
    """WA / UA / macro-F1 in points of %, WER as a fraction (3 decimals), task metrics
    (``<task>/<metric>``) as fractions (4 decimals)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in ("wa", "ua", "macro_f1"):
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    digits = 3 if metric == "wer" else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def metric_name(metric: str) -> str:
    """A metric in the tables: ``UA``, ``WER`` for the top-level ones, else with its
    direction (``dimensions/ccc_mean ↑``)."""
    return NAMES.get(metric) or metric_title(metric)


def markdown(
    comparisons: list[Comparison],
    metrics: tuple[str, ...] = FOLD_METRICS,
    baseline: str | None = None,
    notes: list[str] = (),
) -> str:
    """The "Paired comparisons" section of summary.md.

    Args:
        comparisons: from `compare_settings`.
        metrics: the metrics compared (their order in the table).
        baseline: the --baseline text, or None for pairs that differ in one key.
        notes: further lines (e.g. `mtl_ser.baseline.baseline_pairs`'s settings left
            uncompared).
    """
    if baseline is None:
        which = "Settings that differ in one key, on the runs they share"
    else:
        which = (
            f"Every setting against the baseline `{baseline}` (`--baseline`; first = the "
            "baseline), on the runs they share"
        )
    lines = [
        "## Paired comparisons",
        "",
        f"{which} (same protocol, fold and "
        "seed: the same test utterances). Δ = second − first (WA / UA / macro-F1 in points "
        "of %, WER as a fraction; task metrics `<task>/<metric>` as fractions, ↑ higher / ↓ "
        "lower is better). **Unit of the tests: the fold.** Each setting's value is "
        "first averaged over the seeds both settings have in that fold (the seeds of a fold "
        "test the same speakers, so they are not independent units); then mean ± sample "
        "std over folds of the differences, paired t-test and Wilcoxon signed-rank p "
        "(two-sided; with n folds the smallest Wilcoxon p is 2/2^n). Pooled: over all "
        "shared test utterances, with a 95% paired cluster-bootstrap CI "
        f"({BOOTSTRAP_SAMPLES} resamples; **unit: the speaker**, resampled within each fold "
        "with all their utterances of every seed; the same draw for both settings).",
        "",
    ]
    fold_only = fold_level_only(comparisons, metrics)
    if fold_only:
        lines += [
            "Fold-level tests only (no pooled bootstrap: it pools emotion WA / UA, greedy CTC "
            "WER and the accuracy / UA of classification tasks with per-utterance columns "
            f"`<task>_true`, `<task>_predicted` in predictions.csv) for: {', '.join(fold_only)}.",
            "",
        ]
    if not comparisons:
        text = "No pair of settings shares a (protocol, fold, seed)."
        if baseline is not None:
            text = "No setting shares a (protocol, fold, seed) with the baseline."
        return "\n".join([*lines, text, *(f"- {n}" for n in notes), ""])
    header = ["protocol", "first", "second", "metric", "folds", "Δ mean ± std", "t-test p"]
    header += ["Wilcoxon p", "pooled first", "pooled second", "pooled Δ [95% CI]"]
    header += ["bootstrap unit"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        for metric in c.metrics:
            test, pooled = c.tests.get(metric), c.pooled.get(metric)
            if test is None and pooled is None:
                continue
            cells = [c.protocol, c.first_text, c.second_text, metric_name(metric)]
            if test is not None:
                spread = (
                    ""
                    if test["std_diff"] is None
                    else f" ± {format_value(test['std_diff'], metric)}"
                )
                cells += [str(test["n"]), format_value(test["mean_diff"], metric, True) + spread]
                cells += [_p(test["p_t"]), _p(test["p_wilcoxon"])]
            else:
                cells += ["–"] * 4
            if pooled is not None:
                cells += [
                    format_value(pooled["first"], metric),
                    format_value(pooled["second"], metric),
                ]
                low, high = (format_value(pooled[k], metric, True) for k in ("ci_low", "ci_high"))
                cells.append(f"{format_value(pooled['diff'], metric, True)} [{low}, {high}]")
                cells.append(f"{pooled['clusters']} {pooled['cluster_unit']}s")
            else:
                cells += ["–"] * 3 + ["fold-level only" if metric in fold_only else "–"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [*(f"- {n}" for n in notes)] + [
        f"- {c.protocol} {c.first_text} vs {c.second_text}: {n}"
        for c in comparisons
        for n in c.notes
    ]
    return "\n".join([*lines, "", *notes, ""] if notes else [*lines, ""])


def fold_level_only(comparisons: list[Comparison], metrics) -> list[str]:
    """The metrics of ``metrics`` that no comparison pooled and that `POOLED_AS` does not
    name: those without per-utterance values (e.g. dimensions/ccc_mean), tested over folds
    only."""
    return [
        m for m in metrics if m not in POOLED_AS and not any(m in c.pooled for c in comparisons)
    ]


def write_csv(comparisons: list[Comparison], path: str | Path) -> Path:
    """paired.csv: one row per (pair, metric), fractions at full precision, empty cells for
    missing values; ``folds`` is the number of test units (folds), ``unit_list`` the
    (fold/seed) runs, ``bootstrap_unit`` what the bootstrap resampled (``fold-level only``
    for a metric it does not pool)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["protocol", "first", "second", "differs_in", "metric", "folds", "unit_list"]
            + ["mean_diff", "std_diff", "t", "p_t", "w", "p_wilcoxon"]
            + ["pooled_first", "pooled_second", "pooled_diff", "ci_low", "ci_high"]
            + ["pooled_utterances", "bootstrap_unit", "bootstrap_clusters", "bootstrap_samples"]
        )
        fold_only = fold_level_only(comparisons, [m for c in comparisons for m in c.metrics])
        for c in comparisons:
            for metric in c.metrics:
                test, pooled = c.tests.get(metric) or {}, c.pooled.get(metric) or {}
                if not test and not pooled:
                    continue
                unit = pooled.get("cluster_unit", "")
                if metric in fold_only:
                    unit = "fold-level only"
                writer.writerow(
                    [c.protocol, c.first_text, c.second_text, c.differs_in, metric]
                    + [test.get("n", ""), " ".join(f"{k}/{s}" for k, s in c.units)]
                    + [_blank(test.get(k)) for k in ("mean_diff", "std_diff", "t", "p_t", "w")]
                    + [_blank(test.get("p_wilcoxon"))]
                    + [_blank(pooled.get(k)) for k in ("first", "second", "diff", "ci_low")]
                    + [_blank(pooled.get("ci_high")), pooled.get("n", "")]
                    + [unit, pooled.get("clusters", ""), pooled.get("samples", "")]
                )
    return path


def _blank(value) -> str:
    return "" if value is None else repr(float(value))
