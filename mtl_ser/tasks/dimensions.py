"""Dimensional emotion: arousal / valence / dominance regression with a CCC loss.

Targets are the manifest's numeric columns (``arousal``, ``valence``, ``dominance`` by
default: MSP-Podcast's, IEMOCAP's annotators' means, a CSV corpus's columns); an utterance
missing any of them is skipped. Loss: ``1 - CCC`` per dimension over the batch's utterances
with targets, averaged over the dimensions, times (utterances with targets) / B, so a batch
with fewer targets weighs less (CCC is a statistic of a set: below 2 utterances it is 0).
Metrics: CCC, Pearson's r and MAE per dimension, and ``ccc_mean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mtl_ser.tasks.base import Task, TaskContext, TaskLog, batch_column
from mtl_ser.tasks.heads_common import pooled_head

DIMENSIONS = ("arousal", "valence", "dominance")


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient per column: ``[N, K]`` x2 -> ``[K]``."""
    mp, mt = pred.mean(0), target.mean(0)
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


def _number(value) -> float:
    """A manifest value as a float; NaN when missing (None, "" or not a number)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


@dataclass
class DimensionsTask(Task):
    """Args (besides ``name`` and ``weight``): ``dimensions``: the manifest columns."""

    dimensions: tuple = DIMENSIONS

    def __post_init__(self):
        self.dimensions = tuple(self.dimensions)
        self.head_module = f"{self.name}_head"
        self.columns = self.dimensions

    def build_head(self, context: TaskContext):
        return pooled_head(context, len(self.dimensions))

    def forward(self, head, hidden, lengths, layers):
        return head(hidden, lengths, layers).float()  # [B, K]

    def targets(self, batch):
        columns = {d: batch_column(batch, d) for d in self.dimensions}
        return self.column_targets(columns, batch.emo_encoded.data.device)

    def column_targets(self, columns: dict, device=None):
        """Targets from manifest values: ``{dimension: [B] values}`` -> (values ``[B, K]``
        float32, NaN where missing; mask ``[B]``: every dimension given)."""
        values = torch.tensor(
            [[_number(x) for x in columns[d]] for d in self.dimensions], dtype=torch.float32
        ).T  # [B, K]
        values = values.to(device)
        return values, torch.isfinite(values).all(dim=1)

    @classmethod
    def from_export_info(cls, name: str, info: dict) -> DimensionsTask:
        """The task of an exported model (its `export_info`), for scoring (evaluate)."""
        return cls(name=name, dimensions=tuple(info["dimensions"]))

    def loss(self, output, targets, frame_lens):
        values, mask = targets
        n = int(mask.sum())
        if n < 2:
            return output.sum() * 0.0  # connected to the graph (DDP sees the head)
        per_dim = 1.0 - ccc(output[mask], values[mask])
        return per_dim.mean() * n / output.shape[0]

    def new_log(self):
        return DimensionsLog(self.dimensions)

    def export_info(self):
        return {"kind": "dimensions", "dimensions": list(self.dimensions)}

    @staticmethod
    def window_values(output):
        return output.float()

    def describe(self):
        return {**super().describe(), "dimensions": list(self.dimensions)}


class DimensionsLog(TaskLog):
    def __init__(self, dimensions: tuple[str, ...]):
        self.dimensions = dimensions
        self.pred: dict[str, list[float]] = {}
        self.true: dict[str, list[float]] = {}

    def add_batch(self, ids, output, targets):
        values, _ = targets
        for utt, p, t in zip(ids, output.detach().float().cpu(), values.cpu(), strict=True):
            self.pred[utt] = [round(float(x), 6) for x in p]
            self.true[utt] = [float(x) for x in t]

    def metrics(self) -> dict:
        scored = [u for u in self.pred if all(math.isfinite(x) for x in self.true[u])]
        out: dict = {"num_utterances": len(scored)}
        if len(scored) < 2:
            out.update({f"{m}_{d}": None for d in self.dimensions for m in ("ccc", "pearson")})
            out.update({f"mae_{d}": None for d in self.dimensions})
            out["ccc_mean"] = None
            return out
        pred = torch.tensor([self.pred[u] for u in scored], dtype=torch.float64)
        true = torch.tensor([self.true[u] for u in scored], dtype=torch.float64)
        cccs = ccc(pred, true)
        for k, d in enumerate(self.dimensions):
            r = np.corrcoef(pred[:, k].numpy(), true[:, k].numpy())[0, 1]
            out[f"ccc_{d}"] = float(cccs[k])
            out[f"pearson_{d}"] = None if not np.isfinite(r) else float(r)
            out[f"mae_{d}"] = float((pred[:, k] - true[:, k]).abs().mean())
        out["ccc_mean"] = float(cccs.mean())
        return out

    def columns(self):
        return [f"{kind}_{d}" for d in self.dimensions for kind in ("true", "pred")]

    def row(self, utt):
        cells = []
        for k in range(len(self.dimensions)):
            true = self.true[utt][k] if utt in self.true else math.nan
            cells += [
                "" if not math.isfinite(true) else true,
                self.pred.get(utt, [""] * len(self.dimensions))[k],
            ]
        return cells
