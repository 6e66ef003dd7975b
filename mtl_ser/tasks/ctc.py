"""The CTC character task: today's CTC head (the hparams file's ``ctc_head``) and the CTC
loss of `MultiTaskObjective` (its reduction, scale and per-utterance rule); its weight is
``alpha``; WER / CER (`PredictionLog`) of greedy decoding, and at the test pass also of the
configured decoder (``wer_beam`` / ``wer_beam_lm``, `mtl_ser.decoding`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import speechbrain as sb
import torch

from mtl_ser.decoding import CTCDecoder, DecoderConfig, decoding_spec, greedy_decode
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.tasks.base import Task


@dataclass
class CTCTask(Task):
    """Characters of the manifest's ``wrd`` (the batch's ``tokens`` and ``ctc_mask``).

    Args (besides ``name`` and ``weight``, which is ``alpha``): ``vocab`` (the
    `CharVocabulary`), ``ctc_reduction``, ``ctc_sum_utterances``, ``ctc_zero_infinity``
    (see `MultiTaskObjective`), ``decoding`` (the `DecoderConfig` of the test pass; greedy
    decoding is always scored as well).
    """

    vocab: object = None
    ctc_reduction: str = "sum"
    ctc_sum_utterances: int = 2
    ctc_zero_infinity: bool = True
    decoding: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self):
        self.head_module = "ctc_head"
        self.objective = MultiTaskObjective(
            self.weight,
            blank_index=self.vocab.blank_index,
            ctc_reduction=self.ctc_reduction,
            ctc_sum_utterances=self.ctc_sum_utterances,
            ctc_zero_infinity=self.ctc_zero_infinity,
        )
        self._decoder = None  # built at the first test pass (an LM loads once)
        self._testing = False

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
        return greedy_decode(log_probs, frame_lens, self.vocab)

    def start_stage(self, stage):
        # Validation decodes greedily (speed); the test pass adds the configured decoder.
        self._testing = stage == sb.Stage.TEST and self.decoding.ctc_decoding != "greedy"
        if self._testing and self._decoder is None:
            self._decoder = CTCDecoder(self.decoding, self.vocab)

    def prediction_fields(self, output, targets, frame_lens):
        fields = {"hypotheses": self.greedy(output, frame_lens)}
        if self._testing:
            fields["decoded"] = {self._decoder.name: self._decoder(output, frame_lens)}
        return fields

    def metric_values(self, metrics):
        """``wer`` / ``cer`` (greedy), their ``_improvised`` variants, and ``wer_<decoder>``
        / ``cer_<decoder>`` (+ ``_improvised``) of the test pass's other decoder."""
        names = ("wer", "cer", "wer_improvised", "cer_improvised")
        out = {k: metrics[k] for k in names}
        out.update({k: v for k, v in metrics.items() if k.startswith(("wer_", "cer_"))})
        return out

    def model_spec_entries(self):
        # predict / evaluate transcribe with the configured decoder (greedy: nothing added).
        spec = decoding_spec(self.decoding)
        return {} if spec is None else {"decoding": spec}

    def describe(self):
        return {
            **super().describe(),
            **self.objective.describe(),
            "decoding": self.decoding.describe(),
        }
