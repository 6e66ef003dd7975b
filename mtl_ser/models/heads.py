"""The task heads shared by every recipe: emotion classification and CTC characters.

Both take encoder output ``[B, T, D]`` with true frame counts ``[B]`` and never let padded
frames change a result. Either can read, instead of the encoder's output, a learned
softmax-weighted sum of all its hidden layers (``layers="weighted"``, as in SUPERB): then it
also takes the encoder's ``layers`` (`mtl_ser.models.outputs.EncoderOutput`).
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
LAYER_CHOICES = ("last", "weighted")


class WeightedLayerSum(nn.Module):
    """Learned softmax-weighted sum of hidden layers: L x ``[B, T, D]`` -> ``[B, T, D]``.

    The raw weights start equal (uniform mixture); softmax makes the mixture convex. The
    weights and the softmax are float32 whatever the activations' dtype.

    Args: num_layers L (the encoder's ``num_layers``).
    """

    def __init__(self, num_layers: int):
        super().__init__()
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = int(num_layers)
        self.weights = nn.Parameter(torch.zeros(self.num_layers))

    def mixture(self) -> torch.Tensor:
        """The layer weights after softmax, ``[L]`` float32 (they sum to 1)."""
        return torch.softmax(self.weights.float(), dim=0)

    def forward(self, layers) -> torch.Tensor:
        if layers is None or len(layers) != self.num_layers:
            got = "none" if layers is None else len(layers)
            raise ValueError(
                f"the weighted layer sum expects {self.num_layers} hidden layers, got {got} "
                "(an encoder without hidden layers, or layerdrop > 0 skipping some)"
            )
        weights = self.mixture()
        out = layers[0].float() * weights[0]
        for w, layer in zip(weights[1:], layers[1:], strict=True):
            out = out + w * layer.float()
        return out.to(layers[-1].dtype)


def _layer_input(layer_sum, x: torch.Tensor, layers) -> torch.Tensor:
    """The head's input: the weighted sum of ``layers`` if it has one, else ``x``."""
    return x if layer_sum is None else layer_sum(layers)


def _make_layer_sum(layers: str, num_layers) -> WeightedLayerSum | None:
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers {layers!r} is not one of {list(LAYER_CHOICES)}")
    if layers == "last":
        return None
    if num_layers is None:
        raise ValueError('layers="weighted" needs num_layers (the encoder\'s num_layers)')
    return WeightedLayerSum(num_layers)


def set_num_classes(head: nn.Module, n_classes: int, input_size: int) -> None:
    """Gives an emotion head (`EmotionHead`, the text-fusion head) its output layer
    ``head.classifier`` (``input_size`` -> ``n_classes``) once; the same number again is a
    no-op, a different one a ValueError."""
    if head.classifier is not None:
        if n_classes != head.n_classes:
            raise ValueError(f"emotion head has {head.n_classes} classes, not {n_classes}")
        return
    head.n_classes = int(n_classes)
    head.classifier = nn.Linear(input_size, head.n_classes)


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
        layers: "last" (the encoder's output) or "weighted" (a learned weighted sum of all
            its hidden layers).
        num_layers: the encoder's number of hidden layers (with "weighted").
    """

    reads_text = False  # the text-fusion head (mtl_ser.models.fusion) reads transcripts

    def __init__(
        self,
        input_size: int,
        pooling: str = "mean",
        dropout: float = 0.0,
        n_classes=None,
        attention_size: int = 128,
        layers: str = "last",
        num_layers: int | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")
        self.layer_sum = _make_layer_sum(layers, num_layers)
        self._kwargs = dict(
            input_size=input_size,
            pooling=pooling,
            dropout=dropout,
            attention_size=attention_size,
            layers=layers,
            num_layers=None if self.layer_sum is None else self.layer_sum.num_layers,
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
        set_num_classes(self, n_classes, self.pooling.output_size)

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this head (weights apart)."""
        return {**self._kwargs, "n_classes": self.n_classes}

    def pooled(self, x: torch.Tensor, lengths: torch.Tensor, layers=None) -> torch.Tensor:
        """The utterance vectors the classifier reads: ``[B, P]`` (P = D, or 2D when
        attentive). Args as `forward`."""
        return self.pooling(_layer_input(self.layer_sum, x, layers), lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layers=None) -> torch.Tensor:
        """Args: x ``[B, T, D]``; lengths ``[B]`` frames; layers: the encoder's hidden
        layers (L x ``[B, T, D]``; needed with ``layers="weighted"``).

        Returns: logits ``[B, n_classes]``.
        """
        if self.classifier is None:
            raise RuntimeError("EmotionHead.set_num_classes was never called")
        return self.classifier(self.dropout(self.pooled(x, lengths, layers)))


class CTCHead(nn.Module):
    """One linear layer to the characters, as log-probabilities for CTC.

    Args: input_size D; n_tokens V (blank included); dropout; layers and num_layers as for
    `EmotionHead`. Forward: ``[B, T, D]`` (+ layers) -> ``[B, T, V]``.
    """

    def __init__(
        self,
        input_size: int,
        n_tokens: int,
        dropout: float = 0.0,
        layers: str = "last",
        num_layers: int | None = None,
    ):
        super().__init__()
        self.layer_sum = _make_layer_sum(layers, num_layers)
        self._kwargs = dict(
            input_size=input_size,
            n_tokens=n_tokens,
            dropout=dropout,
            layers=layers,
            num_layers=None if self.layer_sum is None else self.layer_sum.num_layers,
        )
        self.n_tokens = n_tokens
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, n_tokens)

    def set_num_tokens(self, n_tokens: int) -> None:
        """Sizes the output layer for a vocabulary of ``n_tokens`` symbols (blank included):
        rebuilt (freshly initialised) when it differs; call before the optimiser is made."""
        if int(n_tokens) != self.n_tokens:
            self.n_tokens = self._kwargs["n_tokens"] = int(n_tokens)
            self.linear = nn.Linear(self.linear.in_features, self.n_tokens)

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this head (weights apart)."""
        return dict(self._kwargs)

    def forward(self, x: torch.Tensor, layers=None) -> torch.Tensor:
        """Args: x ``[B, T, D]``; layers as for `EmotionHead`. Returns ``[B, T, V]``
        log-probabilities in float32 (under bf16 / fp16 autocast the CTC loss needs them)."""
        x = _layer_input(self.layer_sum, x, layers)
        return torch.log_softmax(self.linear(self.dropout(x)).float(), dim=-1)
