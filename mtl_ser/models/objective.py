"""The multi-task objective ``L = L_emo + alpha * L_ctc`` (Cai et al., 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Losses:
    """Each task's loss and their weighted sum (all scalar tensors; ``ctc`` None if off)."""

    total: torch.Tensor
    emo: torch.Tensor
    ctc: torch.Tensor | None


class MultiTaskObjective:
    """Cross-entropy on emotions plus alpha times CTC on characters.

    Args:
        alpha: CTC weight; 0 disables the CTC task entirely (its head is neither run nor
            trained), negative values are refused.
        blank_index: the CTC blank id.
        label_smoothing: cross-entropy label smoothing.

    CTC uses each utterance's true frame count as input length and averages the
    per-utterance losses divided by their target lengths (PyTorch's ``reduction="mean"``)
    over the utterances that have text; infeasible alignments count as zero
    (``zero_infinity``).
    """

    def __init__(self, alpha: float, blank_index: int = 0, label_smoothing: float = 0.0):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.blank_index = blank_index
        self.label_smoothing = label_smoothing

    @property
    def ctc_enabled(self) -> bool:
        return self.alpha > 0

    def emotion_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Args: logits ``[B, C]``; targets ``[B]`` class ids. Returns: mean CE (scalar)."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def ctc_loss(
        self,
        log_probs: torch.Tensor,
        frame_lens: torch.Tensor,
        tokens: torch.Tensor,
        token_lens: torch.Tensor,
        has_text: torch.Tensor,
    ) -> torch.Tensor:
        """CTC over the utterances with text.

        Args:
            log_probs: ``[B, T, V]`` log-probabilities.
            frame_lens: ``[B]`` true frame counts (not the padded T).
            tokens: ``[B, S]`` padded target ids.
            token_lens: ``[B]`` target lengths.
            has_text: ``[B]`` bool; utterances without text do not contribute.

        Returns: scalar; exactly 0 (still connected to the graph) when no utterance has text.
        """
        per_utt = F.ctc_loss(
            log_probs.transpose(0, 1).float(),
            tokens,
            frame_lens,
            token_lens,
            blank=self.blank_index,
            reduction="none",
            zero_infinity=True,
        )
        per_utt = per_utt / token_lens.clamp(min=1).to(per_utt.dtype)
        weights = has_text.to(per_utt.dtype)
        # Multiplying keeps the graph (and DDP's gradient bookkeeping) when no text is present.
        return (per_utt * weights).sum() / weights.sum().clamp(min=1)

    def __call__(
        self,
        emo_logits: torch.Tensor,
        emo_targets: torch.Tensor,
        ctc_log_probs: torch.Tensor | None = None,
        frame_lens: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        token_lens: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
    ) -> Losses:
        """Returns the `Losses` of a batch (see the two task methods for shapes)."""
        emo = self.emotion_loss(emo_logits, emo_targets)
        if not self.ctc_enabled:
            return Losses(total=emo, emo=emo, ctc=None)
        if ctc_log_probs is None:
            raise ValueError(f"alpha = {self.alpha} needs the CTC head's output")
        ctc = self.ctc_loss(ctc_log_probs, frame_lens, tokens, token_lens, has_text)
        return Losses(total=emo + self.alpha * ctc, emo=emo, ctc=ctc)
