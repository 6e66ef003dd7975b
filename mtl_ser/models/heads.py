"""The task heads shared by every recipe: emotion classification and CTC characters.

Both take encoder output ``[B, T, D]`` with true frame counts ``[B]`` and never let padded
frames change a result.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_ser.models.masking import lengths_to_mask, masked_mean


class MeanPooling(nn.Module):
    """Mean over each utterance's own frames: ``[B, T, D]`` -> ``[B, D]``."""

    def __init__(self, input_size: int):
        super().__init__()
        self.output_size = input_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, lengths_to_mask(lengths, x.shape[1]))


class AttentiveStatisticsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames.

    Frame scores come from a small MLP (``D -> attention_size -> 1``); a masked softmax over
    time weights the statistics. ``[B, T, D]`` -> ``[B, 2D]``.
    """

    def __init__(self, input_size: int, attention_size: int = 128):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(input_size, attention_size), nn.Tanh(), nn.Linear(attention_size, 1)
        )
        self.output_size = 2 * input_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, x.shape[1])
        scores = self.score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)  # [B, T, 1]
        x32 = x.float()  # statistics in float32 under any autocast dtype
        mean = (weights * x32).sum(dim=1)
        var = (weights * (x32 - mean.unsqueeze(1)) ** 2).sum(dim=1)
        return torch.cat([mean, torch.sqrt(var.clamp(min=1e-6))], dim=-1).to(x.dtype)


POOLINGS = ("mean", "attentive")


class EmotionHead(nn.Module):
    """Pooling over time, dropout and one linear layer to the emotion classes.

    The number of classes comes from the label set saved with the manifests, which a recipe
    reads after data preparation (after the YAML is loaded): pass ``n_classes`` here or call
    `set_num_classes` once before training.

    Args:
        input_size: encoder output size D.
        pooling: "mean" (Cai et al.) or "attentive" (attentive statistics).
        dropout: dropout before the linear layer.
        n_classes: number of classes, or None to set later.
        attention_size: hidden size of the attentive pooling's scorer.
    """

    def __init__(
        self,
        input_size: int,
        pooling: str = "mean",
        dropout: float = 0.0,
        n_classes=None,
        attention_size: int = 128,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")
        self._kwargs = dict(
            input_size=input_size, pooling=pooling, dropout=dropout, attention_size=attention_size
        )
        if pooling == "attentive":
            self.pooling = AttentiveStatisticsPooling(input_size, attention_size)
        else:
            self.pooling = MeanPooling(input_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = None
        self.n_classes = None
        if n_classes is not None:
            self.set_num_classes(n_classes)

    def set_num_classes(self, n_classes: int) -> None:
        """Creates the output layer (once; a different number later is an error)."""
        if self.classifier is not None:
            if n_classes != self.n_classes:
                raise ValueError(f"emotion head has {self.n_classes} classes, not {n_classes}")
            return
        self.n_classes = int(n_classes)
        self.classifier = nn.Linear(self.pooling.output_size, self.n_classes)

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this head (weights apart)."""
        return {**self._kwargs, "n_classes": self.n_classes}

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, T, D]``; lengths ``[B]`` frames. Returns: logits ``[B, n_classes]``."""
        if self.classifier is None:
            raise RuntimeError("EmotionHead.set_num_classes was never called")
        return self.classifier(self.dropout(self.pooling(x, lengths)))


class CTCHead(nn.Module):
    """One linear layer to the characters, as log-probabilities for CTC.

    Args: input_size D; n_tokens V (blank included). Forward: ``[B, T, D]`` -> ``[B, T, V]``.
    """

    def __init__(self, input_size: int, n_tokens: int, dropout: float = 0.0):
        super().__init__()
        self._kwargs = dict(input_size=input_size, n_tokens=n_tokens, dropout=dropout)
        self.n_tokens = n_tokens
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, n_tokens)

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this head (weights apart)."""
        return dict(self._kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 log-softmax: under bf16 / fp16 autocast the CTC loss needs its precision.
        return torch.log_softmax(self.linear(self.dropout(x)).float(), dim=-1)
