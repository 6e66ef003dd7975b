"""What a checkpoint inside an epoch holds and when it is taken, and the refusal of a
resumed schedule planned for another length (the tiny multi-task Brain, real modules)."""

import pytest
import speechbrain as sb

from mtl_ser.brain import EpochProgress
from mtl_ser.checkpoints import CheckpointLoadError, CrashSafeCheckpointer
from tests.recipes.helpers import tiny_mtl_brain
from tests.unit.test_nonfinite_steps import batch, train


def test_checkpoints_inside_an_epoch_wait_for_the_end_of_the_window(tmp_path):
    """Windows of 2 batches, a checkpoint due after every batch: only window ends save."""
    brain = tiny_mtl_brain(tmp_path)
    brain.checkpointer = CrashSafeCheckpointer(tmp_path / "save")
    brain.grad_accumulation_factor, brain.batches_per_epoch = 2, 5
    brain.ckpt_interval_steps = 1
    saves = []
    for step in range(1, 6):
        brain.step = step
        saves.append(brain._should_save_intra_epoch_ckpt(last_ckpt_time=0.0, steps_since_ckpt=1))
    assert saves == [False, True, False, True, True]  # batch 5 ends the last, short window


def test_an_epoch_resumed_inside_continues_its_statistics(tmp_path):
    """The epoch statistics saved inside an epoch come back in a new process's Brain when
    the epoch restarts; an end-of-epoch checkpoint starts the next epoch afresh."""
    brain = tiny_mtl_brain(tmp_path / "a")
    brain.batches_per_epoch = 4
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    train(brain, batch(1), batch(2, nan=True), batch(3))
    assert brain.optimizer_step == 2 and brain.nonfinite_steps == 0
    saved = brain.epoch_progress()
    EpochProgress(brain)._save(tmp_path / "progress.ckpt")

    resumed = tiny_mtl_brain(tmp_path / "b")
    EpochProgress(resumed)._recover(tmp_path / "progress.ckpt", end_of_epoch=False)
    resumed.on_stage_start(sb.Stage.TRAIN, epoch=1)
    assert resumed.loss_sums == brain.loss_sums and resumed.loss_batches == 2
    assert resumed.nonfinite_batches == 1 and resumed.stage_start_step == 0
    resumed.optimizer_step = 2  # restored by SpeechBrain's own recoverable
    resumed.on_stage_end(sb.Stage.TRAIN, None, epoch=1)
    assert resumed.epoch_steps == 2
    assert resumed.train_stats["loss"] == brain.loss_sums["loss"] / 2
    assert resumed.epoch_progress()["seconds"] >= saved["seconds"]

    fresh = tiny_mtl_brain(tmp_path / "c")
    EpochProgress(fresh)._recover(tmp_path / "progress.ckpt", end_of_epoch=True)
    fresh.on_stage_start(sb.Stage.TRAIN, epoch=2)
    assert fresh.loss_batches == 0 and fresh.nonfinite_batches == 0


def test_a_schedule_planned_for_other_epochs_is_refused(tmp_path):
    """A run folder trained for 2 epochs, resumed with number_of_epochs 3: its restored
    schedule ends at the old total (the extra epoch would train at learning rate 0)."""
    brain = tiny_mtl_brain(tmp_path, "--number_of_epochs=3")
    brain.checkpointer = CrashSafeCheckpointer(tmp_path / "save")
    brain._check_resumed_schedule()  # its own plan: fine
    for scheduler in brain.schedulers.values():
        scheduler.num_training_steps = 2  # as restored from the 2-epoch run
    with pytest.raises(CheckpointLoadError, match="number_of_epochs 3") as err:
        brain._check_resumed_schedule()
    assert "--number_of_epochs=2" in str(err.value) and "\n" not in str(err.value)
