"""Figures shared by runs and reports (matplotlib, written to PNG without a display)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# SpeechBrain's log file takes DEBUG records from every logger: matplotlib's font search
# alone wrote two thirds of a run's log.txt, and PIL / numba are as chatty. Their warnings
# still come through.
for _name in ("matplotlib", "PIL", "numba"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str
) -> Path:
    """Writes a confusion matrix as PNG: counts and row-normalised recall per cell.

    Args:
        matrix: ``[C][C]`` counts, rows = true class, columns = predicted.
        labels: class names in matrix order.
        path: output PNG.
        title: figure title.

    Returns: the path.
    """
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    recall = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 1.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n{recall[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if recall[i, j] > 0.6 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_training_curves(
    epochs: Sequence[dict], path: str | Path, title: str, chosen_epoch: int | None = None
) -> Path:
    """Writes per-epoch losses and validation metrics as PNG, with whole-number epoch ticks
    and the chosen (best-validation) epoch marked on both panels.

    Args:
        epochs: one dict per epoch with ``epoch`` and any of ``train_loss``,
            ``train_loss_emo``, ``train_loss_ctc``, ``valid_loss``, ``valid_ua``,
            ``valid_wa``, ``valid_wer`` (None values are skipped).
        path: output PNG.
        title: figure title.
        chosen_epoch: the epoch whose checkpoint was kept (None: not marked).

    Returns: the path.
    """
    fig = training_curves_figure(epochs, title, chosen_epoch)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def training_curves_figure(epochs: Sequence[dict], title: str, chosen_epoch: int | None = None):
    """The figure of `plot_training_curves` (arguments alike): losses left, validation
    metrics right. Returns: a matplotlib Figure (the caller closes it)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))

    def curve(ax, key, label, style="-"):
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label)

    curve(left, "train_loss", "train total")
    curve(left, "train_loss_emo", "train emotion (CE)")
    curve(left, "train_loss_ctc", "train CTC")
    curve(left, "valid_loss", "valid total", "--")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    curve(right, "valid_ua", "valid UA")
    curve(right, "valid_wa", "valid WA")
    curve(right, "valid_wer", "valid WER", "--")
    right.set_xlabel("epoch")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if chosen_epoch is not None:
            ax.axvline(
                chosen_epoch, color="grey", linestyle=":", label=f"chosen: epoch {chosen_epoch}"
            )
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_reliability(curves: dict[str, Sequence[dict]], path: str | Path, title: str) -> Path:
    """Writes a reliability diagram as PNG: accuracy against mean confidence per
    confidence bin (the diagonal is perfect calibration), one line per curve, and the
    share of utterances per bin below.

    Args:
        curves: name (e.g. "before", "after temperature") -> the bins of
            `mtl_ser.calibration.reliability_bins` (``low``, ``high``, ``count``,
            ``confidence``, ``accuracy``).
        path: output PNG.
        title: figure title.

    Returns: the path.
    """
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, bins in curves.items():
        full = [b for b in bins if b["count"]]
        top.plot(
            [b["confidence"] for b in full],
            [b["accuracy"] for b in full],
            marker="o",
            markersize=4,
            label=name,
        )
    first = next(iter(curves.values()))
    total = max(sum(b["count"] for b in first), 1)
    for name, bins in curves.items():
        bottom.step(
            [b["low"] for b in bins] + [1.0],
            [b["count"] / total for b in bins] + [bins[-1]["count"] / total],
            where="post",
            label=name,
        )
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(title, fontsize=10)
    bottom.set_xlabel("confidence (largest probability)")
    bottom.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_coverage_accuracy(curves: dict[str, Sequence[dict]], path: str | Path, title: str) -> Path:
    """Writes accuracy against coverage (abstaining below a confidence threshold) as PNG.

    Args:
        curves: name -> the rows of `mtl_ser.calibration.coverage_accuracy`
            (``threshold``, ``coverage``, ``accuracy``).
        path: output PNG.
        title: figure title.

    Returns: the path.
    """
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name, table in curves.items():
        rows = [r for r in table if r["accuracy"] is not None]
        ax.plot(
            [r["coverage"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name
        )
        for r in rows:
            ax.annotate(f"{r['threshold']:g}", (r["coverage"], r["accuracy"]), fontsize=6)
    ax.set_xlabel("coverage (share of utterances answered)")
    ax.set_ylabel("accuracy of those answered")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
