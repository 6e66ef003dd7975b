"""Tasks as plug-ins (DESIGN.md section 8): the hparams file's ``tasks:`` lists them by name,
each a mapping of its options::

    tasks:
      emotion: {}                         # weight 1 (the paper)
      ctc: {}                             # weight alpha
      dimensions: {weight: 0.5}           # kind = the name when the name is a kind
      gender: {kind: speaker_attribute, column: gender, weight: 0.1}

``kind`` is one of `TASK_KINDS` or the dotted path of a `Task` subclass (a task of your own:
one module and the YAML, nothing else). The CTC task's weight is ``alpha`` (0 drops it, as
the SER-only recipe does); the emotion task is always there (its classes and metrics choose
checkpoints by default).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from mtl_ser.decoding import DecoderConfig
from mtl_ser.tasks.attribute import SpeakerAttributeTask
from mtl_ser.tasks.base import Task, TaskContext, lower_is_better
from mtl_ser.tasks.ctc import CTCTask
from mtl_ser.tasks.dimensions import DimensionsTask
from mtl_ser.tasks.emotion import EmotionTask
from mtl_ser.tasks.text_emotion import TextEmotionTask

TASK_KINDS: dict[str, type[Task]] = {
    "emotion": EmotionTask,
    "ctc": CTCTask,
    "dimensions": DimensionsTask,
    "speaker_attribute": SpeakerAttributeTask,
    "text_emotion": TextEmotionTask,  # the emotion task with the transcript as a second view
}
DEFAULT_TASKS = {"emotion": {}, "ctc": {}}


def task_class(kind: str) -> type[Task]:
    """The class of a task ``kind``: a shipped kind, or ``package.module.Class``."""
    if kind in TASK_KINDS:
        return TASK_KINDS[kind]
    if "." not in kind:
        raise ValueError(
            f"task kind {kind!r} is not one of {list(TASK_KINDS)} nor a dotted class path"
        )
    module, _, name = kind.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task kind {kind!r} is not a mtl_ser.tasks.base.Task subclass")
    return cls


def configured_tasks(hparams: dict, vocab=None) -> list[Task]:
    """The tasks of ``hparams["tasks"]`` (default: emotion and CTC), without heads.

    The CTC task gets weight ``alpha`` and the CTC options (``ctc_reduction``, ...), and is
    left out at ``alpha: 0``; the emotion task gets ``class_weighting`` and its beta.
    Raises ValueError naming the task and what is wrong.
    """
    config = dict(hparams.get("tasks") or DEFAULT_TASKS)
    if "emotion" not in config:
        raise ValueError("tasks must include emotion (its classes choose checkpoints)")
    alpha = float(hparams.get("alpha", 0.0))
    tasks = []
    for name, options in config.items():
        options = dict(options or {})
        kind = options.pop("kind", name)
        cls = task_class(kind)
        if cls is CTCTask:
            if "weight" in options:
                raise ValueError(f"tasks.{name}.weight: the CTC task's weight is alpha (--alpha)")
            if alpha <= 0:
                continue  # alpha = 0: no CTC task at all (the SER-only recipe)
            for key in ("ctc_reduction", "ctc_sum_utterances", "ctc_zero_infinity"):
                if key in hparams:
                    options.setdefault(key, hparams[key])
            # The test pass's decoder (ctc_decoding, beam_width, lm_path, ...).
            options.setdefault("decoding", DecoderConfig.from_hparams(hparams))
            options.update(weight=alpha, vocab=vocab)
        if issubclass(cls, EmotionTask):
            for key in ("class_weighting", "class_weighting_beta"):
                if key in hparams:
                    options.setdefault(key, hparams[key])
        try:
            tasks.append(cls(name=name, **options))
        except TypeError as err:
            raise ValueError(f"tasks.{name}: {err}") from None
    if alpha > 0 and not any(isinstance(t, CTCTask) for t in tasks):
        raise ValueError(
            f"alpha = {alpha} but tasks has no ctc task: add `ctc: {{}}` or set --alpha=0"
        )
    for task in tasks:
        task.check_with(tasks)
    return tasks


def task_columns(hparams: dict) -> list[str]:
    """The manifest columns the configured tasks read (passed through the data pipeline)."""
    from mtl_ser.data.text import CharVocabulary

    columns = []
    for task in configured_tasks(hparams, CharVocabulary()):
        columns += [c for c in task.columns if c not in columns]
    return columns


# results.json's keys of task settings since mtl-ser 0.1 (null for a task the run lacks).
IDENTITY_DEFAULTS = {"ctc_reduction": None, "ctc_sum_utterances": None}


def tasks_identity(tasks: list[Task]) -> dict:
    """The tasks' facts for results.json: each task's top-level keys (`Task.identity`, e.g.
    the CTC reduction), ``tasks`` (every task's settings by name) and ``class_weighting``."""
    out = dict(IDENTITY_DEFAULTS)
    for task in tasks:
        out.update(task.identity())
    out["tasks"] = {task.name: task.describe() for task in tasks}
    return out


def task_context(hparams: dict, labels) -> TaskContext:
    """What tasks read when they build their heads: the encoder's size and layers (from
    ``encoder_dim`` / ``encoder_layers``) and the training manifest's records (when the
    file exists)."""
    path = hparams.get("train_annotation")
    records = None
    if path and Path(path).is_file():
        records = json.loads(Path(path).read_text())
    return TaskContext(
        hparams=hparams,
        labels=tuple(labels),
        encoder_dim=hparams.get("encoder_dim"),
        encoder_layers=hparams.get("encoder_layers"),
        train_records=records,
    )


def parse_metric(selection_metric: str, tasks: list[Task]) -> tuple[Task, str, bool]:
    """``"task/metric"`` -> (the task, the metric, whether higher is better). Raises
    ValueError naming the tasks when there is no such task."""
    name, _, metric = str(selection_metric).partition("/")
    by_name = {t.name: t for t in tasks}
    if name not in by_name or not metric:
        raise ValueError(
            f"selection_metric {selection_metric!r} must be <task>/<metric> with a task of "
            f"{list(by_name)} (e.g. emotion/ua, dimensions/ccc_mean)"
        )
    higher = not lower_is_better(metric)
    return by_name[name], metric, higher


__all__ = [
    "TASK_KINDS",
    "Task",
    "TaskContext",
    "configured_tasks",
    "parse_metric",
    "task_class",
    "task_columns",
    "task_context",
    "tasks_identity",
]
