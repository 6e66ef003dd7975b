"""Fusion of the acoustic and the text view before the emotion classifier.

`Fusion` joins the acoustic side (frames ``[B, T, D]`` with a frame mask, and its pooled
``[B, P]``) with the text side (`mtl_ser.models.text_encoder.TextStates`):

- ``concat``: ``[pooled acoustic, pooled text]`` -> ``[B, P + H]``.
- ``gated``: both projected to F; a sigmoid gate from both decides, per unit, how much of
  each: ``g * a + (1 - g) * t`` -> ``[B, F]``.
- ``cross_attention``: the text tokens (queries) attend over the acoustic frames (keys and
  values), padding masked on both sides (padded frames are masked keys; padded tokens'
  outputs are left out of the mean over tokens); the mean over tokens is concatenated with
  the pooled acoustic vector -> ``[B, P + F]``. Tokens attend to frames, not the reverse:
  each word gathers how it was said, the transcript is the short side (few queries), and a
  hypothesis that is empty still has its [CLS] query, so the output stays defined, while
  frames attending over a lone [CLS] would all read the same value.

`TextFusionHead` is the emotion head of a run with the text view (the ``text_emotion``
task, `mtl_ser.tasks.text_emotion`): acoustic pooling (as `EmotionHead`), a text encoder,
a fusion and one linear layer to the classes.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_ser.models.heads import EmotionHead, _layer_input, set_num_classes
from mtl_ser.models.masking import lengths_to_mask, masked_mean
from mtl_ser.models.text_encoder import TextStates, build_text_encoder

FUSIONS = ("concat", "gated", "cross_attention")


class Fusion(nn.Module):
    """Args: kind (`FUSIONS`); acoustic_size D (frames); pooled_size P (the pooled acoustic
    vector: D, or 2D with attentive pooling); text_size H; size F (gated / cross_attention);
    heads (cross_attention's attention heads; F must be a multiple).

    ``output_size``: the fused vector's size."""

    def __init__(
        self,
        kind: str,
        acoustic_size: int,
        pooled_size: int,
        text_size: int,
        size: int = 64,
        heads: int = 2,
    ):
        super().__init__()
        if kind not in FUSIONS:
            raise ValueError(f"fusion {kind!r} is not one of {list(FUSIONS)}")
        self.kind = kind
        if kind == "concat":
            self.output_size = pooled_size + text_size
        elif kind == "gated":
            self.acoustic = nn.Linear(pooled_size, size)
            self.text = nn.Linear(text_size, size)
            self.gate = nn.Linear(pooled_size + text_size, size)
            self.output_size = size
        else:
            if size % heads:
                raise ValueError(f"fusion_size {size} is not a multiple of fusion_heads {heads}")
            self.query = nn.Linear(text_size, size)
            self.attention = nn.MultiheadAttention(
                size, heads, kdim=acoustic_size, vdim=acoustic_size, batch_first=True
            )
            self.output_size = pooled_size + size

    def forward(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        pooled: torch.Tensor,
        text: TextStates,
    ) -> torch.Tensor:
        """Args: frames ``[B, T, D]``; frame_mask ``[B, T]`` bool (real frames); pooled
        ``[B, P]``; text: the text encoder's output. Returns ``[B, output_size]``."""
        if self.kind == "concat":
            return torch.cat([pooled, text.pooled.to(pooled.dtype)], dim=-1)
        if self.kind == "gated":
            t = text.pooled.to(pooled.dtype)
            g = torch.sigmoid(self.gate(torch.cat([pooled, t], dim=-1)))
            return g * self.acoustic(pooled) + (1 - g) * self.text(t)
        queries = self.query(text.states.to(frames.dtype))
        attended, _ = self.attention(
            queries, frames, frames, key_padding_mask=~frame_mask, need_weights=False
        )
        return torch.cat([pooled, masked_mean(attended, text.mask)], dim=-1)


class TextFusionHead(nn.Module):
    """The emotion head with the transcript as a second view.

    Args:
        input_size: encoder output size D.
        n_classes: number of emotion classes (or None: `set_num_classes` later).
        text_encoder: ``char``, ``random:tiny-bert``, a hub id / folder, or a built Hugging
            Face model's parts (`mtl_ser.models.text_encoder.HFTextEncoder`).
        fusion: one of `FUSIONS`.
        text_size: the ``char`` encoder's hidden size.
        fusion_size: F of gated / cross_attention.
        fusion_heads: cross_attention's heads.
        max_text_length: tokens per transcript at most.
        pooling, dropout, attention_size, layers, num_layers: the acoustic side, as
            `EmotionHead` (dropout applies to the fused vector).
    """

    reads_text = True  # forward takes the transcripts (predict passes its own hypotheses)

    def __init__(
        self,
        input_size: int,
        n_classes=None,
        text_encoder="char",
        fusion: str = "concat",
        text_size: int = 64,
        fusion_size: int = 64,
        fusion_heads: int = 2,
        max_text_length: int = 256,
        pooling: str = "mean",
        dropout: float = 0.0,
        attention_size: int = 128,
        layers: str = "last",
        num_layers: int | None = None,
    ):
        super().__init__()
        # The acoustic pooling only (no classifier of its own: n_classes None).
        self.acoustic = EmotionHead(
            input_size,
            pooling=pooling,
            attention_size=attention_size,
            layers=layers,
            num_layers=num_layers,
        )
        self.text = build_text_encoder(text_encoder, text_size, max_text_length)
        self.fusion = Fusion(
            fusion,
            input_size,
            self.acoustic.pooling.output_size,
            self.text.output_size,
            fusion_size,
            fusion_heads,
        )
        self.dropout = nn.Dropout(dropout)
        acoustic_kwargs = self.acoustic.export_kwargs()
        self._kwargs = dict(
            input_size=input_size,
            text_encoder=text_encoder,
            fusion=fusion,
            text_size=text_size,
            fusion_size=fusion_size,
            fusion_heads=fusion_heads,
            max_text_length=max_text_length,
            pooling=pooling,
            dropout=dropout,
            attention_size=attention_size,
            layers=layers,
            num_layers=acoustic_kwargs["num_layers"],
        )
        self.classifier = None
        self.n_classes = None
        if n_classes is not None:
            self.set_num_classes(n_classes)

    def set_num_classes(self, n_classes: int) -> None:
        """Creates the output layer (once; a different number later is an error)."""
        set_num_classes(self, n_classes, self.fusion.output_size)

    @property
    def layer_sum(self):
        """The acoustic side's weighted layer sum or None (the encoder cache's plan reads
        which heads need the hidden layers)."""
        return self.acoustic.layer_sum

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this head (weights apart; a Hugging Face text
        encoder as its config and tokenizer, no download)."""
        return {
            **self._kwargs,
            "text_encoder": self.text.export_source(),
            "n_classes": self.n_classes,
        }

    def pooled(self, x: torch.Tensor, lengths: torch.Tensor, layers=None) -> torch.Tensor:
        """The acoustic utterance vectors ``[B, P]`` (the text is not part of them)."""
        return self.acoustic.pooled(x, lengths, layers)

    def fused(self, x, lengths, layers=None, texts=None) -> torch.Tensor:
        """The fused vectors ``[B, output_size]`` the classifier reads (args as `forward`)."""
        if texts is None or len(texts) != x.shape[0]:
            got = "none" if texts is None else len(texts)
            raise ValueError(
                f"the text-fusion emotion head needs one transcript per utterance "
                f"({x.shape[0]}), got {got}"
            )
        frames = _layer_input(self.acoustic.layer_sum, x, layers)
        frame_mask = lengths_to_mask(lengths, frames.shape[1])
        pooled = self.acoustic.pooling(frames, lengths)
        return self.fusion(frames, frame_mask, pooled, self.text(list(texts)))

    def forward(self, x, lengths, layers=None, texts=None) -> torch.Tensor:
        """Args: x ``[B, T, D]``; lengths ``[B]`` frames; layers: the encoder's hidden
        layers (with ``layers="weighted"``); texts: B transcripts (strings).

        Returns: logits ``[B, n_classes]``.
        """
        if self.classifier is None:
            raise RuntimeError("TextFusionHead.set_num_classes was never called")
        return self.classifier(self.dropout(self.fused(x, lengths, layers, texts)))
