"""Per-group results of `mtl-ser report`: UA / WA per speaker, gender, ... pooled over the runs
of each row (setting), with speaker-level bootstrap confidence intervals.

    mtl-ser report O [--group-columns speaker,gender,scripted]

For each row of the report (`mtl_ser.report_rows.Row`: one protocol and setting, all its folds
and seeds) the test utterances of every run are read from the runs' predictions.csv and
grouped by each column (`mtl_ser.groups.column_results`). Pooling the folds is what gives a
group such as a gender its speakers (a LOSO fold tests one speaker per gender); the interval
resamples those speakers, each with all its utterances of every run (fold and seed), so the
tables say how many speakers each interval rests on. Writes ``groups.csv``, the "Per-group
results" section of summary.md and ``groups_ua.png`` (UA per group, error bars = the 95%
interval).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mtl_ser.groups import DEFAULT_GROUP_COLUMNS, LEVEL, check_columns, column_results, value_text
from mtl_ser.report_rows import Row, csv_number, row_name
from mtl_ser.results import PREDICTIONS_FILE
from mtl_ser.stats import BOOTSTRAP_SAMPLES, FEW_CLUSTERS

# Groups drawn per column in the figure, and listed in summary.md (the most utterances
# first): a corpus with thousands of speakers would bury the rest. groups.csv has them all.
MAX_FIGURE_GROUPS = 40
MAX_TABLE_GROUPS = 40


@dataclass
class RowGroups:
    """The per-group results of one report row.

    Attributes:
        row: the report row.
        columns: column -> `mtl_ser.groups.column_results` dict over the row's utterances.
        notes: what could not be used (runs without predictions.csv, absent columns).
    """

    row: Row
    columns: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def default_columns(runs: list[dict]) -> tuple[str, ...]:
    """The group columns the runs recorded in results.json (in order of first appearance),
    else `DEFAULT_GROUP_COLUMNS`."""
    found = []
    for run in runs:
        for column in (run.get("groups") or {}).get("columns") or {}:
            if column not in found:
                found.append(column)
    return tuple(found) or DEFAULT_GROUP_COLUMNS


def row_groups(row: Row, columns: tuple[str, ...], samples: int = BOOTSTRAP_SAMPLES) -> RowGroups:
    """Reads the predictions.csv of the row's runs and computes each column's groups."""
    out = RowGroups(row)
    index = {name: i for i, name in enumerate(row.labels)}
    true, predicted, speakers, items = [], [], [], []
    values: dict[str, list] = {c: [] for c in columns}
    no_file, lacking = [], {c: 0 for c in columns}
    for run in row.runs:
        path = Path(run["path"]).parent / PREDICTIONS_FILE
        if not path.is_file():
            no_file.append(run)
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or ())
            for column in columns:
                lacking[column] += column not in header
            for line in reader:
                true.append(index[line["true"]])
                predicted.append(index[line["predicted"]])
                speakers.append(value_text(line.get("speaker")))
                items.append(line["id"])
                for column in columns:
                    values[column].append(value_text(line.get(column)))
    if no_file:
        out.notes.append(
            f"{len(no_file)} of {row.n} run(s) have no {PREDICTIONS_FILE}: left out of the "
            "per-group results"
        )
    if not true:
        return out
    for column in columns:
        if lacking[column]:
            out.notes.append(
                f"{PREDICTIONS_FILE} of {lacking[column]} run(s) has no column {column!r} "
                "(not among the run's group_columns, or a run of an older mtl-ser): their "
                "utterances are left out of it"
            )
        out.columns[column] = column_results(
            column, values[column], true, predicted, speakers, items, row.labels, samples
        )
    return out


def report_groups(
    rows: list[Row], columns=None, samples: int = BOOTSTRAP_SAMPLES
) -> tuple[tuple[str, ...], list[RowGroups]]:
    """The per-group results of every row for ``columns`` (a list or comma-separated text;
    None: `default_columns` of the runs). Returns (the columns, one `RowGroups` per row)."""
    if columns is None:
        columns = default_columns([run for row in rows for run in row.runs])
    columns = check_columns(columns, "--group-columns")
    return columns, [row_groups(row, columns, samples) for row in rows]


def has_groups(results: list[RowGroups]) -> bool:
    return any(c["groups"] for r in results for c in r.columns.values())


def largest(groups: dict, limit: int) -> list[str]:
    """The names of the ``limit`` groups with the most utterances, in name order."""
    kept = sorted(sorted(groups), key=lambda v: -groups[v]["utterances"])[:limit]
    return sorted(kept)


def _pct(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _with_ci(stats: dict, metric: str) -> str:
    ci = stats[f"{metric}_ci"]
    text = _pct(stats[metric])
    return text if ci is None else f"{text} [{_pct(ci[0])}, {_pct(ci[1])}]"


def markdown(results: list[RowGroups], columns: tuple[str, ...], details: list[str]) -> str:
    """The "Per-group results" section of summary.md."""
    lines = [
        "## Per-group results",
        "",
        f"UA and WA in % per group ({', '.join(columns)}), over the test utterances of all "
        f"runs of a row (every fold and seed), with {LEVEL:.0%} cluster-bootstrap intervals "
        f"({BOOTSTRAP_SAMPLES} resamples). **Unit: the speaker**, resampled with all its "
        "utterances of every run; `speakers` is how many speakers the interval rests on. A "
        "row of the speaker column is one speaker: its interval resamples utterances. With "
        f"K < {FEW_CLUSTERS} speakers the interval is too narrow (a cluster bootstrap keeps "
        "(K - 1) / K of the variance); with 1 speaker there is none. Also in `groups.csv` "
        "and `groups_ua.png`.",
        "",
    ]
    if not results:
        return "\n".join([*lines, "No rows.", ""])
    for result in results:
        lines += [f"### {row_name(result.row, details)}", ""]
        notes = [*result.notes]
        table = []
        for column, found in result.columns.items():
            notes += [f"{column}: {n}" for n in found["notes"]]
            shown = largest(found["groups"], MAX_TABLE_GROUPS)
            if len(shown) < len(found["groups"]):
                notes.append(
                    f"{column}: the {len(shown)} largest of {len(found['groups'])} groups shown; "
                    "all in groups.csv"
                )
            for value in shown:
                stats = found["groups"][value]
                speakers = "?" if stats["speakers"] is None else str(stats["speakers"])
                cells = [column, value, str(stats["utterances"]), speakers]
                cells += [_with_ci(stats, "ua"), _with_ci(stats, "wa"), stats["ci_unit"] or "–"]
                table.append("| " + " | ".join(cells) + " |")
                if stats["note"]:
                    notes.append(f"{column} = {value}: {stats['note']}")
        if table:
            header = ["column", "group", "utts", "speakers", "UA % [95% CI]", "WA % [95% CI]"]
            header.append("CI unit")
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *table]
        else:
            lines.append("No per-group results for this row.")
        lines += ["", *(f"- {n}" for n in notes), ""] if notes else [""]
    return "\n".join(lines)


def write_csv(results: list[RowGroups], path: str | Path) -> Path:
    """groups.csv: one line per (row, column, group); fractions at full precision, empty
    cells for missing values."""

    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "n_runs", "column", "group"]
            + ["utterances", "speakers", "ua", "ua_low", "ua_high", "wa", "wa_low", "wa_high"]
            + ["macro_f1", "ci_unit", "bootstrap_samples", "note"]
        )
        for result in results:
            row = result.row
            for column, found in result.columns.items():
                for value, s in found["groups"].items():
                    ua_ci, wa_ci = s["ua_ci"] or (None, None), s["wa_ci"] or (None, None)
                    writer.writerow(
                        [row.recipe, row.protocol, row.alpha, row.key, row.n, column, value]
                        + [s["utterances"], "" if s["speakers"] is None else s["speakers"]]
                        + [csv_number(x) for x in (s["ua"], *ua_ci, s["wa"], *wa_ci)]
                        + [csv_number(s["macro_f1"]), s["ci_unit"] or "", BOOTSTRAP_SAMPLES]
                        + [s["note"] or ""]
                    )
    return path


def plot(results: list[RowGroups], columns: tuple[str, ...], details: list[str], path) -> Path:
    """groups_ua.png: one panel per column, UA per group (x) for each row (a colour), error
    bars = the interval (none where a group has no interval).

    Args:
        results: `RowGroups` of the rows; columns: the group columns; details: the setting
            keys that tell rows apart (their legend); path: the PNG to write.

    Returns: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns if any(r.columns.get(c, {}).get("groups") for r in results)]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 3.2 * len(shown)), squeeze=False)
    for ax, column in zip(axes[:, 0], shown, strict=True):
        sizes: dict[str, int] = {}
        for r in results:
            for value, s in r.columns.get(column, {}).get("groups", {}).items():
                sizes[value] = sizes.get(value, 0) + s["utterances"]
        groups = sorted(sorted(sizes), key=lambda v: -sizes[v])[:MAX_FIGURE_GROUPS]
        groups.sort()
        width = 0.8 / max(len(results), 1)
        for k, r in enumerate(results):
            found = r.columns.get(column, {}).get("groups", {})
            xs, ys, low, high = [], [], [], []
            for i, value in enumerate(groups):
                if value not in found:
                    continue
                s = found[value]
                ci = s["ua_ci"] or (s["ua"], s["ua"])
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(100 * s["ua"])
                low.append(100 * (s["ua"] - ci[0]))
                high.append(100 * (ci[1] - s["ua"]))
            ax.errorbar(
                xs, ys, yerr=[low, high], fmt="o", capsize=3, label=row_name(r.row, details)
            )
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=45 if len(groups) > 6 else 0, ha="right")
        more = len(sizes) - len(groups)
        unit = "over each speaker's utterances" if column == "speaker" else "speaker bootstrap"
        ax.set_title(
            f"UA per {column} ({LEVEL:.0%} CI, {unit})"
            + (f"; {len(groups)} largest of {len(sizes)} groups" if more else "")
        )
        ax.set_ylabel("UA %")
        ax.set_ylim(-5, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
