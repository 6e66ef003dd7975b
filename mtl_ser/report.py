"""Finished runs -> the tables and figures of a paper.

    mtl-ser report O [O2 ...] [--output-folder R]

Reads every ``results.json`` below the given folders (any recipe; schema 2, which records the
run's full setting, see `mtl_ser.report_rows`) and writes to R (default O):

- ``summary.md``: per (protocol, setting) the mean ± sample standard deviation (ddof = 1)
  over folds of the per-fold means (the seeds of a fold averaged first; the spread over
  seeds shown apart) of WA, UA, macro-F1, WER, CER, WER on improvised utterances; the pooled
  WA and UA of the summed confusion matrix (Cai et al. report pooled WA: correct / all test
  utterances); folds found against the protocol's folds; the setting keys that differ
  between the rows; then one line per run.
- ``summary.csv`` (one row per setting) and ``runs.csv`` (one per run, with a column per
  metric of the runs' other tasks, ``<task>/<metric>``), with metrics as fractions at full
  precision.
- ``alpha_ablation.png``: UA and WA (top) and WER (bottom) against alpha, error bars = sample
  std over folds; alpha = 0 sits on its own short axis labelled "0", left of the log axis.
- ``confusion_<recipe>_<protocol>_alpha<alpha>[_<differences>].png``: the summed confusion
  matrix per row.
- ``paired.csv`` and a "Paired comparisons" section of summary.md: settings that differ in
  one key compared on the folds they share, with paired tests over folds and speaker-cluster
  bootstrap confidence intervals (`mtl_ser.paired`).
- ``groups.csv``, ``groups_ua.png`` and a "Per-group results" section of summary.md: UA / WA
  per speaker, gender, ... (``--group-columns``) pooled over each row's runs, with
  speaker-bootstrap intervals and the number of speakers each rests on
  (`mtl_ser.group_report`; the files only where some run's predictions.csv gives groups).

Every file is written whole: to a temporary sibling, then renamed into place.

Runs are refused (ValueError, one line) rather than averaged when a row mixes label sets or
holds two runs of the same fold and seed, and a results.json without the setting record
(schema 1) or with a malformed key is refused naming the file and the key.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from pathlib import Path

from mtl_ser import group_report, paired
from mtl_ser.data.protocols import SPEAKER_INDEPENDENT
from mtl_ser.report_rows import (
    METRIC_NAMES,
    METRICS,
    PERCENT,
    Row,
    aggregate,
    alpha_text,
    find_results,
    row_name,
    setting_text,
    varying_details,
)


@contextlib.contextmanager
def written_whole(path: str | Path):
    """Yields a temporary sibling of ``path`` (same suffix, so that writers that choose the
    format by it still do) to write to; renames it onto ``path`` when the block ends without
    an error, else removes it. A reader sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if metric in PERCENT else f"{value:.3f}"


def _mean_std_cell(stat: tuple, metric: str, seed_std: float | None = None) -> str:
    """``mean ± std`` (std over folds) and, when a fold has several seeds, ``(seeds ± s)``."""
    mean, std, n = stat
    if mean is None:
        return "–"
    text = _cell(mean, metric) + ("" if std is None else f" ± {_cell(std, metric)}")
    return text + ("" if seed_std is None else f" (seeds ± {_cell(seed_std, metric)})")


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


def confusion_file(row: Row, details: list[str] = ()) -> str:
    """The confusion figure's file name: recipe, protocol, alpha and the differing keys."""
    extra = "".join("_" + setting_text(row.setting, [k]) for k in details)
    name = f"confusion_{row.recipe}_{row.protocol}_alpha{alpha_text(row.alpha)}{extra}"
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", name) + ".png"


def summary_markdown(rows: list[Row], folders: list, output_folder: Path, figures: list) -> str:
    """The text of summary.md (see the module docstring)."""
    n_runs = sum(r.n for r in rows)
    lines = [
        "# Results summary",
        "",
        f"{n_runs} runs from {', '.join(f'`{f}`' for f in folders)} (`mtl-ser report`).",
        "",
        "One row per protocol and setting (every recorded key that can change a result; runs "
        "that differ in any are never averaged). Each cell: mean ± sample standard deviation "
        "(ddof = 1) over folds of the per-fold means (the seeds of a fold are averaged first); "
        "no ± with one fold; (seeds ± s): the spread between seeds of one fold, sqrt of the "
        "mean within-fold variance, shown when a fold has two or more seeds. n: runs "
        "(folds x seeds). WA, UA and macro-F1 in %, WER / CER as fractions (greedy CTC, "
        "utterances with a transcript; – without CTC). Pooled WA / UA: from the confusion "
        "matrices summed over the row's runs (pooled WA = correct / all test utterances, "
        "the figure Cai et al. report).",
        "",
    ]
    details = varying_details(rows)
    header = ["recipe", "protocol", "alpha"] + (["differs in"] if details else [])
    header += ["n", "seeds", "folds"]
    header += [METRIC_NAMES[m] for m in METRICS] + ["pooled WA %", "pooled UA %", "test utts"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.recipe, _protocol_text(row), alpha_text(row.alpha)]
        cells += [setting_text(row.setting, details)] if details else []
        cells += [str(row.n), str(len(row.seeds))]
        cells.append(row.folds_text() + ("" if row.complete else " **incomplete**"))
        cells += [_mean_std_cell(row.stats[m], m, row.seed_std[m]) for m in METRICS]
        cells += [_cell(row.pooled_wa, "wa"), _cell(row.pooled_ua, "ua")]
        cells.append(str(int(row.confusion.sum())))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for row in rows:
        name = row_name(row, details)
        if not row.complete:
            notes.append(f"{name}: incomplete set of folds: {row.folds_text()}.")
        partial = [m for m in METRICS if 0 < sum(r.get(m) is not None for r in row.runs) < row.n]
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
    if details:
        notes.append(f"Rows differ in: {', '.join(details)} (column 'differs in').")
    common = sorted(set(rows[0].setting) - set(details) - {"recipe", "protocol", "alpha"})
    common = [k for k in common if all(k in r.setting for r in rows)]
    notes.append(f"Shared by every row: {setting_text(rows[0].setting, common) or '–'}.")
    lines += ["", *(f"- {note}" for note in notes), "", "## Runs", ""]
    header = ["recipe", "protocol", "alpha", "setting", "fold", "seed"]
    header += [METRIC_NAMES[m] for m in METRICS] + ["test utts", "best epoch", "run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        for run in row.runs:
            folder = os.path.relpath(Path(run["path"]).parent, output_folder)
            cells = [run["recipe"], run["protocol"], alpha_text(run["alpha"]), row.key]
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
    """Writes summary.csv (one line per row) and runs.csv (one per run), each whole;
    fractions, full precision, empty cells for missing values. ``setting`` holds the row's
    setting values as JSON, ``differs`` the keys that vary between rows. Returns both
    paths."""
    summary, per_run = output_folder / "summary.csv", output_folder / "runs.csv"
    details = varying_details(rows)
    with written_whole(summary) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "differs", "n_runs"]
            + ["folds_found", "folds_expected", "complete", "seeds", "encoder"]
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n", "seed_std")]
            + ["pooled_wa", "pooled_ua", "num_utterances", "labels", "setting"]
        )
        for row in rows:
            writer.writerow(
                [row.recipe, row.protocol, row.alpha, row.key]
                + [setting_text(row.setting, details), row.n, " ".join(map(str, row.folds))]
                + [row.expected, row.complete, " ".join(map(str, row.seeds)), row.encoder]
                + [
                    x
                    for m in METRICS
                    for x in (
                        _number(row.stats[m][0]),
                        _number(row.stats[m][1]),
                        row.stats[m][2],
                        _number(row.seed_std[m]),
                    )
                ]
                + [repr(row.pooled_wa), repr(row.pooled_ua), int(row.confusion.sum())]
                + [" ".join(row.labels), json.dumps(row.setting, sort_keys=True)]
            )
    task_columns = run_task_metrics(rows)
    with written_whole(per_run) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "fold", "seed", *METRICS]
            + ["num_utterances", "best_epoch", "valid_ua", "encoder", "path"]
            + [f"{task}/{metric}" for task, metric in task_columns]
        )
        for row in rows:
            for run in row.runs:
                writer.writerow(
                    [run[k] for k in ("recipe", "protocol", "alpha")]
                    + [row.key, run["fold"], run["seed"]]
                    + [_number(run.get(m)) for m in METRICS]
                    + [run.get(k) for k in ("num_utterances", "best_epoch", "valid_ua")]
                    + [run.get("encoder"), run["path"]]
                    + [
                        _number((run.get("task_metrics") or {}).get(task, {}).get(metric))
                        for task, metric in task_columns
                    ]
                )
    return summary, per_run


def run_task_metrics(rows: list[Row]) -> list[tuple[str, str]]:
    """The (task, metric) pairs of the runs' other tasks (``task_metrics`` in results.json,
    e.g. dimensions / ccc_mean, gender / accuracy), in first-seen order: runs.csv gives each
    a column. The emotion and CTC metrics have their own columns already."""
    pairs: dict = {}
    for row in rows:
        for run in row.runs:
            for task, metrics in (run.get("task_metrics") or {}).items():
                if task in ("emotion", "ctc") or not isinstance(metrics, dict):
                    continue
                for metric, value in metrics.items():
                    if metric != "num_utterances" and (value is None or isinstance(value, float)):
                        pairs[(task, metric)] = None
    return list(pairs)


# ------------------------------------------------------------------------------------ main
def write_report(
    folders: list[str | Path],
    output_folder: str | Path | None = None,
    echo=None,
    group_columns=None,
) -> dict:
    """Reads the runs below ``folders`` and writes the report files, each whole.

    Args:
        folders: searched recursively for results.json.
        output_folder: where the files go (default: the first folder).
        echo: if given, called with a short text summary.
        group_columns: columns of the per-group results (`mtl_ser.group_report`; None: those
            the runs recorded).

    Returns: {"rows": [Row], "files": [Path]}. Raises ValueError / FileNotFoundError as
    `find_results` and `aggregate` do.
    """
    from mtl_ser.ablation_plot import plot_alpha_ablation
    from mtl_ser.plots import plot_confusion

    rows = aggregate(find_results(folders))
    details = varying_details(rows)
    output_folder = Path(output_folder or folders[0])
    output_folder.mkdir(parents=True, exist_ok=True)
    ablation = output_folder / "alpha_ablation.png"
    with written_whole(ablation) as tmp:
        plot_alpha_ablation(rows, tmp)
    figures = [ablation]
    for row in rows:
        title = (
            f"{row_name(row, details)}: {row.n} run(s) summed"
            f"{'' if row.complete else ', folds ' + row.folds_text()}\n"
            f"pooled WA {row.pooled_wa:.1%}  pooled UA {row.pooled_ua:.1%}"
        )
        figure = output_folder / confusion_file(row, details)
        with written_whole(figure) as tmp:
            plot_confusion(row.confusion, row.labels, tmp, title)
        figures.append(figure)
    comparisons = paired.compare_settings([run for row in rows for run in row.runs])
    columns, by_group = group_report.report_groups(rows, group_columns)
    group_files = []
    if group_report.has_groups(by_group):
        group_files = [output_folder / "groups.csv", output_folder / "groups_ua.png"]
        with written_whole(group_files[0]) as tmp:
            group_report.write_csv(by_group, tmp)
        with written_whole(group_files[1]) as tmp:
            group_report.plot(by_group, columns, details, tmp)
    markdown = output_folder / "summary.md"
    with written_whole(markdown) as tmp:
        tmp.write_text(
            summary_markdown(rows, list(folders), output_folder, figures)
            + "\n"
            + paired.markdown(comparisons)
            + "\n"
            + group_report.markdown(by_group, columns, details)
        )
    files = [markdown, *write_csvs(rows, output_folder)]
    paired_csv = output_folder / "paired.csv"
    with written_whole(paired_csv) as tmp:
        paired.write_csv(comparisons, tmp)
    files += [paired_csv, *figures, *group_files]
    if echo is not None:
        for row in rows:
            stat = row.stats
            extra = setting_text(row.setting, details)
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
                    f"{c.protocol}: {c.second_text} - {c.first_text}: {metric.upper()} "
                    f"{100 * test['mean_diff']:+.2f} points over {test['n']} fold(s)"
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
