"""Early stopping: strict improvement only, and the whole state survives a checkpoint."""

import pytest
import torch

from mtl_ser.checkpoints import CrashSafeCheckpointer
from mtl_ser.stopping import EarlyStoppingCounter


def run(counter, values):
    """Feeds one validation value per epoch; returns the epochs trained."""
    epochs = []
    for epoch, value in zip(counter, values, strict=False):
        epochs.append(epoch)
        counter.update_metric(value)
    return epochs


def test_a_tie_is_not_an_improvement():
    counter = EarlyStoppingCounter(limit=10, patience=2)
    assert run(counter, [0.5, 0.5, 0.5, 0.9]) == [1, 2, 3]
    assert (counter.best_epoch, counter.best_value, counter.should_stop) == (1, 0.5, True)


def test_patience_counts_from_the_best_epoch_and_nan_never_improves():
    counter = EarlyStoppingCounter(limit=10, patience=3)
    assert run(counter, [0.3, 0.4, float("nan"), 0.39, 0.41, 0.2, 0.2, 0.2]) == list(range(1, 9))
    assert counter.best_epoch == 5 and counter.should_stop
    never = EarlyStoppingCounter(limit=4, patience=None)
    assert run(never, [0.9, 0.1, 0.1, 0.1]) == [1, 2, 3, 4]
    assert not never.should_stop and never.finished and never.best_epoch == 1


def test_min_direction():
    counter = EarlyStoppingCounter(limit=5, patience=1, direction="min")
    assert run(counter, [3.0, 2.0, 2.5]) == [1, 2, 3]
    assert counter.best_epoch == 2


def test_state_survives_a_checkpoint_and_a_stopped_run_stays_stopped(tmp_path):
    counter = EarlyStoppingCounter(limit=10, patience=2)
    checkpointer = CrashSafeCheckpointer(tmp_path, {"counter": counter, "x": torch.nn.Linear(1, 1)})
    for epoch, value in zip(counter, [0.4, 0.6, 0.6, 0.5], strict=False):
        counter.update_metric(value)  # before saving, as the Brain does
        checkpointer.save_checkpoint(meta={"epoch": epoch})
    assert counter.should_stop and counter.current == 4
    resumed = EarlyStoppingCounter(limit=10, patience=2)
    CrashSafeCheckpointer(
        tmp_path, {"counter": resumed, "x": torch.nn.Linear(1, 1)}
    ).recover_if_possible()
    assert (
        resumed.state()
        == counter.state()
        == {
            "current": 4,
            "best_epoch": 2,
            "best_value": 0.6,
            "should_stop": True,
        }
    )
    assert list(resumed) == []  # nothing left to train


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="number_of_epochs must be an integer >= 1, not 0"):
        EarlyStoppingCounter(limit=0)
    with pytest.raises(ValueError, match="early_stop_patience must be"):
        EarlyStoppingCounter(limit=3, patience=0)
    with pytest.raises(ValueError, match="direction"):
        EarlyStoppingCounter(limit=3, direction="up")
