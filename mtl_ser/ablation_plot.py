"""The alpha-ablation figure and table of `mtl-ser report`: UA / WA and WER against alpha
by default, or one panel per chosen metric (``report --ablation-metrics emotion/ua,ctc/wer,
dimensions/ccc_mean``: any top-level or task metric).

Draws the rows `mtl_ser.report_rows` builds (report.py calls it; it imports nothing of
report.py). One series per recipe, protocol and the setting keys that vary between rows
(learning rates apart): rows that differ in ``task_weighting`` (fixed | uncertainty |
pcgrad) are series of their own, so a learned weighting is seen against the best fixed
alpha.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtl_ser.report_rows import (
    METRIC_NAMES,
    PERCENT,
    Row,
    alpha_text,
    lower_is_better_metric,
    metric_title,
    setting_text,
    varying_details,
)

# The default figure: UA and WA in one panel, WER in another (when a row has one).
DEFAULT_PANELS = (("accuracy (%)", ("ua", "wa")), ("WER", ("wer",)))


def series_labels(rows: list[Row]) -> dict[int, str]:
    """``id(row)`` -> the row's series: recipe, protocol and the setting keys that vary
    between rows (learning rates apart: with `sweep --alpha0-lr`, alpha = 0 runs at another
    rate belong to the same curve), e.g. ``mtl loso task_weighting=uncertainty``."""
    details = [f for f in varying_details(rows) if not f.startswith("lr_")]
    return {
        id(r): " ".join([r.title, r.protocol, setting_text(r.setting, details)]).strip()
        for r in rows
    }


def ablation_table(rows: list[Row], metrics: tuple[str, ...]) -> dict:
    """What the figure draws, as numbers.

    Args:
        rows: the report rows; metrics: top-level (``ua``) or ``<task>/<metric>`` names.

    Returns: {metric: {series: [(alpha, mean, std or None, n folds, row)]}} sorted by
    alpha, for the rows that have the metric (series from `series_labels`).
    """
    label_of = series_labels(rows)
    out: dict = {}
    for metric in metrics:
        by_series: dict = {}
        for row in sorted(rows, key=lambda r: r.alpha):
            (mean, std, n), _ = row.stat(metric)
            if mean is not None:
                by_series.setdefault(label_of[id(row)], []).append((row.alpha, mean, std, n, row))
        out[metric] = dict(sorted(by_series.items()))
    return out


def ablation_markdown(rows: list[Row], metrics: tuple[str, ...]) -> str:
    """The "Alpha ablation" section of summary.md: per metric, a line per series with its
    mean ± std over folds at each alpha and its best alpha (the largest mean, the smallest
    for a lower-is-better metric), so that series of a learned task weighting can be read
    against the best fixed alpha."""
    table = ablation_table(rows, metrics)
    alphas = sorted({r.alpha for r in rows})
    lines = [
        "## Alpha ablation",
        "",
        "The numbers of `alpha_ablation.png`: per metric, mean ± sample std over folds (seeds "
        "of a fold averaged first) of each series at each alpha, and the series' best alpha. "
        "Series: recipe, protocol and the setting keys that vary between rows (learning "
        "rates apart), e.g. `task_weighting=uncertainty` against `task_weighting=fixed`.",
        "",
    ]
    for metric, by_series in table.items():
        percent = metric in PERCENT

        def cell(mean, std, percent=percent):
            scale, digits = (100, 2) if percent else (1, 4)
            text = f"{scale * mean:.{digits}f}"
            return text if std is None else f"{text} ± {scale * std:.{digits}f}"

        lines += [f"### {metric_title(metric, METRIC_NAMES.get(metric))}", ""]
        header = ["series", *(f"alpha {alpha_text(a)}" for a in alphas), "best"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        pick = min if lower_is_better_metric(metric) else max
        for label, points in by_series.items():
            at = {alpha: (mean, std) for alpha, mean, std, _, _ in points}
            best = pick(points, key=lambda p: p[1])
            cells = [label, *(cell(*at[a]) if a in at else "–" for a in alphas)]
            cells.append(f"{cell(best[1], None)} at alpha {alpha_text(best[0])}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        verdicts = learned_against_fixed(rows, metric)
        lines += [f"- {v}" for v in verdicts] + ([""] if verdicts else [])
    return "\n".join(lines)


def learned_against_fixed(rows: list[Row], metric: str) -> list[str]:
    """ "Does a learned weighting beat the best fixed alpha?": for each row whose
    ``task_weighting`` is not ``fixed``, its mean of ``metric`` against the best mean of the
    rows with ``task_weighting`` fixed (or unrecorded, the default) that share its protocol,
    recipe and every other setting key (alpha and the learning rates apart).

    Returns: one line per such row (none without learned weightings)."""

    def rest(row: Row) -> str:
        skip = {"alpha", "task_weighting"}
        kept = {k: v for k, v in row.setting.items() if k not in skip and not k.startswith("lr_")}
        return json.dumps([row.protocol, kept], sort_keys=True, default=str)

    pick = min if lower_is_better_metric(metric) else max
    label_of = series_labels(rows)
    lines = []
    for row in rows:
        mean = row.stat(metric)[0][0]
        if row.setting.get("task_weighting", "fixed") == "fixed" or mean is None:
            continue
        fixed = [
            r
            for r in rows
            if r.setting.get("task_weighting", "fixed") == "fixed"
            and rest(r) == rest(row)
            and r.stat(metric)[0][0] is not None
        ]
        name = f"{label_of[id(row)]} alpha {alpha_text(row.alpha)}"
        if not fixed:
            lines.append(f"{name}: {metric} {mean:.4f}; no fixed weighting of the same setting")
            continue
        best = pick(fixed, key=lambda r: r.stat(metric)[0][0])
        value = best.stat(metric)[0][0]
        verdict = "beats" if pick(mean, value) == mean and mean != value else "does not beat"
        lines.append(
            f"{name}: {metric} {mean:.4f} {verdict} the best fixed alpha "
            f"({alpha_text(best.alpha)}: {value:.4f}; difference {mean - value:+.4f}, "
            "means over folds, see the paired tests for their spread)"
        )
    return lines


def plot_alpha_ablation(rows: list[Row], path: str | Path, metrics=None) -> Path:
    """Writes the metrics against alpha: by default UA / WA (top) and WER (bottom, when any
    row has one); with ``metrics`` (top-level or ``<task>/<metric>`` names) one panel per
    metric.

    One colour per series (`series_labels`); UA solid with filled circles, WA dashed with open
    squares. Positive alphas lie on a log axis; alpha = 0 cannot, so it gets its own narrow
    axis on the left, labelled "0", set off by break marks, and a dotted line carries its mean
    across the log axis as the baseline to beat. Points of one alpha are nudged sideways so
    that error bars do not hide each other. Error bars: sample std over folds of the per-fold
    means (`Row.stat`).

    Returns: the path.
    """
    import matplotlib.pyplot as plt

    from mtl_ser import plots  # noqa: F401  (selects the file-only matplotlib backend)

    series = sorted(set(series_labels(rows).values()))
    has_zero = any(r.alpha == 0 for r in rows)
    positives = sorted({r.alpha for r in rows if r.alpha > 0})
    if metrics is None:
        panels = [
            (ylabel, names)
            for ylabel, names in DEFAULT_PANELS
            if any(r.stat(m)[0][0] is not None for r in rows for m in names)
        ]
    else:
        panels = [(metric_title(m), (m,)) for m in metrics]
    columns = [c for c, present in (("zero", has_zero), ("log", bool(positives))) if present]
    fig, axes = plt.subplots(
        len(panels),
        len(columns),
        figsize=(3.0 + 1.0 * has_zero + 5.0 * bool(positives), 0.8 + 3.2 * len(panels)),
        gridspec_kw={"width_ratios": [1 if c == "zero" else 6 for c in columns]},
        sharey="row",
        squeeze=False,
        layout="constrained",  # keeps the legends outside the axes within the figure
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"ua": ("o", "-", None), "wa": ("s", "--", "white"), "wer": ("^", "-", None)}

    def offset(series_index: int, metric: str) -> float:
        # Sideways nudge in units of the alpha = 0 axis (whose width is 1).
        spread = 0.12 * (series_index - (len(series) - 1) / 2)
        return spread + {"ua": -0.035, "wa": 0.035}.get(metric, 0.0)

    table = ablation_table(rows, tuple(m for _, names in panels for m in names))
    for p, (ylabel, names) in enumerate(panels):
        for index, name in enumerate(series):
            colour = colours[index % len(colours)]
            for metric in names:
                scale = 100 if metric in PERCENT else 1
                marker, line, face = styles.get(metric, ("o", "-", None))
                shift = offset(index, metric)
                for c, column in enumerate(columns):
                    points = [
                        point
                        for point in table[metric].get(name, [])
                        if (point[0] == 0) == (column == "zero")
                    ]
                    if not points:
                        continue
                    if column == "zero":
                        xs = [1.0 + shift]
                    else:  # the same nudge as a fraction of a decade
                        xs = [point[0] * 10 ** (0.5 * shift) for point in points]
                    ys = [point[1] * scale for point in points]
                    axes[p][c].errorbar(
                        xs,
                        ys,
                        yerr=[(point[2] or 0.0) * scale for point in points],
                        marker=marker,
                        markerfacecolor=face or colour,
                        linestyle=line if column == "log" else "none",
                        color=colour,
                        capsize=3,
                        markersize=5,
                        label=f"{name} {METRIC_NAMES.get(metric, metric).split()[0]}",
                    )
                    for x, y, (*_, row) in zip(xs, ys, points, strict=True):
                        if metric != "wa" and not row.complete:  # flagged on the figure too
                            axes[p][c].annotate(
                                f"{len(row.folds)}/{row.expected or '?'}",
                                (x, y),
                                xytext=(-6, -4),
                                ha="right",
                                textcoords="offset points",
                                fontsize=7,
                                color=colour,
                            )
                    if column == "zero" and positives:
                        axes[p][-1].axhline(ys[0], color=colour, linestyle=":", linewidth=1)
        for c, column in enumerate(columns):
            ax = axes[p][c]
            ax.grid(True, alpha=0.3)
            if column == "zero":
                ax.set_xlim(0.5, 1.5)
                ax.set_xticks([1.0], ["0"])
            else:
                ax.set_xscale("log")
                ax.set_xlim(positives[0] / 2.5, positives[-1] * 2.5)
                ax.set_xticks(positives, [alpha_text(a) for a in positives])
                ax.minorticks_off()
            if c > 0:
                ax.tick_params(axis="y", left=False)
            if p == len(panels) - 1:
                ax.set_xlabel("alpha (CTC weight)" if column == "log" else "alpha")
        if len(columns) == 2:
            _break_marks(axes[p][0], axes[p][1])
        axes[p][0].set_ylabel(ylabel)
        if has_zero and all(m == "wer" or m.startswith("ctc/") for m in names):
            axes[p][0].text(
                1.0,
                0.5,
                "no CTC",
                transform=axes[p][0].get_xaxis_transform(),
                ha="center",
                va="center",
                rotation=90,
                color="grey",
                fontsize=8,
            )
        handles = {}
        for ax in axes[p]:  # a series with alpha = 0 only is drawn on the left axis alone
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        axes[p][-1].legend(
            handles.values(), handles.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
    fig.suptitle(
        "alpha ablation: mean ± sample std over folds (seeds of a fold averaged) of each point; "
        "dotted: alpha = 0; k/n: only k of n folds found",
        fontsize=9,
    )
    fig.get_layout_engine().set(wspace=0.0, w_pad=0.02)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _break_marks(left, right) -> None:
    """Diagonal marks on the facing spines of a broken x axis."""
    left.spines["right"].set_visible(False)
    right.spines["left"].set_visible(False)
    size = 0.012
    for ax, x, scale in ((left, 1.0, 6.0), (right, 0.0, 1.0)):  # the left axis is 6x narrower
        kwargs = dict(transform=ax.transAxes, color="k", clip_on=False, linewidth=1)
        for y in (0.0, 1.0):
            ax.plot((x - size * scale, x + size * scale), (y - size * 2, y + size * 2), **kwargs)
