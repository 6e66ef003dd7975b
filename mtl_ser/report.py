"""Finished runs -> the tables and figures of a paper.

    mtl-ser report O [O2 ...] [--output-folder R] [--baseline alpha=0]
        [--paired-metrics emotion/ua,...] [--ablation-metrics emotion/ua,ctc/wer,...]
        [--wer-bins 0.25,0.5] [--wer-bins-hypothesis hypothesis]

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
- a "Metrics per task" section of summary.md and ``<task>/<metric>_{mean,std,n,seed_std}``
  columns of summary.csv: every metric of every task the runs wrote (``task_metrics`` of
  results.json, read by name), averaged as the first table's metrics, with its direction.
- ``alpha_ablation.png``: UA and WA (top) and WER (bottom) against alpha, or one panel per
  metric of ``--ablation-metrics``, error bars = sample std over folds; alpha = 0 sits on its
  own short axis labelled "0", left of the log axis; its numbers in an "Alpha ablation"
  section of summary.md (`mtl_ser.ablation_plot`).
- ``confusion_<recipe>_<protocol>_alpha<alpha>[_<differences>].png``: the summed confusion
  matrix per row.
- ``paired.csv`` and a "Paired comparisons" section of summary.md: settings that differ in
  one key (or every setting against ``--baseline``) compared on the folds they share on the
  metrics of ``--paired-metrics``, with paired tests over folds and speaker-cluster
  bootstrap confidence intervals (`mtl_ser.paired`).
- ``groups.csv``, ``groups_ua.png`` and a "Per-group results" section of summary.md: UA / WA
  per speaker, gender, ... (``--group-columns``) pooled over each row's runs, with
  speaker-bootstrap intervals and the number of speakers each rests on
  (`mtl_ser.group_report`; the files only where some run's predictions.csv gives groups).
- ``wer_bins.csv``, ``wer_bins.png`` and an "Emotion accuracy by recognition quality" section
  of summary.md: emotion UA / WA of the test utterances binned by their own WER
  (``--wer-bins``, ``--wer-bins-hypothesis``; `mtl_ser.wer_bins`; the files only where some
  run has CTC hypotheses).

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
from mtl_ser import wer_bins as wer_bins_module
from mtl_ser.baseline import baseline_pairs
from mtl_ser.data.protocols import SPEAKER_INDEPENDENT
from mtl_ser.report_rows import (
    METRIC_NAMES,
    METRICS,
    PERCENT,
    TOP_LEVEL_TASK_METRICS,
    Row,
    aggregate,
    alpha_text,
    csv_number,
    find_results,
    parse_metrics,
    row_name,
    run_title,
    setting_text,
    task_metric_names,
    task_metric_values,
    varying_details,
)
from mtl_ser.task_report import task_markdown
from mtl_ser.tasks.text_emotion import ORACLE_MARK, is_oracle


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
        cells = [row.title, _protocol_text(row), alpha_text(row.alpha)]
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
    if any(is_oracle(r.runs[0]) for r in rows):
        notes.append(
            f"Rows marked ({ORACLE_MARK}) fused the reference transcripts (text_source: "
            "reference): an oracle upper bound, not what a deployed model reading its own "
            "transcripts reaches."
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
            cells = [run_title(run), run["protocol"], alpha_text(run["alpha"]), row.key]
            cells += [str(run["fold"]), str(run["seed"])]
            cells += [_cell(run.get(m), m) for m in METRICS]
            cells += [str(run.get("num_utterances")), str(run.get("best_epoch")), f"`{folder}`"]
            lines.append("| " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(lines) + "\n"


def write_csvs(rows: list[Row], output_folder: Path) -> tuple[Path, Path]:
    """Writes summary.csv (one line per row) and runs.csv (one per run), each whole;
    fractions, full precision, empty cells for missing values. ``setting`` holds the row's
    setting values as JSON, ``differs`` the keys that vary between rows. Returns both
    paths."""
    summary, per_run = output_folder / "summary.csv", output_folder / "runs.csv"
    details = varying_details(rows)
    task_names = task_metric_names(rows)
    with written_whole(summary) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "differs", "n_runs"]
            + ["folds_found", "folds_expected", "complete", "seeds", "encoder"]
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n", "seed_std")]
            + ["pooled_wa", "pooled_ua", "num_utterances", "labels", "setting"]
            + [f"{m}_{s}" for m in task_names for s in ("mean", "std", "n", "seed_std")]
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
                        csv_number(row.stats[m][0]),
                        csv_number(row.stats[m][1]),
                        row.stats[m][2],
                        csv_number(row.seed_std[m]),
                    )
                ]
                + [repr(row.pooled_wa), repr(row.pooled_ua), int(row.confusion.sum())]
                + [" ".join(row.labels), json.dumps(row.setting, sort_keys=True)]
                + [
                    x
                    for m in task_names
                    for (mean, std, n), seed_std in [row.stat(m)]
                    for x in (csv_number(mean), csv_number(std), n, csv_number(seed_std))
                ]
            )
    task_columns = run_task_metrics(rows)
    with written_whole(per_run) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "fold", "seed", *METRICS]
            + ["num_utterances", "best_epoch", "valid_ua", "encoder", "path"]
            + task_columns
        )
        for row in rows:
            for run in row.runs:
                writer.writerow(
                    [run[k] for k in ("recipe", "protocol", "alpha")]
                    + [row.key, run["fold"], run["seed"]]
                    + [csv_number(run.get(m)) for m in METRICS]
                    + [run.get(k) for k in ("num_utterances", "best_epoch", "valid_ua")]
                    + [run.get("encoder"), run["path"]]
                    + [csv_number(task_metric_values(run).get(m)) for m in task_columns]
                )
    return summary, per_run


def run_task_metrics(rows: list[Row]) -> list[str]:
    """The ``<task>/<metric>`` columns of runs.csv: every task metric of the runs
    (`mtl_ser.report_rows.task_metric_names`, e.g. dimensions/ccc_mean, gender/accuracy,
    ctc/cer_improvised) but those runs.csv has as top-level columns already (emotion/ua
    is the column ua)."""
    top = {f"{t}/{m}" for t, names in TOP_LEVEL_TASK_METRICS.items() for m in names}
    return [m for m in task_metric_names(rows) if m not in top]


# ------------------------------------------------------------------------------------ main
def write_report(
    folders: list[str | Path],
    output_folder: str | Path | None = None,
    echo=None,
    group_columns=None,
    baseline: str | None = None,
    paired_metrics=None,
    ablation_metrics=None,
    wer_bins=wer_bins_module.DEFAULT_EDGES,
    wer_bins_hypothesis: str = wer_bins_module.DEFAULT_HYPOTHESIS,
) -> dict:
    """Reads the runs below ``folders`` and writes the report files, each whole.

    Args:
        folders: searched recursively for results.json.
        output_folder: where the files go (default: the first folder).
        echo: if given, called with a short text summary.
        group_columns: columns of the per-group results (`mtl_ser.group_report`; None: those
            the runs recorded).
        baseline: compare every setting with this one (`mtl_ser.baseline.baseline_pairs`:
            ``key=value[,key=value]`` or a setting digest); None: pairs that differ in one
            key.
        paired_metrics: metrics of the paired tests (comma-separated text or a sequence of
            top-level names or ``<task>/<metric>``); None: WA, UA, macro-F1, WER.
        ablation_metrics: one panel each in alpha_ablation.png; None: UA / WA and WER.
        wer_bins: the WER bin edges (`mtl_ser.wer_bins.parse_edges`).
        wer_bins_hypothesis: the predictions.csv column the WER bins score.

    Returns: {"rows": [Row], "files": [Path]}. Raises ValueError / FileNotFoundError as
    `find_results` and `aggregate` do, and ValueError (one line) for an option that names a
    metric no run reports, a baseline that matches no setting or several of a protocol, or
    bad bin edges; options are checked before any file is written.
    """
    from mtl_ser.ablation_plot import ablation_markdown, plot_alpha_ablation
    from mtl_ser.plots import plot_confusion

    runs = find_results(folders)
    rows = aggregate(runs)
    details = varying_details(rows)
    # The options first: a bad one stops the report before it writes anything.
    fold_metrics = paired.FOLD_METRICS
    if paired_metrics is not None:
        fold_metrics = parse_metrics(paired_metrics, runs, "--paired-metrics")
    pairs, pair_notes = (None, []) if baseline is None else baseline_pairs(runs, baseline)
    panels = None
    if ablation_metrics is not None:
        panels = parse_metrics(ablation_metrics, runs, "--ablation-metrics")
    edges = wer_bins_module.parse_edges(wer_bins)
    by_bin = wer_bins_module.report_bins(rows, edges, wer_bins_hypothesis)

    output_folder = Path(output_folder or folders[0])
    output_folder.mkdir(parents=True, exist_ok=True)
    ablation = output_folder / "alpha_ablation.png"
    with written_whole(ablation) as tmp:
        plot_alpha_ablation(rows, tmp, panels)
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
    comparisons = paired.compare_settings(runs, metrics=fold_metrics, pairs=pairs)
    columns, by_group = group_report.report_groups(rows, group_columns)
    group_files = []
    if group_report.has_groups(by_group):
        group_files = [output_folder / "groups.csv", output_folder / "groups_ua.png"]
        with written_whole(group_files[0]) as tmp:
            group_report.write_csv(by_group, tmp)
        with written_whole(group_files[1]) as tmp:
            group_report.plot(by_group, columns, details, tmp)
    bin_files = []
    if wer_bins_module.has_bins(by_bin):
        bin_files = [output_folder / "wer_bins.csv", output_folder / "wer_bins.png"]
        with written_whole(bin_files[0]) as tmp:
            wer_bins_module.write_csv(by_bin, wer_bins_hypothesis, tmp)
        with written_whole(bin_files[1]) as tmp:
            wer_bins_module.plot(by_bin, details, tmp)
    ablation_names = panels or tuple(
        m for m in ("ua", "wa", "wer") if any(r.stats[m][0] is not None for r in rows)
    )
    markdown = output_folder / "summary.md"
    with written_whole(markdown) as tmp:
        tmp.write_text(
            summary_markdown(rows, list(folders), output_folder, figures)
            + "\n"
            + task_markdown(rows, _protocol_text)
            + "\n"
            + ablation_markdown(rows, ablation_names)
            + "\n"
            + paired.markdown(comparisons, fold_metrics, baseline, pair_notes)
            + "\n"
            + group_report.markdown(by_group, columns, details)
            + "\n"
            + wer_bins_module.markdown(by_bin, edges, wer_bins_hypothesis, details)
        )
    files = [markdown, *write_csvs(rows, output_folder)]
    paired_csv = output_folder / "paired.csv"
    with written_whole(paired_csv) as tmp:
        paired.write_csv(comparisons, tmp)
    files += [paired_csv, *figures, *group_files, *bin_files]
    if echo is not None:
        for row in rows:
            stat = row.stats
            extra = setting_text(row.setting, details)
            echo(
                f"{row.title:4s} {row.protocol:12s} alpha {alpha_text(row.alpha):6s} "
                + (f"{extra} " if extra else "")
                + f"n={row.n:<3d} folds {row.folds_text()}: WA {_mean_std_cell(stat['wa'], 'wa')}"
                f"  UA {_mean_std_cell(stat['ua'], 'ua')}  WER {_mean_std_cell(stat['wer'], 'wer')}"
                f"  pooled WA {_cell(row.pooled_wa, 'wa')}"
            )
        shown = ("ua", "wa") if paired_metrics is None else fold_metrics
        for c in comparisons:
            for metric in shown:
                test, pooled = c.tests.get(metric), c.pooled.get(metric)
                if test is None:
                    continue
                fmt = paired.format_value
                unit = " points" if metric in PERCENT else ""
                echo(
                    f"{c.protocol}: {c.second_text} - {c.first_text}: "
                    f"{paired.metric_name(metric)} {fmt(test['mean_diff'], metric, True)}{unit} "
                    f"over {test['n']} fold(s)"
                    + (f", t-test p {test['p_t']:.3g}" if test["p_t"] is not None else "")
                    + (
                        f", pooled {fmt(pooled['diff'], metric, True)} "
                        f"[{fmt(pooled['ci_low'], metric, True)}, "
                        f"{fmt(pooled['ci_high'], metric, True)}]"
                        if pooled
                        else ""
                    )
                )
        echo(f"report in {output_folder}: {', '.join(f.name for f in files)}")
    return {"rows": rows, "files": files}
