"""The task interface: a head, its targets from the manifest / batch, its loss, its metrics
and its weight. The Brain loops over the configured tasks and never names one.

A task's life in a run:

- ``build_head(context)``: the head module (or None when the hparams file already holds it
  under ``head_module``, as the emotion and CTC heads); ``context`` is a `TaskContext`.
- ``forward(head, hidden, lengths, layers)``: the head's output for a batch. The Brain
  calls ``run(head, hidden, lengths, layers, inputs)``, which by default is ``forward``; a
  task that reads more than the encoder's output (the batch, the stage, an earlier task's
  output: the text view reads the CTC task's hypotheses) overrides ``run`` and reads the
  `TaskInputs`. Tasks run in ascending ``order`` (0 by default; ties in the configured
  order), so a task reading another's output sets a larger one.
- ``targets(batch)``: a tuple of tensors ``[B, ...]`` (the first dimension the batch's), the
  last one a bool mask ``[B]`` of the utterances that have targets; augmented copies of a
  batch get them replicated.
- ``loss(output, targets, frame_lens)``: a scalar. Utterances without targets are skipped
  with the per-utterance rule of `masked_mean_loss`: each utterance's weight is 1 / B (B the
  whole batch), whatever its neighbours have.
- ``new_log()`` / ``TaskLog``: collects the predictions of an evaluation pass and scores them
  (``metrics()``), for the tasks whose metrics are not those of the emotion / CTC
  `PredictionLog` (``new_log`` returns None for those and ``prediction_fields`` feeds it).
- ``metric_values(metrics)``: the task's metrics by name from `PredictionLog.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Metrics that are better when lower (checkpoint selection and early stopping minimise them).
LOWER_IS_BETTER = ("wer", "cer", "mae", "loss")


def lower_is_better(metric: str) -> bool:
    """Whether a task metric's name (``wer``, ``mae_arousal``, ``cer_beam``; not
    ``task/metric``) starts with one of `LOWER_IS_BETTER`."""
    return any(metric.startswith(m) for m in LOWER_IS_BETTER)


@dataclass
class TaskContext:
    """What a task may read when it builds its head: ``hparams`` (the loaded hparams),
    ``encoder_dim`` D and ``encoder_layers`` L of the shared encoder, ``train_records``
    (the training manifest's records ``{id: record}``, or None when there is none),
    ``labels`` (the emotion classes in their order)."""

    hparams: dict
    labels: tuple[str, ...] | None = None
    encoder_dim: int | None = None
    encoder_layers: int | None = None
    train_records: dict | None = None


@dataclass
class TaskInputs:
    """What `Task.run` may read besides the encoder's output: ``batch`` (the padded batch,
    with ``id``, ``wrd``, ...), ``stage`` (`speechbrain.Stage`), ``tasks`` (the run's
    tasks), ``outputs`` (the outputs of the tasks run so far, by name), ``rows``
    (``[B']`` long: each row's utterance index in the batch; B' > B when batch augmentation
    added copies) and ``item_seeds`` (the training set's per-utterance draws,
    `mtl_ser.data.pipelines.ItemSeeds`, or None)."""

    batch: object
    stage: object
    tasks: list
    outputs: dict
    rows: torch.Tensor
    item_seeds: object = None


def batch_column(batch, column: str) -> list[str]:
    """A task's manifest column in a batch: one string per utterance ("" when missing);
    the data pipeline passes every column of ``Task.columns`` (`column_key`)."""
    return list(getattr(batch, f"column_{column}"))


def masked_mean_loss(per_utt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The batch loss of per-utterance losses where only some utterances have targets.

    Args: per_utt ``[B]`` float (any value where ``mask`` is False); mask ``[B]`` bool.

    Returns: ``sum_{i: mask_i} per_utt_i / B`` (a scalar): an utterance's weight is 1 / B
    whatever its neighbours have, so a batch with fewer targets does not give each one more
    weight. Exactly 0, still connected to the graph, when no utterance has targets (DDP then
    sees a gradient of 0 for the head).
    """
    kept = torch.where(mask, per_utt, torch.zeros_like(per_utt))
    return kept.sum() / max(per_utt.shape[0], 1)


class TaskLog:
    """The predictions of one task over an evaluation pass (the base of the logs of tasks
    that `PredictionLog` does not score itself)."""

    def add_batch(self, ids: list[str], output: torch.Tensor, targets: tuple) -> None:
        raise NotImplementedError

    def metrics(self) -> dict:
        """The task's metrics (JSON-serialisable; None where there was nothing to score)."""
        raise NotImplementedError

    def columns(self) -> list[str]:
        """The predictions.csv columns this task adds."""
        raise NotImplementedError

    def row(self, utt: str) -> list:
        """This task's predictions.csv cells of utterance ``utt`` (columns' order)."""
        raise NotImplementedError


@dataclass
class Task:
    """The base of every task (see the module docstring).

    Args:
        name: the task's name in the configuration, losses and metrics (``tasks:`` key).
        weight: the task's fixed weight in the total loss.
    """

    name: str
    weight: float = 1.0
    # Set by subclasses: the modules key of the head, and the manifest columns the task
    # reads (passed through the data pipeline as static keys).
    head_module: str = field(default="", init=False)
    columns: tuple[str, ...] = field(default=(), init=False)

    @property
    def loss_key(self) -> str:
        """The key of the task's loss in stage sums and logs (``loss_<loss_key>``)."""
        return self.name

    @property
    def display(self) -> str:
        """How progress lines name the task."""
        return self.name

    def build_head(self, context: TaskContext) -> torch.nn.Module | None:
        return None

    def check_with(self, tasks: list) -> None:
        """Raises ValueError when the task cannot run beside the configured ``tasks`` (e.g.
        a task reading another's output that is not configured)."""

    def check_head(self, head: torch.nn.Module) -> None:
        """Raises ValueError when ``head`` does not fit the task (e.g. its output size)."""

    def identity(self) -> dict:
        """Top-level results.json keys of the task's settings ({} by default)."""
        return {}

    # Tasks run in ascending order (`run`): larger for a task reading another's output.
    order = 0

    def forward(self, head, hidden: torch.Tensor, lengths: torch.Tensor, layers):
        """Args: hidden ``[B, T, D]`` (after the shared dropout); lengths ``[B]`` frames;
        layers: the encoder's hidden layers or None."""
        raise NotImplementedError

    def run(self, head, hidden, lengths, layers, inputs: TaskInputs):
        """What the Brain calls: `forward` (args as there); ``inputs`` (`TaskInputs`) for a
        task that reads the batch or earlier tasks' outputs."""
        return self.forward(head, hidden, lengths, layers)

    def targets(self, batch) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def column_targets(self, columns: dict[str, list], device=None) -> tuple:
        """For a task whose targets are manifest columns: `targets` from ``{column: [B]
        values}`` (a batch's, or the utterances `mtl-ser evaluate` scores)."""
        raise NotImplementedError

    @classmethod
    def from_export_info(cls, name: str, info: dict) -> Task:
        """For an exported task: the task rebuilt from its `export_info` (evaluate scores
        it with its `new_log`)."""
        raise NotImplementedError

    def loss(self, output, targets: tuple, frame_lens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start_stage(self, stage) -> None:
        """Called when a stage (``sb.Stage``) starts, before any batch (e.g. the CTC task
        adds its beam decoder at the test pass). Nothing by default."""

    def prediction_fields(self, output, targets: tuple, frame_lens: torch.Tensor) -> dict:
        """Arguments of `PredictionLog.add_batch` this task provides ({} for tasks with a
        `TaskLog`)."""
        return {}

    def new_log(self) -> TaskLog | None:
        return None

    def metric_values(self, metrics: dict) -> dict:
        """This task's metrics ``{metric: value}`` out of `PredictionLog.metrics`."""
        return metrics.get("by_task", {}).get(self.name, {})

    def describe(self) -> dict:
        """The task's settings for results.json."""
        return {"kind": type(self).__name__, "weight": self.weight}

    def model_spec_entries(self) -> dict:
        """Top-level model_spec.json keys the task adds (e.g. the CTC task's ``decoding``);
        {} by default."""
        return {}

    def export_info(self) -> dict | None:
        """What predict needs besides the head (classes, dimension names), or None for a
        task that export does not carry beyond the model spec's own keys. Its ``kind`` is
        one of `mtl_ser.model_spec.TASK_EXPORT_KINDS`, which the torch-free
        `mtl_ser.prediction_types.describe_task_values` turns into predictions."""
        return None

    @staticmethod
    def window_values(output: torch.Tensor) -> torch.Tensor:
        """An exported model's per-window values ``[B, K]`` from the head's output (the
        ONNX graph's output of the task too); predict averages them over a recording's
        windows (weighted by length, `mtl_ser.prediction_types.combine_windows`)."""
        raise NotImplementedError
