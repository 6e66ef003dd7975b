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
