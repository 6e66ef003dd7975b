"""Emotion accuracy by recognition quality for `mtl-ser report`: UA / WA of the test
utterances binned by their per-utterance WER.

    mtl-ser report O [--wer-bins 0.25,0.5] [--wer-bins-hypothesis hypothesis]

Does the multi-task gain come from the utterances the recogniser gets right? For every row of
the report (`mtl_ser.report_rows.Row`: one protocol and setting, all its folds and seeds) the
test utterances of every run are read from the runs' predictions.csv, each utterance with a
reference transcript gets its WER (word edits of the chosen hypothesis column over the
reference's words, `mtl_ser.metrics.word_errors`: the count `error_rates` uses), and the
utterances are binned by it: ``0`` (recognised exactly), ``(0, e1]``, ``(e1, e2]``, ...,
``> ek`` for the edges ``e1 < ... < ek`` (default 0.25, 0.5). Utterances without a reference
transcript form a group of their own (``no transcript``), never a bin. Each bin gets its
utterances, WA and UA (`mtl_ser.metrics.classification_metrics`). A small bin may lack some
classes: its UA is the mean recall over the classes present in the bin (their number is
shown), not over all classes.

Rows whose runs have no CTC hypotheses (alpha = 0: results.json without a WER) and runs
without predictions.csv are left out with a note. Writes the "Emotion accuracy by
recognition quality" section of summary.md, ``wer_bins.csv`` and ``wer_bins.png`` (UA per
bin per setting, counts annotated).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mtl_ser.metrics import classification_metrics, word_errors
from mtl_ser.report_rows import Row, csv_number, row_name
from mtl_ser.results import PREDICTIONS_FILE

DEFAULT_EDGES = (0.25, 0.5)
DEFAULT_HYPOTHESIS = "hypothesis"  # the greedy CTC output of predictions.csv
NO_TRANSCRIPT = "no transcript"


def parse_edges(text) -> tuple[float, ...]:
    """The bin edges of ``--wer-bins``: comma-separated ascending positive numbers (a
    leading 0 may be given: the exact-zero bin is always there) or a sequence of them.

    Returns: the edges e1 < ... < ek. Raises ValueError (one line) otherwise."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        edges = [float(p) for p in parts if p != ""]
    except (TypeError, ValueError):
        raise ValueError(
            f"--wer-bins {text!r}: expected ascending numbers such as 0.25,0.5"
        ) from None
    edges = edges[1:] if edges and edges[0] == 0 else edges
    if (
        not edges
        or any(not math.isfinite(e) or e <= 0 for e in edges)
        or edges != sorted(set(edges))
    ):
        raise ValueError(
            f"--wer-bins {text!r}: expected ascending positive numbers such as 0.25,0.5 "
            "(the bin of WER 0 is always there)"
        )
    return tuple(edges)


def bin_names(edges: tuple[float, ...]) -> list[str]:
    """``["0", "(0, 0.25]", "(0.25, 0.5]", "> 0.5"]`` for edges (0.25, 0.5)."""
    bounds = [0.0, *edges]
    names = ["0"] + [f"({low:g}, {high:g}]" for low, high in zip(bounds, bounds[1:], strict=False)]
    return names + [f"> {edges[-1]:g}"]


def bin_index(wer: float, edges: tuple[float, ...]) -> int:
    """The bin of a WER: 0 for exactly 0, i for (e_{i-1}, e_i] (e_0 = 0), k + 1 above e_k."""
    if wer == 0:
        return 0
    for i, edge in enumerate(edges, 1):
        if wer <= edge:
            return i
    return len(edges) + 1


@dataclass
class RowBins:
    """The WER bins of one report row.

    Attributes:
        row: the report row.
        bins: one dict per bin and then the ``no transcript`` group: {"bin", "utterances",
            "classes" (classes present), "wa", "ua", "macro_f1" (None without utterances),
            "mean_wer" (None for no transcript)}; empty when the row has no hypotheses.
        notes: what could not be used.
    """

    row: Row
    bins: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _scores(name: str, true: list[int], predicted: list[int], wers, labels) -> dict:
    out = {"bin": name, "utterances": len(true), "classes": len(set(true))}
    out["mean_wer"] = sum(wers) / len(wers) if wers else None
    if not true:
        return out | {"wa": None, "ua": None, "macro_f1": None}
    metrics = classification_metrics(true, predicted, labels)
    return out | {k: metrics[k] for k in ("wa", "ua", "macro_f1")}


def row_bins(row: Row, edges: tuple[float, ...], column: str = DEFAULT_HYPOTHESIS) -> RowBins:
    """Reads the predictions.csv of the row's runs and bins their utterances by the WER of
    ``column`` (see the module docstring)."""
    out = RowBins(row)
    index = {name: i for i, name in enumerate(row.labels)}
    names = bin_names(edges)
    true: list[list[int]] = [[] for _ in range(len(names) + 1)]  # + the no-transcript group
    predicted: list[list[int]] = [[] for _ in range(len(names) + 1)]
    wers: list[list[float]] = [[] for _ in range(len(names) + 1)]
    no_file, no_ctc, no_column = 0, 0, 0
    for run in row.runs:
        path = Path(run["path"]).parent / PREDICTIONS_FILE
        if not path.is_file():
            no_file += 1
            continue
        if run.get("wer") is None:
            no_ctc += 1  # no CTC head: a hypothesis column would be empty, not wrong
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or ()):
                no_column += 1
                continue
            for line in reader:
                reference = line.get("reference") or ""
                if line.get("has_text") == "True" and reference.strip():
                    wer = word_errors(reference, line[column] or "") / len(reference.split())
                    k = bin_index(wer, edges)
                    wers[k].append(wer)
                else:
                    k = len(names)
                true[k].append(index[line["true"]])
                predicted[k].append(index[line["predicted"]])
    if no_file:
        out.notes.append(f"{no_file} of {row.n} run(s) have no {PREDICTIONS_FILE}: left out")
    if no_ctc:
        out.notes.append(f"{no_ctc} of {row.n} run(s) have no CTC hypotheses (no WER): left out")
    if no_column:
        out.notes.append(
            f"{PREDICTIONS_FILE} of {no_column} of {row.n} run(s) has no column {column!r}: "
            "left out"
        )
    if not any(true):
        return out
    for k, name in enumerate([*names, NO_TRANSCRIPT]):
        out.bins.append(_scores(name, true[k], predicted[k], wers[k], row.labels))
    return out


def report_bins(rows: list[Row], edges=DEFAULT_EDGES, column: str = DEFAULT_HYPOTHESIS):
    """The WER bins of every row.

    Returns: [`RowBins`] one per row. Raises ValueError (one line) when ``column`` is not the
    default and no predictions.csv read has it (a decoder the runs did not use)."""
    edges = parse_edges(edges)
    results = [row_bins(row, edges, column) for row in rows]
    if column != DEFAULT_HYPOTHESIS and not any(r.bins for r in results):
        found = _columns(rows)
        if found is not None and column not in found:
            raise ValueError(
                f"--wer-bins-hypothesis {column!r}: no {PREDICTIONS_FILE} has this column; "
                f"its columns: {', '.join(found)}"
            )
    return results


def _columns(rows: list[Row]) -> list[str] | None:
    """The header of the first predictions.csv of the rows' runs (None without any)."""
    for row in rows:
        for run in row.runs:
            path = Path(run["path"]).parent / PREDICTIONS_FILE
            if path.is_file():
                with open(path, newline="") as f:
                    return next(csv.reader(f), [])
    return None


def has_bins(results: list[RowBins]) -> bool:
    return any(r.bins for r in results)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown(results: list[RowBins], edges, column: str, details: list[str]) -> str:
    """The "Emotion accuracy by recognition quality" section of summary.md: a table per row
    (bin, utterances, classes present, UA, WA, mean WER) and notes."""
    edges = parse_edges(edges)
    lines = [
        "## Emotion accuracy by recognition quality",
        "",
        f"Emotion UA and WA in % of the test utterances binned by their own WER (word edits "
        f"of predictions.csv's `{column}` column over the reference's words; bins "
        f"{', '.join(bin_names(edges))}; `--wer-bins`, `--wer-bins-hypothesis`), over all "
        "runs of a row (every fold and seed). Utterances without a reference transcript are "
        f"counted apart (`{NO_TRANSCRIPT}`), in no bin. **UA of a bin is the mean recall over "
        "the classes present in it** (`classes`: present / of the label set): a small bin "
        "may lack "
        "some. Also in `wer_bins.csv` and `wer_bins.png`.",
        "",
    ]
    if not has_bins(results):
        notes = [f"- {row_name(r.row, details)}: {n}" for r in results for n in r.notes]
        return "\n".join([*lines, "No run has hypotheses to bin.", *notes, ""])
    for result in results:
        lines += [f"### {row_name(result.row, details)}", ""]
        if result.bins:
            header = ["WER bin", "utts", "classes", "UA %", "WA %", "mean WER"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for b in result.bins:
                wer = "–" if b["mean_wer"] is None else f"{b['mean_wer']:.3f}"
                cells = [b["bin"], str(b["utterances"]), f"{b['classes']}/{len(result.row.labels)}"]
                cells += [_pct(b["ua"]), _pct(b["wa"]), wer]
                lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("No hypotheses to bin for this row.")
        lines += ["", *(f"- {n}" for n in result.notes), ""] if result.notes else [""]
    return "\n".join(lines)


def write_csv(results: list[RowBins], column: str, path: str | Path) -> Path:
    """wer_bins.csv: one line per (row, bin) and the row's no-transcript group; fractions at
    full precision, empty cells for missing values."""

    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["recipe", "protocol", "alpha", "setting_digest", "n_runs", "hypothesis_column"]
            + ["bin", "utterances", "classes_present", "ua", "wa", "macro_f1", "mean_wer"]
        )
        for result in results:
            row = result.row
            for b in result.bins:
                writer.writerow(
                    [row.recipe, row.protocol, row.alpha, row.key, row.n, column]
                    + [b["bin"], b["utterances"], b["classes"]]
                    + [csv_number(b[k]) for k in ("ua", "wa", "macro_f1", "mean_wer")]
                )
    return path


def plot(results: list[RowBins], details: list[str], path: str | Path) -> Path:
    """wer_bins.png: UA per WER bin (x; the no-transcript group last) for each row with bins
    (a colour, bars side by side), each bar annotated with its utterance count.

    Returns: ``path``."""
    import matplotlib.pyplot as plt

    from mtl_ser import plots  # noqa: F401  (selects the file-only matplotlib backend)

    shown = [r for r in results if r.bins]
    names = [b["bin"] for b in shown[0].bins]
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(names), 4.2), layout="constrained")
    width = 0.8 / len(shown)
    for k, result in enumerate(shown):
        xs, ys, counts = [], [], []
        for i, b in enumerate(result.bins):
            if b["ua"] is not None:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(100 * b["ua"])
                counts.append(b["utterances"])
        bars = ax.bar(xs, ys, width=width * 0.95, label=row_name(result.row, details))
        ax.bar_label(bars, [f"n={n}" for n in counts], fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), [f"WER {n}" if n != NO_TRANSCRIPT else n for n in names])
    ax.set_ylabel("UA % (over the classes present in the bin)")
    ax.set_ylim(0, 110)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Emotion UA by per-utterance WER (all folds and seeds of each setting)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
