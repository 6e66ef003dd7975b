"""Training curves a person can read, and logs without third-party debug noise."""

import logging
import re

import matplotlib.pyplot as plt

from mtl_ser.plots import training_curves_figure


def test_training_curves_have_whole_epochs_and_the_chosen_one_marked():
    epochs = [
        {"epoch": e, "train_loss": 2.0 / e, "valid_ua": 0.3 + 0.1 * (e == 2), "valid_wa": 0.4}
        for e in (1, 2, 3)
    ]
    fig = training_curves_figure(epochs, "run", chosen_epoch=2)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        marks = [line for line in ax.get_lines() if line.get_label() == "chosen: epoch 2"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
    plt.close(fig)


def test_third_party_debug_output_is_kept_out_of_the_logs():
    for name in ("matplotlib", "matplotlib.font_manager", "PIL.PngImagePlugin", "numba"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.DEBUG) and logger.isEnabledFor(logging.WARNING)


def test_a_runs_log_has_no_matplotlib_lines(mtl_run):
    log = (mtl_run[0] / "log.txt").read_text()
    assert "Going into epoch 2" in log  # the log is the run's, written to the end
    # SpeechBrain's format: "time - logger name - level - message"
    assert not re.search(r" - (matplotlib|PIL|numba)\S* - DEBUG - ", log)
