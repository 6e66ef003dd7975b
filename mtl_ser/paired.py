"""Paired comparisons of settings for `mtl-ser report`: is "alpha 0.1 beats alpha 0" real?

Two settings are compared when their runs share test sets: runs with the same protocol,
fold and seed (a *unit*) test on the same utterances, so each unit gives a paired difference.
Settings are the values of `SETTING_FIELDS`; two settings are paired when they differ in
exactly one field (e.g. alpha) and use the same label set. For each pair and metric:

- per unit: the difference second - first of WA, UA, macro-F1 and WER (from results.json),
  its mean and sample std, a paired t-test and a Wilcoxon signed-rank test (two-sided; with
  n units the smallest Wilcoxon p is 2 / 2^n, e.g. 0.0625 for 5 folds);
- pooled over the shared units' utterances (from predictions.csv): WA, UA and WER of each
  setting and the difference, with a 95% paired bootstrap confidence interval: utterances
  are resampled with replacement, the same draw for both settings.

Kept apart from report.py's grouping (which decides what is averaged) on purpose: pairing
asks a different question of the same runs.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtl_ser.results import PREDICTIONS_FILE

# What makes a setting: runs that differ in any of these are never averaged together
# (report.py groups by them) and pairs differ in exactly one (or in alpha and the learning
# rates together: Cai et al. trained alpha = 0 at another rate, `sweep --alpha0-lr`).
SETTING_FIELDS = (
    "recipe",
    "alpha",
    "encoder",
    "lr_encoder",
    "lr_heads",
    "ctc_reduction",
    "ctc_sum_utterances",
    "checkpoint_selection",
)
# Shown only when they vary (the rest of a setting's text is always shown).
DETAIL_FIELDS = SETTING_FIELDS[3:]
ALPHA_WITH_RATES = {"alpha", "lr_encoder", "lr_heads"}
UNIT_FIELDS = ("protocol", "fold", "seed")
FOLD_METRICS = ("wa", "ua", "macro_f1", "wer")
POOLED_METRICS = ("wa", "ua", "wer")
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "wer": "WER"}


def setting_of(run: dict) -> tuple:
    """The values of SETTING_FIELDS of a run (numbers as floats; None where a run of an
    older mtl-ser did not record a field)."""
    return tuple(
        float(run[f])
        if isinstance(run.get(f), int | float) and not isinstance(run.get(f), bool)
        else run.get(f)
        for f in SETTING_FIELDS
    )


def setting_text(setting: tuple, fields=SETTING_FIELDS) -> str:
    """``name=value`` for ``fields`` of a setting (numbers in %g; unrecorded details,
    None, left out)."""
    values = dict(zip(SETTING_FIELDS, setting, strict=True))
    return " ".join(
        f"{name}={values[name]:g}" if isinstance(values[name], float) else f"{name}={values[name]}"
        for name in fields
        if values[name] is not None or name not in DETAIL_FIELDS
    )


@dataclass
class Comparison:
    """One pair of settings on one protocol, and the tests of each metric.

    Attributes:
        protocol: the shared protocol.
        first, second: the two settings (second - first is reported); first is the smaller
            value of the differing field (alpha 0 before alpha 0.1).
        differs_in: the field that differs.
        units: the (fold, seed) pairs both settings have.
        per_unit: metric -> {"first": [...], "second": [...]} over ``units``.
        tests: metric -> dict of statistics (see `paired_tests`).
        pooled: metric -> dict (first, second, diff, ci_low, ci_high, n) or absent.
        notes: why something could not be computed.
    """

    protocol: str
    first: tuple
    second: tuple
    differs_in: str
    units: list[tuple]
    per_unit: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)
    pooled: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_pairs(runs: list[dict]) -> list[tuple[str, tuple, tuple, str, list]]:
    """Pairs of settings to compare.

    Returns: [(protocol, first setting, second setting, differing field, [(fold, seed)])],
    for settings on the same protocol and label set that differ in exactly one
    SETTING_FIELDS value and share at least one (fold, seed).
    """
    by_setting: dict[tuple, dict[tuple, dict]] = {}
    labels: dict[tuple, list] = {}
    for run in runs:
        key = (run["protocol"], setting_of(run))
        by_setting.setdefault(key, {})[(run["fold"], run["seed"])] = run
        labels[key] = run.get("labels")
    pairs = []
    for (pa, sa), (pb, sb) in itertools.combinations(sorted(by_setting, key=_sort_key), 2):
        if pa != pb or labels[(pa, sa)] != labels[(pb, sb)]:
            continue
        # A detail that one side lacks (not recorded, or not applicable: no CTC reduction
        # at alpha = 0) does not count as a difference.
        differing = {
            f
            for f, a, b in zip(SETTING_FIELDS, sa, sb, strict=True)
            if a != b and not (f in DETAIL_FIELDS and (a is None or b is None))
        }
        if len(differing) == 1:
            field_name = differing.pop()
        elif "alpha" in differing and differing <= ALPHA_WITH_RATES:
            field_name = "alpha"
        else:
            continue
        units = sorted(set(by_setting[(pa, sa)]) & set(by_setting[(pb, sb)]), key=str)
        if units:
            pairs.append((pa, sa, sb, field_name, units))
    return pairs


def _sort_key(key):
    protocol, setting = key
    return (
        protocol,
        tuple((v is None, str(v) if not isinstance(v, float) else v) for v in setting),
    )


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
def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions + deletions + insertions)."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def read_predictions(run: dict) -> dict[str, dict]:
    """``{utt_id: {"true", "predicted", "errors", "words"}}`` from a run's predictions.csv.

    ``words`` is the reference's word count for utterances with text (else None);
    ``errors`` the word edits of the hypothesis, None without text or without a CTC head
    (a run whose results.json has no WER).
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
            }
    return out


def pooled_arrays(first_runs: list[dict], second_runs: list[dict], labels: list[str]) -> dict:
    """Joins the two settings' predictions utterance by utterance over the shared units.

    Returns: {"true", "first", "second"} class ids ``[N]`` and, where both settings have
    CTC hypotheses, {"words", "errors_first", "errors_second"} ``[N]`` (0 words for
    utterances without text). Raises ValueError when a unit's two runs tested different
    utterances or labels.
    """
    index = {name: i for i, name in enumerate(labels)}
    true, first, second, words, err_a, err_b = [], [], [], [], [], []
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
    out = {"true": np.array(true), "first": np.array(first), "second": np.array(second)}
    if wer_ok and sum(words) > 0:
        out.update(
            words=np.array(words), errors_first=np.array(err_a), errors_second=np.array(err_b)
        )
    return out


def _pooled(metric: str, arrays: dict, idx: np.ndarray, which: str) -> np.ndarray:
    """A metric over resampled utterances; ``idx`` ``[B, N]`` indices -> ``[B]`` values."""
    if metric == "wer":
        return arrays[f"errors_{which}"][idx].sum(1) / np.maximum(arrays["words"][idx].sum(1), 1)
    true, pred = arrays["true"][idx], arrays[which][idx]
    correct = true == pred
    if metric == "wa":
        return correct.mean(1)
    recalls = []
    for c in np.unique(arrays["true"]):
        n_c = (true == c).sum(1)
        hits = (correct & (true == c)).sum(1)
        recalls.append(np.where(n_c > 0, hits / np.maximum(n_c, 1), np.nan))
    return np.nanmean(np.stack(recalls, 1), axis=1)


def bootstrap(
    arrays: dict, metric: str, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """The pooled metric of both settings, their difference and its paired bootstrap 95% CI.

    Returns: {"first", "second", "diff", "ci_low", "ci_high", "n", "samples"}.
    """
    n = len(arrays["true"])
    whole = np.arange(n)[None, :]
    a, b = _pooled(metric, arrays, whole, "first")[0], _pooled(metric, arrays, whole, "second")[0]
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, samples, 200):  # chunks bound the memory: [200, N] indices
        idx = rng.integers(0, n, size=(min(200, samples - start), n))
        diffs.append(_pooled(metric, arrays, idx, "second") - _pooled(metric, arrays, idx, "first"))
    diffs = np.concatenate(diffs)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "first": float(a),
        "second": float(b),
        "diff": float(b - a),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": n,
        "samples": samples,
    }


# ------------------------------------------------------------------------------ main
def compare_settings(runs: list[dict], samples: int = BOOTSTRAP_SAMPLES) -> list[Comparison]:
    """All paired comparisons among ``runs`` (results dicts with ``path``), see the module
    docstring."""
    index = {(r["protocol"], setting_of(r), r["fold"], r["seed"]): r for r in runs}
    comparisons = []
    for protocol, first, second, differs_in, units in find_pairs(runs):
        runs_a = [index[(protocol, first, *u)] for u in units]
        runs_b = [index[(protocol, second, *u)] for u in units]
        comparison = Comparison(protocol, first, second, differs_in, units)
        for metric in FOLD_METRICS:
            pairs = [
                (ra[metric], rb[metric])
                for ra, rb in zip(runs_a, runs_b, strict=True)
                if ra.get(metric) is not None and rb.get(metric) is not None
            ]
            if not pairs:
                continue
            comparison.per_unit[metric] = {
                "first": [p[0] for p in pairs],
                "second": [p[1] for p in pairs],
            }
            comparison.tests[metric] = paired_tests([p[0] for p in pairs], [p[1] for p in pairs])
        try:
            arrays = pooled_arrays(runs_a, runs_b, list(runs_a[0]["labels"]))
        except (FileNotFoundError, ValueError) as err:
            comparison.notes.append(f"no pooled bootstrap: {err}")
        else:
            for metric in POOLED_METRICS:
                if metric == "wer" and "words" not in arrays:
                    continue
                comparison.pooled[metric] = bootstrap(arrays, metric, samples)
        comparisons.append(comparison)
    return comparisons


def _fmt(value, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric == "wer":
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown(comparisons: list[Comparison]) -> str:
    """The "Paired comparisons" section of summary.md."""
    lines = [
        "## Paired comparisons",
        "",
        "Settings that differ in one field, on runs that share protocol, fold and seed (the "
        "same test utterances). Δ = second − first (WA / UA / macro-F1 in points of %, WER "
        "as a fraction). Per unit: mean ± sample std of the per-(fold, seed) differences, "
        "paired t-test and Wilcoxon signed-rank p (two-sided; with n units the smallest "
        "Wilcoxon p is 2/2^n). Pooled: over all shared test utterances, with a 95% paired "
        f"bootstrap CI ({BOOTSTRAP_SAMPLES} resamples of utterances, the same draw for both).",
        "",
    ]
    if not comparisons:
        return "\n".join([*lines, "No pair of settings shares a (protocol, fold, seed).", ""])
    header = ["protocol", "first", "second", "metric", "units", "Δ mean ± std", "t-test p"]
    header += ["Wilcoxon p", "pooled first", "pooled second", "pooled Δ [95% CI]"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        for metric in FOLD_METRICS:
            test, pooled = c.tests.get(metric), c.pooled.get(metric)
            if test is None and pooled is None:
                continue
            cells = [c.protocol, setting_text(c.first), setting_text(c.second), NAMES[metric]]
            if test is not None:
                spread = "" if test["std_diff"] is None else f" ± {_fmt(test['std_diff'], metric)}"
                cells += [str(test["n"]), _fmt(test["mean_diff"], metric, True) + spread]
                cells += [_p(test["p_t"]), _p(test["p_wilcoxon"])]
            else:
                cells += ["–"] * 4
            if pooled is not None:
                cells += [_fmt(pooled["first"], metric), _fmt(pooled["second"], metric)]
                low, high = (_fmt(pooled[k], metric, True) for k in ("ci_low", "ci_high"))
                cells.append(f"{_fmt(pooled['diff'], metric, True)} [{low}, {high}]")
            else:
                cells += ["–"] * 3
            lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {c.protocol} {setting_text(c.first)} vs {setting_text(c.second)}: {n}"
        for c in comparisons
        for n in c.notes
    ]
    return "\n".join([*lines, "", *notes, ""] if notes else [*lines, ""])


def write_csv(comparisons: list[Comparison], path: str | Path) -> Path:
    """paired.csv: one row per (pair, metric), fractions at full precision, empty cells for
    missing values."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["protocol", "first", "second", "differs_in", "metric", "units", "unit_list"]
            + ["mean_diff", "std_diff", "t", "p_t", "w", "p_wilcoxon"]
            + ["pooled_first", "pooled_second", "pooled_diff", "ci_low", "ci_high"]
            + ["pooled_utterances", "bootstrap_samples"]
        )
        for c in comparisons:
            for metric in FOLD_METRICS:
                test, pooled = c.tests.get(metric) or {}, c.pooled.get(metric) or {}
                if not test and not pooled:
                    continue
                writer.writerow(
                    [c.protocol, setting_text(c.first), setting_text(c.second), c.differs_in]
                    + [metric, test.get("n", ""), " ".join(f"{k}/{s}" for k, s in c.units)]
                    + [_blank(test.get(k)) for k in ("mean_diff", "std_diff", "t", "p_t", "w")]
                    + [_blank(test.get("p_wilcoxon"))]
                    + [_blank(pooled.get(k)) for k in ("first", "second", "diff", "ci_low")]
                    + [
                        _blank(pooled.get("ci_high")),
                        pooled.get("n", ""),
                        pooled.get("samples", ""),
                    ]
                )
    return path


def _blank(value) -> str:
    return "" if value is None else repr(float(value))
