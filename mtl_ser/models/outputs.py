"""What every encoder returns to the heads."""

from __future__ import annotations

from typing import NamedTuple

import torch


class EncoderOutput(NamedTuple):
    """An encoded padded batch.

    hidden: ``[B, T, D]`` the encoder's output (for a transformer, its last hidden state).
    lengths: ``[B]`` LongTensor of true frame counts (frames past them are padding).
    layers: every hidden layer, ``L`` tensors ``[B, T, D]`` in Hugging Face's
        ``hidden_states`` order (the first transformer layer's input, then each layer's
        output), or None for encoders without layers (the CNN). Heads with a weighted layer
        sum read these; the others read ``hidden``.
    """

    hidden: torch.Tensor
    lengths: torch.Tensor
    layers: tuple[torch.Tensor, ...] | None = None
