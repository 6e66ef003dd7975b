"""A speaker attribute (any categorical manifest column, e.g. ``gender``) as an auxiliary
classification task: a pooled head, cross-entropy over the utterances whose value is one of
the training split's classes (the others are skipped, weight 1 / B each as CTC), and
accuracy / UA / macro-F1."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mtl_ser.metrics import classification_metrics
from mtl_ser.tasks.base import Task, TaskContext, TaskLog, batch_column, masked_mean_loss
from mtl_ser.tasks.heads_common import pooled_head


@dataclass
class SpeakerAttributeTask(Task):
    """Args (besides ``name`` and ``weight``): ``column``: the manifest column (default: the
    task's name); ``classes``: its values in order (default: the training split's sorted
    values)."""

    column: str | None = None
    classes: tuple | None = None
    counts: list | None = field(default=None, init=False)

    def __post_init__(self):
        self.column = self.column or self.name
        self.head_module = f"{self.name}_head"
        self.columns = (self.column,)

    def build_head(self, context: TaskContext):
        if self.classes is None:
            if context.train_records is None:
                raise ValueError(f"task {self.name}: classes not given and no training manifest")
            values = {r.get(self.column) for r in context.train_records.values()}
            self.classes = tuple(sorted(str(v) for v in values if v not in (None, "")))
        self.classes = tuple(self.classes)
        if len(self.classes) < 2:
            raise ValueError(
                f"task {self.name}: the training manifest's column {self.column!r} has "
                f"{len(self.classes)} value(s) {list(self.classes)}; a classification task "
                "needs at least 2"
            )
        return pooled_head(context, len(self.classes))

    def forward(self, head, hidden, lengths, layers):
        return head(hidden, lengths, layers)  # [B, C] logits

    def targets(self, batch):
        columns = {self.column: batch_column(batch, self.column)}
        return self.column_targets(columns, batch.emo_encoded.data.device)

    def column_targets(self, columns: dict, device=None):
        """Targets from manifest values: ``{column: [B] values}`` -> (class indices ``[B]``,
        -1 for a value outside the classes; mask ``[B]``)."""
        index = {c: i for i, c in enumerate(self.classes)}
        ids = [index.get(v, -1) for v in columns[self.column]]
        target = torch.tensor(ids, dtype=torch.long, device=device)
        return target, target >= 0

    @classmethod
    def from_export_info(cls, name: str, info: dict) -> SpeakerAttributeTask:
        """The task of an exported model (its `export_info`; a model exported before the
        column was saved reads the column named as the task), for scoring (evaluate)."""
        return cls(name=name, column=info.get("column"), classes=tuple(info["classes"]))

    def loss(self, output, targets, frame_lens):
        target, mask = targets
        per_utt = F.cross_entropy(output.float(), target.clamp(min=0), reduction="none")
        return masked_mean_loss(per_utt, mask)

    def new_log(self):
        return AttributeLog(self.classes)

    def export_info(self):
        return {
            "kind": "speaker_attribute",
            "classes": list(self.classes),
            "column": self.column,
        }

    @staticmethod
    def window_values(output):
        return torch.softmax(output.float(), dim=-1)

    def describe(self):
        return {**super().describe(), "column": self.column, "classes": list(self.classes)}


class AttributeLog(TaskLog):
    def __init__(self, classes: tuple[str, ...]):
        self.classes = classes
        self.rows: dict[str, tuple[int, int]] = {}

    def add_batch(self, ids, output, targets):
        target, _ = targets
        predicted = output.detach().argmax(dim=-1).cpu()
        for utt, t, p in zip(ids, target.cpu(), predicted, strict=True):
            self.rows[utt] = (int(t), int(p))

    def metrics(self) -> dict:
        scored = [(t, p) for t, p in self.rows.values() if t >= 0]
        if not scored:
            return {"accuracy": None, "ua": None, "macro_f1": None, "num_utterances": 0}
        m = classification_metrics([t for t, _ in scored], [p for _, p in scored], self.classes)
        return {
            "accuracy": m["wa"],
            "ua": m["ua"],
            "macro_f1": m["macro_f1"],
            "num_utterances": m["num_utterances"],
        }

    def columns(self):
        return ["true", "predicted"]

    def row(self, utt):
        t, p = self.rows.get(utt, (-1, -1))
        return ["" if t < 0 else self.classes[t], "" if p < 0 else self.classes[p]]
