"""The emotion task with the transcript as a second view (README "Transcript as a second
view"): the emotion classes, loss and metrics of `EmotionTask` (UA / WA / macro-F1 and
checkpoint selection stay the emotion task's), with a `TextFusionHead` that fuses a text
encoder's view of the utterance's transcript with the pooled acoustic one.

Configured as the ``emotion`` task's kind::

    tasks:
      emotion: {kind: text_emotion, text_source: hypothesis, hypothesis_mix: 0.5,
                text_encoder: char, fusion: gated}

The transcript comes from ``text_source``:

- ``reference``: the manifest's transcript (``wrd``), in training and evaluation: an oracle
  upper bound, labelled "oracle" (`is_oracle`) in results.json (``text_view``, ``tasks``),
  predictions.csv, the recipe's closing summary, `mtl-ser report`'s rows, an export's model
  card and a note of `mtl-ser predict`. (An exported model has no reference: predict uses
  its own hypotheses.)
- ``hypothesis``: the CTC task's greedy transcript of the same forward pass (so the CTC task
  runs first: ``order`` 1). In training a share ``hypothesis_mix`` of the utterances gets
  the reference instead, drawn per utterance and epoch from the run's seed
  (`mtl_ser.data.pipelines.ItemSeeds.uniform`: no generator moves, so a resumed run draws
  as the uninterrupted one); evaluation uses hypotheses only.
"""

from __future__ import annotations

from dataclasses import dataclass

import speechbrain as sb

from mtl_ser.models.fusion import FUSIONS, TextFusionHead
from mtl_ser.tasks.base import TaskContext, TaskInputs, TaskLog
from mtl_ser.tasks.ctc import CTCTask
from mtl_ser.tasks.emotion import EmotionTask

TEXT_SOURCES = ("reference", "hypothesis")
# How outputs label each source: a reference transcript is an oracle the deployed model
# does not have.
TEXT_VIEWS = {"reference": "oracle", "hypothesis": "hypothesis"}
# How one-line outputs (a report row, a model card, predict) mark an oracle run.
ORACLE_MARK = "oracle text"
ORACLE_NOTE = (
    f"{ORACLE_MARK}: the emotion head was trained and tested on reference transcripts "
    "(text_source: reference), an upper bound; without a reference, predict feeds it the "
    "model's own greedy CTC transcripts, so expect less than its test figures"
)


def is_oracle(results: dict | None) -> bool:
    """Whether a run's results.json (as a dict; None: no results) says its emotion head
    read reference transcripts (``text_view`` "oracle ..."), an upper bound."""
    return str((results or {}).get("text_view") or "").startswith(TEXT_VIEWS["reference"])


def oracle_suffix(results: dict | None) -> str:
    """`` (oracle text)`` for an oracle run (`is_oracle`), else "": what a name gets."""
    return f" ({ORACLE_MARK})" if is_oracle(results) else ""


@dataclass
class TextEmotionTask(EmotionTask):
    """Args (besides `EmotionTask`'s):
    text_source: ``reference`` | ``hypothesis`` (see the module docstring).
    hypothesis_mix: with ``hypothesis``, the share of training utterances that get the
        reference transcript instead (0: hypotheses only; 1: references only).
    ctc_task: the name of the CTC task whose hypotheses are read.
    text_encoder: ``char`` | ``random:tiny-bert`` | a hub id or folder
        (`mtl_ser.models.text_encoder`).
    fusion: ``concat`` | ``gated`` | ``cross_attention`` (`mtl_ser.models.fusion`).
    text_size, fusion_size, fusion_heads, max_text_length: see `TextFusionHead`.
    """

    text_source: str = "hypothesis"
    hypothesis_mix: float = 0.0
    ctc_task: str = "ctc"
    text_encoder: str = "char"
    fusion: str = "concat"
    text_size: int = 64
    fusion_size: int = 64
    fusion_heads: int = 2
    max_text_length: int = 256

    order = 1  # after the CTC task, whose hypotheses it reads

    def __post_init__(self):
        super().__post_init__()
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source {self.text_source!r} is not one of {list(TEXT_SOURCES)}")
        if not 0.0 <= float(self.hypothesis_mix) <= 1.0:
            raise ValueError(f"hypothesis_mix must be in [0, 1], not {self.hypothesis_mix}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} is not one of {list(FUSIONS)}")
        self._texts: list[str] = []  # the last forward's transcripts (for the log)

    def check_with(self, tasks) -> None:
        if self.text_source != "hypothesis":
            return
        if not any(t.name == self.ctc_task and isinstance(t, CTCTask) for t in tasks):
            raise ValueError(
                f"tasks.{self.name}: text_source: hypothesis reads the CTC task "
                f"{self.ctc_task!r}, which this run lacks (alpha > 0 and `ctc: {{}}` in tasks; "
                "or text_source: reference)"
            )

    def build_head(self, context: TaskContext):
        super().build_head(context)  # class weights
        # The acoustic side as the hparams file's emotion head (pooling, layers, dropout).
        acoustic = context.hparams["emotion_head"].export_kwargs()
        acoustic.pop("n_classes")
        return TextFusionHead(
            n_classes=len(context.labels),
            text_encoder=self.text_encoder,
            fusion=self.fusion,
            text_size=self.text_size,
            fusion_size=self.fusion_size,
            fusion_heads=self.fusion_heads,
            max_text_length=self.max_text_length,
            **acoustic,
        )

    def run(self, head, hidden, lengths, layers, inputs: TaskInputs):
        self._texts = self.transcripts(inputs, lengths)
        return head(hidden, lengths, layers, texts=self._texts)  # [B, C] logits

    def transcripts(self, inputs: TaskInputs, lengths) -> list[str]:
        """One transcript per row of the batch (``inputs.rows``): see the module docstring.
        ``lengths``: ``[B']`` encoder frames (for greedy decoding)."""
        ids = list(inputs.batch.id)
        rows = inputs.rows.tolist()
        references = [inputs.batch.wrd[i] or "" for i in rows]
        if self.text_source == "reference":
            return references
        ctc = next(t for t in inputs.tasks if t.name == self.ctc_task)
        hypotheses = ctc.greedy(inputs.outputs[self.ctc_task], lengths)
        if inputs.stage != sb.Stage.TRAIN or self.hypothesis_mix == 0:
            return hypotheses
        if inputs.item_seeds is None:
            raise ValueError(
                "hypothesis_mix needs the training set's per-utterance draws (the dataset's "
                "item_seeds, attached by mtl_ser.data.pipelines.dataio_prep)"
            )
        return [
            ref if inputs.item_seeds.uniform(f"{ids[i]}:text_source") < self.hypothesis_mix else hyp
            for i, ref, hyp in zip(rows, references, hypotheses, strict=True)
        ]

    def new_log(self):
        return TranscriptLog(self, TEXT_VIEWS[self.text_source])

    def identity(self):
        return {**super().identity(), "text_view": self.text_view()}

    def text_view(self) -> str:
        """How results.json names the transcript the emotion head read."""
        if self.text_source == "reference":
            return "oracle (reference transcripts)"
        mix = f", {self.hypothesis_mix:g} of training utterances the reference"
        return f"hypothesis (greedy CTC transcripts{mix if self.hypothesis_mix else ''})"

    def describe(self):
        return {
            **super().describe(),
            "text_source": self.text_source,
            "text_view": TEXT_VIEWS[self.text_source],
            "hypothesis_mix": self.hypothesis_mix if self.text_source == "hypothesis" else None,
            "text_encoder": self.text_encoder,
            "fusion": self.fusion,
        }


class TranscriptLog(TaskLog):
    """The transcript the emotion head read for each evaluated utterance, and its source
    (predictions.csv's ``<task>_text`` and ``<task>_text_view``)."""

    def __init__(self, task: TextEmotionTask, view: str):
        self.task = task
        self.view = view
        self.texts: dict[str, str] = {}

    def add_batch(self, ids, output, targets):
        # Evaluation batches are not augmented: one transcript per utterance, in order.
        self.texts.update(zip(ids, self.task._texts, strict=True))

    def metrics(self):
        return {"num_utterances": len(self.texts)}

    def columns(self):
        return ["text", "text_view"]

    def row(self, utt):
        return [self.texts.get(utt, ""), self.view]
