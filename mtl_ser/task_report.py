"""The "Metrics per task" section of `mtl-ser report`'s summary.md: every metric of every
task the runs wrote (results.json's ``task_metrics``, read by name through
`mtl_ser.report_rows.task_metric_values`), one table per task, a line per report row, with
the metric's direction and the best row of each protocol in bold."""

from __future__ import annotations

from mtl_ser.report_rows import (
    Row,
    alpha_text,
    lower_is_better_metric,
    metric_title,
    row_name,
    setting_text,
    task_metric_names,
    task_metric_values,
    varying_details,
)


def _task_cell(stat: tuple, seed_std: float | None, bold: bool) -> str:
    """A task metric's ``mean ± std (seeds ± s)`` as a fraction (4 decimals), bold when the
    best of its protocol."""
    mean, std, _ = stat
    if mean is None:
        return "–"
    text = f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")
    text = f"**{text}**" if bold else text
    return text + ("" if seed_std is None else f" (seeds ± {seed_std:.4f})")


def best_rows(rows: list[Row], metric: str) -> set[int]:
    """Indices of the rows with the best mean of ``metric`` within their protocol (the
    largest, or the smallest for a lower-is-better metric; ties all count), for protocols
    where the rows' values are not all the same."""
    best = set()
    for protocol in {r.protocol for r in rows}:
        means = {
            i: r.stat(metric)[0][0]
            for i, r in enumerate(rows)
            if r.protocol == protocol and r.stat(metric)[0][0] is not None
        }
        if len(set(means.values())) < 2:  # one row, or all equal: none stands out
            continue
        pick = min if lower_is_better_metric(metric) else max
        target = pick(means.values())
        best |= {i for i, mean in means.items() if mean == target}
    return best


def task_markdown(rows: list[Row], protocol_text=lambda row: row.protocol) -> str:
    """The "Metrics per task" section of summary.md: one table per task, a column per metric
    (`mtl_ser.report_rows.task_metric_names`), a line per row.

    Args:
        rows: the report rows.
        protocol_text: a row's protocol cell (report.py's marks speaker overlap).
    """
    lines = [
        "## Metrics per task",
        "",
        "Every metric of every task the runs wrote (`task_metrics` of results.json, read by "
        "name; a run written before it gives its top-level emotion and CTC metrics). Each "
        "cell: mean ± sample std (ddof = 1) over folds of the per-fold means, the seeds of a "
        "fold averaged first, as in the first table; (seeds ± s) the spread between seeds; "
        "values as fractions. ↑: higher is better, ↓: lower is better "
        "(`mtl_ser.tasks.base.LOWER_IS_BETTER`); **bold**: the best row of its protocol.",
        "",
    ]
    names = task_metric_names(rows)
    if not names:
        return "\n".join([*lines, "No run reports task metrics.", ""])
    details = varying_details(rows)
    notes = []
    for task in dict.fromkeys(m.partition("/")[0] for m in names):
        metrics = [m for m in names if m.partition("/")[0] == task]
        shown = [i for i, r in enumerate(rows) if any(m in r.task_stats for m in metrics)]
        best = {m: best_rows([rows[i] for i in shown], m) for m in metrics}
        header = ["recipe", "protocol", "alpha"] + (["differs in"] if details else []) + ["n"]
        header += [metric_title(m).partition("/")[2] for m in metrics]
        lines += [f"### {task}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k, i in enumerate(shown):
            row = rows[i]
            cells = [row.title, protocol_text(row), alpha_text(row.alpha)]
            cells += [setting_text(row.setting, details)] if details else []
            cells.append(str(row.n))
            cells += [_task_cell(*row.stat(m), k in best[m]) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
            for m in metrics:
                have = sum(task_metric_values(r).get(m) is not None for r in row.runs)
                if 0 < have < row.n:
                    notes.append(f"{row_name(row, details)}: {m} from {have} of {row.n} runs.")
        lines.append("")
    return "\n".join([*lines, *(f"- {n}" for n in notes), ""] if notes else lines)
