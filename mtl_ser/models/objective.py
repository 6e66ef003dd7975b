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


CTC_REDUCTIONS = ("sum", "length_mean", "token_mean")


class MultiTaskObjective:
    """Cross-entropy on emotions plus alpha times CTC on characters.

    Args:
        alpha: CTC weight; 0 disables the CTC task entirely (its head is neither run nor
            trained), negative values are refused.
        blank_index: the CTC blank id.
        label_smoothing: cross-entropy label smoothing.
        ctc_reduction: how the per-utterance CTC losses ``NLL_i`` (negative log-likelihood of
            utterance i's transcript, over its true frames) make the batch's ``L_ctc``. An
            utterance without text (or cropped by ``max_len``) counts 0, and every sum is
            divided by the batch size ``B`` including such utterances, so that an
            utterance's weight never depends on how many of its neighbours have text:

            - ``"sum"``: ``ctc_sum_utterances * sum_i(NLL_i) / B``. With
              ``ctc_sum_utterances: 2`` this is the released Cai et al. code's scale
              (``F.ctc_loss(reduction="sum")`` over each device's batch of 2 utterances,
              averaged over 4 accumulation steps), whatever our batch size and accumulation;
              see the README's derivation. The default.
            - ``"length_mean"``: ``sum_i(NLL_i / L_i) / B`` with ``L_i`` the target length
              (PyTorch's ``reduction="mean"``; mtl-ser 0.1's only choice, ~100x smaller on
              IEMOCAP than the released scale).
            - ``"token_mean"``: ``sum_i NLL_i / sum_i L_i`` (per character of the batch's
              transcripts: by its definition a character's weight is 1 / the number of
              characters in its batch, so it does depend on the neighbours' transcripts).
        ctc_sum_utterances: the group size of ``"sum"``.
        ctc_zero_infinity: an infeasible alignment (transcript longer than the frames
            allow) counts as 0 instead of infinity (the released code: False, so such a
            batch gives an infinite loss, which the Brain then skips).

    The emotion loss is the mean cross-entropy over the batch. Both losses are computed in
    float32 whatever the autocast dtype.
    """

    def __init__(
        self,
        alpha: float,
        blank_index: int = 0,
        label_smoothing: float = 0.0,
        ctc_reduction: str = "sum",
        ctc_sum_utterances: int = 2,
        ctc_zero_infinity: bool = True,
    ):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if ctc_reduction not in CTC_REDUCTIONS:
            raise ValueError(
                f"ctc_reduction must be one of {list(CTC_REDUCTIONS)}, not {ctc_reduction!r}"
            )
        if int(ctc_sum_utterances) != ctc_sum_utterances or ctc_sum_utterances < 1:
            raise ValueError(
                f"ctc_sum_utterances must be an integer >= 1, not {ctc_sum_utterances}"
            )
        self.alpha = float(alpha)
        self.blank_index = blank_index
        self.label_smoothing = label_smoothing
        self.ctc_reduction = ctc_reduction
        self.ctc_sum_utterances = int(ctc_sum_utterances)
        self.ctc_zero_infinity = bool(ctc_zero_infinity)

    def describe(self) -> dict:
        """The settings that decide the CTC term's scale, for results.json (None without
        the CTC task, so that alpha = 0 runs compare whatever they were configured with)."""
        if not self.ctc_enabled:
            return {"ctc_reduction": None, "ctc_sum_utterances": None}
        sum_size = self.ctc_sum_utterances if self.ctc_reduction == "sum" else None
        return {"ctc_reduction": self.ctc_reduction, "ctc_sum_utterances": sum_size}

    @property
    def ctc_enabled(self) -> bool:
        return self.alpha > 0

    def emotion_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Args: logits ``[B, C]``; targets ``[B]`` class ids. Returns: mean CE (scalar)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

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
        batch_size = has_text.numel()  # with the utterances that have no text
        keep = has_text.nonzero().squeeze(-1)
        if keep.numel() == 0:
            # Still connected to the graph, so DDP sees a gradient (of 0) for the CTC head.
            return log_probs.float().sum() * 0.0
        # Only the utterances with text are scored: a cropped one keeps its full transcript,
        # which its shorter audio may not be able to align (inf without zero_infinity).
        per_utt = F.ctc_loss(
            log_probs[keep].transpose(0, 1).float(),
            tokens[keep],
            frame_lens[keep],
            token_lens[keep],
            blank=self.blank_index,
            reduction="none",
            zero_infinity=self.ctc_zero_infinity,
        )
        if self.ctc_reduction == "length_mean":
            return (per_utt / token_lens[keep].clamp(min=1)).sum() / batch_size
        if self.ctc_reduction == "token_mean":
            return per_utt.sum() / token_lens[keep].sum().clamp(min=1)
        return self.ctc_sum_utterances * per_utt.sum() / batch_size

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
