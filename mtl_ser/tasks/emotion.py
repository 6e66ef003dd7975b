"""The categorical emotion task: today's emotion head (pooling and layer choices in the
hparams file's ``emotion_head``), cross-entropy, WA / UA / macro-F1 (`PredictionLog`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.tasks.balance import class_counts, class_weights
from mtl_ser.tasks.base import Task, TaskContext, masked_mean_loss


@dataclass
class EmotionTask(Task):
    """Emotion classes from the manifest's ``emo`` (the batch's ``emo_encoded``).

    Args (besides ``name`` and ``weight``):
        class_weighting: see `mtl_ser.tasks.balance` (``none``: the mean cross-entropy).
        class_weighting_beta: the effective-number beta.
        label_smoothing: cross-entropy label smoothing.
    """

    class_weighting: str = "none"
    class_weighting_beta: float = 0.999
    label_smoothing: float = 0.0
    weights: list | None = field(default=None, init=False)
    counts: list | None = field(default=None, init=False)

    def __post_init__(self):
        self.head_module = "emotion_head"
        self._objective = MultiTaskObjective(0.0, label_smoothing=self.label_smoothing)

    @property
    def loss_key(self) -> str:
        return "emo"  # the epoch log's ``loss_emo`` since mtl-ser 0.1

    def build_head(self, context: TaskContext):
        if self.class_weighting != "none":
            if context.train_records is None or context.labels is None:
                raise ValueError("class_weighting needs the training manifest and its labels")
            labels = [r["emo"] for r in context.train_records.values()]
            self.counts = class_counts(labels, tuple(context.labels))
            self.weights = class_weights(
                self.counts, self.class_weighting, self.class_weighting_beta
            )
        return None  # the hparams file's emotion_head

    def forward(self, head, hidden, lengths, layers):
        return head(hidden, lengths, layers)  # [B, C] logits

    def targets(self, batch):
        emo = batch.emo_encoded.data.squeeze(-1)
        return emo, torch.ones_like(emo, dtype=torch.bool)

    def loss(self, output, targets, frame_lens):
        emo, mask = targets
        if self.weights is None:
            return self._objective.emotion_loss(output, emo)
        # sum_i w_{y_i} CE_i / B: an utterance's weight is its class's, whatever the batch.
        per_utt = F.cross_entropy(
            output.float(), emo, reduction="none", label_smoothing=self.label_smoothing
        )
        weights = torch.tensor(self.weights, device=output.device)[emo]
        return masked_mean_loss(per_utt * weights, mask)

    def prediction_fields(self, output, targets, frame_lens):
        return {"logits": output, "targets": targets[0]}

    def metric_values(self, metrics):
        return {k: metrics[k] for k in ("ua", "wa", "macro_f1")}

    def identity(self):
        return {"class_weighting": self.class_weighting, "class_weights": self.weights}

    def describe(self):
        return {
            **super().describe(),
            "class_weighting": self.class_weighting,
            "class_weighting_beta": (
                self.class_weighting_beta if self.class_weighting == "effective_number" else None
            ),
            "class_weights": self.weights,
            "train_class_counts": self.counts,
        }
