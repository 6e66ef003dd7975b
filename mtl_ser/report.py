"""Finished runs -> the tables and figures of a paper.

    mtl-ser report O [O2 ...] [--output-folder R]

Reads every ``results.json`` below the given folders (any recipe) and writes to R (default O):

- ``summary.md``: per (recipe, protocol, alpha) the mean ± sample standard deviation
  (ddof = 1) over its runs (folds x seeds) of WA, UA, macro-F1, WER, CER, WER on improvised
  utterances; the pooled WA and UA of the summed confusion matrix (Cai et al. report pooled
  WA: correct / all test utterances); folds found against the protocol's folds; then one
  line per run.
- ``summary.csv`` (one row per (recipe, protocol, alpha)) and ``runs.csv`` (one per run),
  with metrics as fractions at full precision.
- ``alpha_ablation.png``: UA and WA (top) and WER (bottom) against alpha, error bars = sample
  std; alpha = 0 sits on its own short axis labelled "0", left of the log axis of alpha > 0.
- ``confusion_<recipe>_<protocol>_alpha<alpha>.png``: the summed confusion matrix per row.
- ``paired.csv`` and a "Paired comparisons" section of summary.md: settings that differ in
  one field compared on the runs they share (same protocol, fold, seed), with paired tests
  and bootstrap confidence intervals (`mtl_ser.paired`).

Runs are refused (ValueError) rather than averaged when a row mixes label sets or encoders,
or holds two runs of the same fold and seed.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl_ser import paired
from mtl_ser.data.protocols import PROTOCOL_FOLDS, SPEAKER_INDEPENDENT
from mtl_ser.results import RESULTS_FILE, RESULTS_SCHEMA

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
REQUIRED_KEYS = ("recipe", "alpha", "protocol", "fold", "seed", "labels", "confusion_matrix")


# ---------------------------------------------------------------------------------- input
def find_results(folders: list[str | Path]) -> list[dict]:
    """Loads every results.json below ``folders``.

    Returns: the results dicts, each with ``"path"`` (the file) added, sorted by identity.
    Raises ValueError for a file that is not a results.json of this schema, FileNotFoundError
    when a folder is missing or holds none.
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
        except ValueError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        if data.get("schema") != RESULTS_SCHEMA:
            raise ValueError(
                f"{path}: results schema {data.get('schema')}, expected {RESULTS_SCHEMA}"
            )
        missing = [k for k in (*REQUIRED_KEYS, *METRICS) if k not in data]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        if data.get("best_epoch") is None and "evaluation" not in data:
            raise ValueError(
                f"{path}: best_epoch is null, the results of an untrained model (mtl-ser 0.1 "
                "tested runs of --number_of_epochs=0); remove the run or train it"
            )
        runs.append({**data, "path": str(path)})
    runs.sort(key=lambda r: (r["recipe"], r["protocol"], r["alpha"], r["fold"], r["seed"]))
    return runs


# ---------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    """One (protocol, setting) and what its runs give.

    Attributes:
        protocol: the runs' protocol.
        setting: the values of `paired.SETTING_FIELDS` (recipe, alpha, encoder, learning
            rates, CTC reduction, checkpoint selection) shared by the runs.
        runs: its results dicts.
        stats: metric -> (mean, sample std or None when n < 2, n) over the runs that report
            it; (None, None, 0) when none does (WER without CTC).
        confusion: summed confusion matrix (rows true, columns predicted).
        labels, encoder: shared by every run.
        folds: folds found; expected: the protocol's fold count (None if unknown).
        missing: seed -> folds of the protocol that this seed lacks (empty when complete).
    """

    protocol: str
    setting: tuple
    runs: list[dict]
    stats: dict
    confusion: np.ndarray
    labels: list[str]
    encoder: str | None
    folds: list[int]
    expected: int | None
    missing: dict

    @property
    def recipe(self) -> str:
        return self.field("recipe")

    @property
    def alpha(self) -> float:
        return self.field("alpha")

    def field(self, name: str):
        return self.setting[paired.SETTING_FIELDS.index(name)]

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


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with ddof = 1, n); std is None for n < 2 and both are
    None for n = 0."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if n > 1 else None), n


def aggregate(runs: list[dict]) -> list[Row]:
    """Groups runs by protocol and setting (`paired.SETTING_FIELDS`: runs that differ in
    alpha, encoder, learning rates, CTC reduction or checkpoint selection are different
    experiments, never averaged) and summarises each group.

    Returns: rows sorted by recipe, protocol, alpha. Raises ValueError when a group mixes
    label sets (their confusion matrices and recalls do not add up) or holds the same
    (fold, seed) twice (a fold would count double).
    """
    groups = defaultdict(list)
    for run in runs:
        groups[(run["protocol"], paired.setting_of(run))].append(run)
    rows = []
    for (protocol, setting), members in sorted(groups.items(), key=_group_order):
        name = f"{protocol} {paired.setting_text(setting)}"
        variants = defaultdict(list)
        for run in members:
            variants[json.dumps(run.get("labels"))].append(run["path"])
        if len(variants) > 1:
            listing = "\n".join(
                f"  labels {value}: {', '.join(paths)}" for value, paths in variants.items()
            )
            raise ValueError(f"{name}: runs differ in labels, refusing to average:\n{listing}")
        seen = {}
        for run in members:
            ident = (run["fold"], run["seed"])
            if ident in seen:
                raise ValueError(
                    f"{name}: fold {ident[0]} seed {ident[1]} twice: {seen[ident]} and "
                    f"{run['path']}"
                )
            seen[ident] = run["path"]
        stats = {
            m: mean_std([float(r[m]) for r in members if r.get(m) is not None]) for m in METRICS
        }
        expected = expected_folds(members, protocol)
        folds = sorted({r["fold"] for r in members})
        missing = {}
        for seed in sorted({r["seed"] for r in members}):
            have = {r["fold"] for r in members if r["seed"] == seed}
            missing[seed] = [k for k in range(1, (expected or 0) + 1) if k not in have]
        rows.append(
            Row(
                protocol=protocol,
                setting=setting,
                runs=members,
                stats=stats,
                confusion=np.sum([np.asarray(r["confusion_matrix"]) for r in members], axis=0),
                labels=list(members[0]["labels"]),
                encoder=members[0].get("encoder"),
                folds=folds,
                expected=expected,
                missing=missing,
            )
        )
    return rows


def _group_order(item) -> tuple:
    (protocol, setting), _ = item
    values = dict(zip(paired.SETTING_FIELDS, setting, strict=True))
    return (str(values["recipe"]), protocol, values["alpha"], json.dumps(setting, default=str))


def varying_details(rows: list[Row]) -> list[str]:
    """The detail fields of a setting (learning rates, CTC reduction, ...) whose values
    differ among ``rows``: the ones a table must show to tell rows apart."""
    return [
        f
        for f in paired.DETAIL_FIELDS
        if len({json.dumps(r.field(f), default=str) for r in rows}) > 1
    ]


def row_name(row: Row, details: list[str]) -> str:
    """E.g. ``mtl loso alpha=0.1`` plus the varying details (``lr_encoder=1e-05``)."""
    extra = paired.setting_text(row.setting, details)
    return f"{row.recipe} {row.protocol} alpha={alpha_text(row.alpha)}" + (
        f" {extra}" if extra else ""
    )


# ---------------------------------------------------------------------------------- tables
def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if metric in PERCENT else f"{value:.3f}"


def _mean_std_cell(stat: tuple, metric: str) -> str:
    mean, std, n = stat
    if mean is None:
        return "–"
    return _cell(mean, metric) + ("" if std is None else f" ± {_cell(std, metric)}")


def expected_folds(runs: list[dict], protocol: str) -> int | None:
    """The protocol's number of folds: as recorded by the runs (``folds``, from their
    preparation), else from the IEMOCAP protocol table; None when unknown."""
    recorded = {r.get("folds") for r in runs} - {None}
    if len(recorded) == 1:
        return int(recorded.pop())
    return PROTOCOL_FOLDS.get(protocol)


def speaker_independence(runs: list[dict], protocol: str) -> str:
    """ "independent", "dependent", "overlapping" or "unknown" for a group of runs.

    Runs record whether their split is speaker-independent (``speaker_independent``, from
    their preparation); runs without that record fall back to the IEMOCAP protocols' facts
    (loso, loso_speaker independent; random dependent; cai2021 overlapping).
    """
    recorded = [r.get("speaker_independent") for r in runs if "speaker_independent" in r]
    if recorded and len(recorded) == len(runs):
        if all(v is True for v in recorded):
            return "independent"
        if any(v is False for v in recorded):
            return "dependent" if protocol == "random" else "overlapping"
        return "unknown"
    if protocol in SPEAKER_INDEPENDENT:
        return "independent"
    if protocol == "random":
        return "dependent"
    if protocol == "cai2021":
        return "overlapping"
    return "unknown"


def _protocol_text(row: Row) -> str:
    state = speaker_independence(row.runs, row.protocol)
    if state == "independent":
        return row.protocol
    if state == "unknown":
        return f"{row.protocol} (speakers not checked)"
    return f"{row.protocol} (speaker-{state})"


def alpha_text(alpha: float) -> str:
    return f"{alpha:g}"


def confusion_file(row: Row, details: list[str] = ()) -> str:
    extra = "".join(f"_{paired.setting_text(row.setting, [f])}" for f in details)
    return f"confusion_{row.recipe}_{row.protocol}_alpha{alpha_text(row.alpha)}{extra}.png"


def summary_markdown(rows: list[Row], folders: list, output_folder: Path, figures: list) -> str:
    """The text of summary.md (see the module docstring)."""
    n_runs = sum(r.n for r in rows)
    lines = [
        "# Results summary",
        "",
        f"{n_runs} runs from {', '.join(f'`{f}`' for f in folders)} (`mtl-ser report`).",
        "",
        "Each row: mean ± sample standard deviation (ddof = 1) over its n runs (folds x seeds); "
        "no ± when n = 1. WA, UA and macro-F1 in %, WER / CER as fractions (greedy CTC, "
        "utterances with a transcript; – without CTC). Pooled WA / UA: from the confusion "
        "matrices summed over the row's runs (pooled WA = correct / all test utterances, "
        "the figure Cai et al. report).",
        "",
    ]
    details = varying_details(rows)
    header = ["recipe", "protocol", "alpha"] + (["setting"] if details else []) + ["n", "folds"]
    header += [METRIC_NAMES[m] for m in METRICS] + ["pooled WA %", "pooled UA %", "test utts"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.recipe, _protocol_text(row), alpha_text(row.alpha)]
        cells += [paired.setting_text(row.setting, details)] if details else []
        cells.append(str(row.n))
        cells.append(row.folds_text() + ("" if row.complete else " **incomplete**"))
        cells += [_mean_std_cell(row.stats[m], m) for m in METRICS]
        cells += [_cell(row.pooled_wa, "wa"), _cell(row.pooled_ua, "ua")]
        cells.append(str(int(row.confusion.sum())))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for row in rows:
        name = row_name(row, details)
        if not row.complete:
            notes.append(f"{name}: incomplete set of folds: {row.folds_text()}.")
        partial = [m for m in METRICS if 0 < row.stats[m][2] < row.n]
        if partial:
            notes.append(f"{name}: {', '.join(partial)} reported by only some runs.")
    if any(speaker_independence(r.runs, r.protocol) != "independent" for r in rows):
        notes.append(
            "Rows marked speaker-overlapping / -dependent share speakers between training and "
            "test (cai2021 by design, random by construction): their numbers are not "
            "comparable with speaker-independent rows."
        )
    encoders = sorted({str(r.encoder) for r in rows})
    notes.append(f"Encoder(s): {', '.join(encoders)}; labels: {', '.join(rows[0].labels)}.")
    common = [f for f in paired.DETAIL_FIELDS if f not in details]
    notes.append(f"Shared by every row: {paired.setting_text(rows[0].setting, common)}.")
    lines += ["", *(f"- {note}" for note in notes), "", "## Runs", ""]
    header = ["recipe", "protocol", "alpha", "fold", "seed"]
    header += [METRIC_NAMES[m] for m in METRICS] + ["test utts", "best epoch", "run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        for run in row.runs:
            folder = os.path.relpath(Path(run["path"]).parent, output_folder)
            cells = [run["recipe"], run["protocol"], alpha_text(run["alpha"])]
            cells += [str(run["fold"]), str(run["seed"])]
            cells += [_cell(run.get(m), m) for m in METRICS]
            cells += [str(run.get("num_utterances")), str(run.get("best_epoch")), f"`{folder}`"]
            lines.append("| " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "" if value is None else repr(float(value))


def write_csvs(rows: list[Row], output_folder: Path) -> tuple[Path, Path]:
    """Writes summary.csv (one line per row) and runs.csv (one per run); fractions, full
    precision, empty cells for missing values. Returns both paths."""
    summary, per_run = output_folder / "summary.csv", output_folder / "runs.csv"
    with open(summary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", *paired.DETAIL_FIELDS, "n_runs", "folds_found"]
            + ["folds_expected", "complete", "seeds", "encoder"]
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")]
            + ["pooled_wa", "pooled_ua", "num_utterances", "labels"]
        )
        for row in rows:
            writer.writerow(
                [row.recipe, row.protocol, row.alpha]
                + ["" if row.field(f) is None else row.field(f) for f in paired.DETAIL_FIELDS]
                + [row.n, " ".join(map(str, row.folds)), row.expected]
                + [row.complete, " ".join(map(str, row.seeds)), row.encoder]
                + [
                    x
                    for m in METRICS
                    for x in (_number(row.stats[m][0]), _number(row.stats[m][1]), row.stats[m][2])
                ]
                + [repr(row.pooled_wa), repr(row.pooled_ua), int(row.confusion.sum())]
                + [" ".join(row.labels)]
            )
    with open(per_run, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "fold", "seed", *METRICS]
            + ["num_utterances", "best_epoch", "valid_ua", "encoder", "path"]
        )
        for row in rows:
            for run in row.runs:
                writer.writerow(
                    [run[k] for k in ("recipe", "protocol", "alpha", "fold", "seed")]
                    + [_number(run.get(m)) for m in METRICS]
                    + [run.get(k) for k in ("num_utterances", "best_epoch", "valid_ua")]
                    + [run.get("encoder"), run["path"]]
                )
    return summary, per_run


# ------------------------------------------------------------------------------------ main
def write_report(
    folders: list[str | Path], output_folder: str | Path | None = None, echo=None
) -> dict:
    """Reads the runs below ``folders`` and writes the report files.

    Args:
        folders: searched recursively for results.json.
        output_folder: where the files go (default: the first folder).
        echo: if given, called with a short text summary.

    Returns: {"rows": [Row], "files": [Path]}. Raises ValueError / FileNotFoundError as
    `find_results` and `aggregate` do.
    """
    from mtl_ser.ablation_plot import plot_alpha_ablation
    from mtl_ser.plots import plot_confusion

    rows = aggregate(find_results(folders))
    details = varying_details(rows)
    output_folder = Path(output_folder or folders[0])
    output_folder.mkdir(parents=True, exist_ok=True)
    figures = [plot_alpha_ablation(rows, output_folder / "alpha_ablation.png")]
    for row in rows:
        title = (
            f"{row_name(row, details)}: {row.n} run(s) summed"
            f"{'' if row.complete else ', folds ' + row.folds_text()}\n"
            f"pooled WA {row.pooled_wa:.1%}  pooled UA {row.pooled_ua:.1%}"
        )
        figures.append(
            plot_confusion(
                row.confusion, row.labels, output_folder / confusion_file(row, details), title
            )
        )
    comparisons = paired.compare_settings([run for row in rows for run in row.runs])
    markdown = output_folder / "summary.md"
    markdown.write_text(
        summary_markdown(rows, list(folders), output_folder, figures)
        + "\n"
        + paired.markdown(comparisons)
    )
    files = [markdown, *write_csvs(rows, output_folder)]
    files += [paired.write_csv(comparisons, output_folder / "paired.csv"), *figures]
    if echo is not None:
        for row in rows:
            stat = row.stats
            extra = paired.setting_text(row.setting, details)
            echo(
                f"{row.recipe:4s} {row.protocol:12s} alpha {alpha_text(row.alpha):6s} "
                + (f"{extra} " if extra else "")
                + f"n={row.n:<3d} folds {row.folds_text()}: WA {_mean_std_cell(stat['wa'], 'wa')}"
                f"  UA {_mean_std_cell(stat['ua'], 'ua')}  WER {_mean_std_cell(stat['wer'], 'wer')}"
                f"  pooled WA {_cell(row.pooled_wa, 'wa')}"
            )
        for c in comparisons:
            for metric in ("ua", "wa"):
                test, pooled = c.tests.get(metric), c.pooled.get(metric)
                if test is None:
                    continue
                echo(
                    f"{c.protocol}: {paired.setting_text(c.second)} - "
                    f"{paired.setting_text(c.first)}: {metric.upper()} "
                    f"{100 * test['mean_diff']:+.2f} points over {test['n']} unit(s)"
                    + (f", t-test p {test['p_t']:.3g}" if test["p_t"] is not None else "")
                    + (
                        f", pooled {100 * pooled['diff']:+.2f} "
                        f"[{100 * pooled['ci_low']:+.2f}, {100 * pooled['ci_high']:+.2f}]"
                        if pooled
                        else ""
                    )
                )
        echo(f"report in {output_folder}: {', '.join(f.name for f in files)}")
    return {"rows": rows, "files": files}
