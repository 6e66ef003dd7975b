"""The CTC character task: today's CTC head (the hparams file's ``ctc_head``) and the CTC
loss of `MultiTaskObjective` (its reduction, scale and per-utterance rule); its weight is
``alpha``; WER / CER (`PredictionLog`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from speechbrain.decoders.ctc import ctc_greedy_decode

from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.tasks.base import Task


@dataclass
class CTCTask(Task):
    """Characters of the manifest's ``wrd`` (the batch's ``tokens`` and ``ctc_mask``).

    Args (besides ``name`` and ``weight``, which is ``alpha``): ``vocab`` (the
    `CharVocabulary`), ``ctc_reduction``, ``ctc_sum_utterances``, ``ctc_zero_infinity``
    (see `MultiTaskObjective`).
    """

    vocab: object = None
    ctc_reduction: str = "sum"
    ctc_sum_utterances: int = 2
    ctc_zero_infinity: bool = True

    def __post_init__(self):
        self.head_module = "ctc_head"
        self.objective = MultiTaskObjective(
            self.weight,
            blank_index=self.vocab.blank_index,
            ctc_reduction=self.ctc_reduction,
            ctc_sum_utterances=self.ctc_sum_utterances,
            ctc_zero_infinity=self.ctc_zero_infinity,
        )

    @property
    def loss_key(self) -> str:
        return "ctc"

    @property
    def display(self) -> str:
        return "CTC"

    def check_head(self, head):
        if head.n_tokens != len(self.vocab):
            raise ValueError(
                f"ctc_head has {head.n_tokens} outputs but the character vocabulary has "
                f"{len(self.vocab)} symbols"
            )

    def identity(self):
        return self.objective.describe()

    def forward(self, head, hidden, lengths, layers):
        return head(hidden, layers)  # [B, T, V] log-probabilities

    def targets(self, batch):
        tokens, token_rel = batch.tokens
        token_lens = torch.round(token_rel * tokens.shape[1]).long()
        return tokens, token_lens, batch.ctc_mask.data.squeeze(-1)

    def loss(self, output, targets, frame_lens):
        tokens, token_lens, mask = targets
        return self.objective.ctc_loss(output, frame_lens, tokens, token_lens, mask)

    def greedy(self, log_probs: torch.Tensor, frame_lens: torch.Tensor) -> list[str]:
        """Greedy decoding of ``[B, T, V]`` log-probabilities with ``[B]`` frame counts."""
        rel = frame_lens.float() / log_probs.shape[1]
        ids = ctc_greedy_decode(log_probs, rel, blank_id=self.vocab.blank_index)
        return [self.vocab.decode(seq) for seq in ids]

    def prediction_fields(self, output, targets, frame_lens):
        return {"hypotheses": self.greedy(output, frame_lens)}

    def metric_values(self, metrics):
        return {k: metrics[k] for k in ("wer", "cer", "wer_improvised", "cer_improvised")}

    def describe(self):
        return {**super().describe(), **self.objective.describe()}
