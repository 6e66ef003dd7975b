"""The epoch loop with early stopping on a validation metric, checkpointed whole.

SpeechBrain 1.1.2's ``EpochCounterWithStopper`` saves only the epoch number (its own save
hooks are never registered), so a resumed run forgets its best score and patience and trains
on; and it counts an exact tie as an improvement, so a flat metric never stops. This counter
saves its whole state, and only a strictly better value is an improvement: the best epoch is
the first one that reached the best value, which is also the checkpoint the Brain chooses.
"""

from __future__ import annotations

import json
import logging
import math

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class EarlyStoppingCounter:
    """Yields epochs 1..``limit``; stops after ``patience`` epochs without a strictly better
    validation value.

    Args:
        limit: the most epochs to train (>= 1).
        patience: epochs without improvement before stopping; None never stops early.
        direction: "max" (e.g. UA) or "min" (e.g. a loss).

    Use: ``for epoch in counter: train; validate; counter.update_metric(value); save``.
    The state saved with a checkpoint (epoch, best value and epoch, whether it stopped) is
    the state after ``update_metric``, so update before saving.
    """

    def __init__(self, limit: int, patience: int | None = None, direction: str = "max"):
        if int(limit) != limit or limit < 1:
            raise ValueError(f"number_of_epochs must be an integer >= 1, not {limit!r}")
        if patience is not None and (int(patience) != patience or patience < 1):
            raise ValueError(
                f"early_stop_patience must be an integer >= 1 or null, not {patience!r}"
            )
        if direction not in ("max", "min"):
            raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
        self.limit = int(limit)
        self.patience = None if patience is None else int(patience)
        self.direction = direction
        self.current = 0
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.should_stop = False

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.should_stop or self.current >= self.limit:
            raise StopIteration
        self.current += 1
        logger.info(f"Going into epoch {self.current}")
        return self.current

    @property
    def finished(self) -> bool:
        """True when no epoch is left: the limit is reached or training stopped early."""
        return self.should_stop or self.current >= self.limit

    def is_better(self, value: float) -> bool:
        """Strictly better than the best so far (a tie is not an improvement; NaN never is)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.direction == "max" else value < self.best_value

    def update_metric(self, value: float) -> bool:
        """Records the current epoch's validation value; returns whether it improved."""
        improved = self.is_better(value)
        if improved:
            self.best_epoch, self.best_value = self.current, float(value)
        if self.patience is not None and self.best_epoch is not None:
            waited = self.current - self.best_epoch
            if waited >= self.patience and self.current < self.limit:
                self.should_stop = True
                logger.info(
                    f"{waited} epochs without a better validation value (best "
                    f"{self.best_value:.4f} at epoch {self.best_epoch}): stopping early"
                )
        return improved

    def state(self) -> dict:
        return {
            "current": self.current,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "should_stop": self.should_stop,
        }

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state(), f)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        self.current = int(state["current"]) - (0 if end_of_epoch else 1)
        self.best_epoch = state["best_epoch"]
        self.best_value = state["best_value"]
        self.should_stop = bool(state["should_stop"])
