"""A SpeechBrain Checkpointer that survives a crash in the middle of saving.

SpeechBrain writes a checkpoint's CKPT.yaml first and its parameter files after; a process
killed in between leaves a checkpoint that looks valid, is the most recent, and fails to
load on resume. This Checkpointer writes a COMPLETE marker after the last file and ignores
checkpoints without it (with a warning naming them).
"""

from __future__ import annotations

import logging

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class CrashSafeCheckpointer(Checkpointer):
    """`speechbrain.utils.checkpoints.Checkpointer` that lists complete checkpoints only."""

    def save_checkpoint(self, *args, **kwargs):
        checkpoint = super().save_checkpoint(*args, **kwargs)
        if if_main_process() and checkpoint is not None:
            (checkpoint.path / COMPLETE).touch()
        return checkpoint

    def list_checkpoints(self):
        complete = []
        for checkpoint in super().list_checkpoints():
            if (checkpoint.path / COMPLETE).is_file():
                complete.append(checkpoint)
            else:
                logger.warning(
                    "ignoring incomplete checkpoint %s (saving was interrupted)", checkpoint.path
                )
        return complete
