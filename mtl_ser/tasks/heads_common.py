"""A pooled head for utterance-level tasks besides emotion: `EmotionHead` (pooling, dropout,
one linear layer) with another number of outputs, built like the hparams file's emotion
head (its pooling and layer choice), so export rebuilds it with the allowed class."""

from __future__ import annotations

from mtl_ser.models.heads import EmotionHead
from mtl_ser.tasks.base import TaskContext


def pooled_head(context: TaskContext, n_outputs: int) -> EmotionHead:
    """An `EmotionHead` with ``n_outputs`` outputs over the shared encoder's output."""
    hparams = context.hparams
    return EmotionHead(
        input_size=context.encoder_dim,
        pooling=hparams.get("pooling", "mean"),
        n_classes=n_outputs,
        layers=hparams.get("emotion_layers", "last"),
        num_layers=context.encoder_layers,
    )
