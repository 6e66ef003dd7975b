"""The shared Brain of every recipe: forward, objectives, optimisation, metrics and checkpoint
choice.

One class serves the multi-task recipe, the SER-only baseline (``alpha: 0`` and no CTC
head) and the CNN baseline (another ``encoder`` module); configuration decides which.

Modules (``hparams["modules"]``): ``encoder`` (waveforms, or the features the data pipeline
computes when ``features`` is configured -> ``[B, T, D]`` + frame counts) and the heads of
the configured tasks (``tasks``, `mtl_ser.tasks`: by default ``emotion_head`` and, when
``alpha > 0``, ``ctc_head``; other tasks build theirs). The Brain loops over the tasks for
the forward pass, the losses (combined by ``task_weighting``), the stage sums and the
metrics, and never names one.

Checkpoints are chosen on *validation* ``selection_metric`` only (UA by default; or, with
``checkpoint_selection: last``, the last epoch). The test set is evaluated once, after
training, from the chosen checkpoint; saving a checkpoint after the test pass is an error.

Optimisation differs from ``sb.Brain`` where SpeechBrain 1.1 changes the science:
- gradient accumulation applies every batch: the last, shorter window of an epoch is
  stepped too (its loss divided by its own size), so the schedule plans exactly the steps
  taken (SpeechBrain drops the leftover batches);
- gradient clipping by the global norm over all parameters (``grad_clip: global``, as the
  Hugging Face Trainer of the released Cai et al. code) or per optimiser over all its
  parameter groups (``per_optimizer``; SpeechBrain clips only the first group);
- a batch whose loss is not finite is skipped (no backward) with a warning and counted in
  the epoch log; ``nonfinite_patience`` consecutive ones stop training with an error. The
  window's gradient is the mean over the batches actually applied (renormalised by
  window size / batches applied);
- a step whose gradients are not finite after unscaling (fp16's GradScaler overflowing, or
  a finite loss with an infinite gradient) is skipped: no parameter moves, it is not
  counted in ``optimizer_step`` and the schedules do not advance; it is counted in the
  epoch log (``train_nonfinite_steps``), and ``nonfinite_patience`` consecutive ones stop
  training with an error.

Resume: every checkpoint holds the random generators (of every DDP process), the epoch
counter and, inside an epoch, the epoch's loss sums, step counts and elapsed seconds;
checkpoints inside an epoch are saved only at the end of an accumulation window (no
gradient is pending), so a run killed anywhere continues as the uninterrupted run would.
A run folder's learning-rate schedule is planned for its number of epochs: resuming it
with another number of optimiser steps (e.g. a larger ``number_of_epochs``) is refused.

Speed: batches move to the device asynchronously (from pinned memory when the loaders pin),
evaluation loss sums stay on the device until a stage ends, and the one host
synchronisation per training batch is the finiteness check, which fetches the batch's losses
with it (for the epoch sums and the progress bar's running mean); an optimiser step adds
one, the gradient check (GradScaler makes one per step as well). With ``encoder_cache`` (a
frozen encoder or feature encoder, mtl_ser/data/encoder_cache.py) the cache is filled before
the first epoch and training and validation batches carry its entries instead of waveforms.
A batch that runs out of memory stops the run with an `OutOfMemoryBatchError` naming its utterances.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.dataloader import LoopedLoader
from speechbrain.nnet.schedulers import LinearWarmupScheduler
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from mtl_ser.checkpoints import (
    CheckpointLoadError,
    RandomStates,
    has_valid_metrics,
    selection_key,
)
from mtl_ser.data.manifest import load_manifest
from mtl_ser.data.sampler import DistributedBatches
from mtl_ser.data.text import CharVocabulary
from mtl_ser.export import write_model_spec
from mtl_ser.groups import attach_groups, check_columns
from mtl_ser.models.peft_tuning import trained_parameters
from mtl_ser.progress import is_terminal
from mtl_ser.results import PredictionLog, write_run_outputs
from mtl_ser.tasks import configured_tasks, parse_metric, task_context, tasks_identity
from mtl_ser.tasks.base import TaskInputs
from mtl_ser.tasks.weighting import PCGradWeighting, make_weighting

logger = logging.getLogger(__name__)

EPOCH_LOG = "epoch_log.jsonl"
GRAD_CLIPS = ("global", "per_optimizer")


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many consecutive batches with a NaN / infinite loss, or
    optimiser steps with non-finite gradients."""


class OutOfMemoryBatchError(RuntimeError):
    """A batch did not fit in the device's memory (the message names its utterances)."""


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, or the CPU allocator's failure."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


def out_of_memory_message(batch, stage, device) -> str:
    """What ran out of memory and what helps: the batch's utterance ids and durations
    (longest first), and the settings that lower the memory a batch needs."""
    durations = [float(d) for d in batch.duration]
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    utterances = ", ".join(f"{batch.id[i]} ({durations[i]:.1f} s)" for i in order)
    if stage == sb.Stage.TRAIN:
        helps = (
            "--gradient_checkpointing=True, --max_len=<seconds> (random training crops), "
            "--precision=bf16, or a smaller --batch_size with a larger "
            "--grad_accumulation_factor (the same effective batch)"
        )
    else:
        helps = "a smaller --eval_batch_size, or --precision=bf16"
    return (
        f"out of memory on {device} in a {stage.name.lower()} batch of {len(durations)} "
        f"utterance(s): {utterances}. Lower the memory a batch needs: {helps}"
    )


@dataclass
class Outputs:
    """What `EmotionBrain.compute_forward` returns."""

    by_task: dict  # task name -> its head's output (e.g. emotion [B, C], ctc [B, T, V])
    frame_lens: torch.Tensor  # [B] true encoder frame counts
    augmented: bool = False  # batch_augment ran (its copies need their labels replicated)


@dataclass
class TaskLosses:
    """A batch's losses: ``total`` (the training loss) and each task's by its loss key
    (``parts["emo"]``, ``parts["ctc"]``, ...; also readable as attributes, None when the
    run has no such task)."""

    total: torch.Tensor
    parts: dict
    terms: dict  # loss key -> the task's term of the total (what PCGrad projects)

    def __getattr__(self, key):
        if key in ("parts", "terms", "total"):
            raise AttributeError(key)
        return self.parts.get(key)


class EmotionBrain(sb.Brain):
    """Emotion recognition with an optional CTC task on a shared encoder.

    Extra constructor arguments:
        labels: class names in their fixed order (from the manifests' labels.json).
        vocab: the CTC character vocabulary.
        identity: facts about the run written into results.json (recipe, alpha, ...); the
            Brain adds its fine-tuning mode and trained parameter counts.

    Reads from hparams: ``alpha``, ``ctc_reduction``, ``ctc_sum_utterances``,
    ``ctc_zero_infinity``, ``head_dropout`` (dropout on the encoder output, shared by both
    heads), ``features`` (null: the encoder reads the batch's waveforms ``sig``; else its
    features ``feats``), ``batch_augment`` (augmentation of training batches of the encoder
    input, or null), ``lr_encoder``, ``lr_heads``, ``encoder_opt_class``,
    ``heads_opt_class``, ``warmup_fraction``, ``lr_decay``, ``number_of_epochs``,
    ``grad_clip``, ``checkpoint_selection``, ``epoch_counter`` (an
    `mtl_ser.stopping.EarlyStoppingCounter`), ``train_logger``, ``experiment_tracker``,
    ``output_folder``, ``encoder_cache`` (null, or an
    `mtl_ser.data.encoder_cache.EncoderCache`); and
    SpeechBrain's run options ``max_grad_norm``, ``grad_accumulation_factor``,
    ``nonfinite_patience``.
    """

    def __init__(self, *args, labels, vocab: CharVocabulary, identity: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = tuple(labels)
        self.vocab = vocab
        self.identity = identity
        if self.hparams.grad_clip not in GRAD_CLIPS:
            raise ValueError(
                f"grad_clip must be one of {list(GRAD_CLIPS)}, not {self.hparams.grad_clip!r}"
            )
        self._attach_tasks()
        # Counted now that every task has its head (and learned weighting) in the modules.
        mode = getattr(self.hparams, "finetuning_mode", None)  # the CNN recipe has none
        self.identity.update(trained_parameters(self.modules, mode))
        self.random_states = RandomStates()
        if self.checkpointer is not None:
            # Resume continues with the random numbers the uninterrupted run would draw,
            # and an epoch resumed inside continues its statistics.
            self.checkpointer.add_recoverable("random_states", self.random_states)
            self.checkpointer.add_recoverable("epoch_progress", EpochProgress(self))
        self.encoder_cache = self.hparams.encoder_cache
        if self.encoder_cache is not None:
            # Planned on the bare encoder (before any DDP wrapping), with the heads that
            # remain (no CTC head at alpha = 0): they decide which hidden layers are stored.
            self._bare_encoder = self.modules.encoder
            heads = [self.modules[task.head_module] for task in self.tasks]
            self.encoder_cache.plan(self._bare_encoder, heads)
        self._cache_datasets: list = []
        self.batches_per_epoch = None
        self.steps_per_epoch = None
        self.test_done = False
        self.tested_checkpoint = None
        self._window_applied = 0  # batches of the current window with a backward pass
        self._window_synced = True  # its last backward pass all-reduced (DDP)
        self._stage = None
        self._consecutive_nonfinite = 0  # batches with a non-finite loss in a row
        self._consecutive_bad_steps = 0  # steps with non-finite gradients in a row
        self._resumed_epoch: dict | None = None  # an intra-epoch checkpoint's statistics
        self._item_seeds = None  # the training set's per-utterance draws (or None)
        self._epoch_lines = False  # one summary line per epoch instead of progress bars
        self.stage_seconds: dict = {}
        if if_main_process():  # how to rebuild the model offline (mtl-ser export / predict)
            write_model_spec(
                self.hparams.output_folder, self.modules, self.labels, vocab, self.tasks
            )

    def _attach_tasks(self) -> None:
        """Builds the configured tasks (`mtl_ser.tasks`), their heads (added to the modules
        and the checkpoint) and the task weighting. A ``*_head`` module of no configured
        task (the CTC head at alpha = 0) is removed: not run, trained, DDP-wrapped or
        checkpointed."""
        hparams = vars(self.hparams)
        self.tasks = configured_tasks(hparams, self.vocab)
        context = task_context(hparams, self.labels)
        for task in self.tasks:
            head = task.build_head(context)
            if head is not None:
                self.modules[task.head_module] = head.to(self.device)
                if self.checkpointer is not None:
                    self.checkpointer.add_recoverable(task.head_module, head)
            if task.head_module not in self.modules:
                raise ValueError(f"task {task.name} needs a {task.head_module} in modules")
            task.check_head(self.modules[task.head_module])
        heads = {task.head_module for task in self.tasks}
        for name in [n for n in self.modules if n.endswith("_head") and n not in heads]:
            del self.modules[name]
            if self.checkpointer is not None:
                self.checkpointer.recoverables.pop(name, None)
        self.task_weighting = make_weighting(
            hparams.get("task_weighting", "fixed"), {t.loss_key: t.weight for t in self.tasks}
        )
        if any(True for _ in self.task_weighting.parameters()):
            # Learned weights train with the heads and are saved with the checkpoints.
            self.modules["task_weighting"] = self.task_weighting.to(self.device)
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("task_weighting", self.task_weighting)
        if isinstance(self.task_weighting, PCGradWeighting) and self.distributed_launch:
            raise ValueError("task_weighting: pcgrad is not supported under DDP (one process)")
        self.selection = parse_metric(hparams.get("selection_metric", "emotion/ua"), self.tasks)

    # ----------------------------------------------------------------- forward / objectives
    def compute_forward(self, batch, stage) -> Outputs:
        """Encoder -> (shared dropout) -> heads. Training batches are augmented first (if
        configured)."""
        # Asynchronous from pinned memory: the host queues the step without waiting.
        batch = batch.to(self.device, non_blocking=True)
        augmented = False
        if self.encoder_cache is not None and stage != sb.Stage.TEST:
            # Training and validation read the frozen part's stored output (never
            # augmented: the cache refuses augmentation); the test pass runs the encoder.
            enc = self.encoder_cache.encoder_output(batch.cached, self.modules.encoder)
        else:
            inputs, input_lens = batch.sig if self.hparams.features is None else batch.feats
            if stage == sb.Stage.TRAIN and self.hparams.batch_augment is not None:
                inputs, input_lens = self.hparams.batch_augment(inputs, input_lens)
                augmented = True
            # Every head gets the encoder's output and hidden layers and reads what it needs.
            enc = self.modules.encoder(inputs, input_lens)
        # One dropout mask on the last layer shared by both heads, as the released code's
        # `final_dropout` (heads reading a weighted sum of layers have their own dropout).
        hidden = F.dropout(enc.hidden, self.hparams.head_dropout, training=stage == sb.Stage.TRAIN)
        # Each row's utterance in the batch (augmented copies repeat their utterance's).
        rows = torch.arange(len(batch.id), device=hidden.device)
        if augmented:
            rows = self.hparams.batch_augment.replicate_labels(rows)
        inputs = TaskInputs(batch, stage, self.tasks, {}, rows, self._item_seeds)
        for task in sorted(self.tasks, key=lambda t: t.order):  # readers after what they read
            head = self.modules[task.head_module]
            inputs.outputs[task.name] = task.run(head, hidden, enc.lengths, enc.layers, inputs)
        by_task = {task.name: inputs.outputs[task.name] for task in self.tasks}
        return Outputs(by_task, enc.lengths, augmented)

    def compute_objectives(self, outputs: Outputs, batch, stage) -> torch.Tensor:
        """The weighted loss (``task_weighting`` over the tasks' losses); keeps the batch's
        per-task losses and, outside training, its predictions."""
        targets = {task.name: task.targets(batch) for task in self.tasks}
        if outputs.augmented:
            # Augmented copies keep their utterance's targets (emotion, transcript, ...).
            flat = [t for task in self.tasks for t in targets[task.name]]
            flat = iter(self.hparams.batch_augment.replicate_multiple_labels(*flat))
            targets = {t.name: tuple(next(flat) for _ in targets[t.name]) for t in self.tasks}
        parts = {
            task.loss_key: task.loss(
                outputs.by_task[task.name], targets[task.name], outputs.frame_lens
            )
            for task in self.tasks
        }
        terms = self.task_weighting.weighted(parts)
        total = self.task_weighting.total(parts)
        self.batch_losses = TaskLosses(total=total, parts=parts, terms=terms)
        if stage != sb.Stage.TRAIN:
            fields = {}
            for task in self.tasks:
                output, target = outputs.by_task[task.name], targets[task.name]
                fields.update(task.prediction_fields(output, target, outputs.frame_lens))
                if task.name in self.predictions.task_logs:
                    self.predictions.task_logs[task.name].add_batch(batch.id, output, target)
            self.predictions.add_batch(
                batch.id,
                references=batch.wrd,
                has_text=[bool(x) for x in batch.has_text],
                scripted=[None if x is None else bool(x) for x in batch.scripted],
                speakers=getattr(batch, "spk", None),
                **fields,
            )
        return total

    def _loss_parts(self, losses: TaskLosses) -> dict[str, torch.Tensor]:
        """A batch's losses by stage-sum key ("loss", then "loss_<task loss key>", e.g.
        "loss_emo", "loss_ctc"): detached float32 0-dim tensors."""
        parts = {"loss": losses.total.detach().float()}
        parts.update({f"loss_{k}": v.detach().float() for k, v in losses.parts.items()})
        return parts

    def _add_to_sums(self, parts: dict) -> None:
        """Adds a batch's losses (`_loss_parts`: device tensors, no host sync; in training
        the host floats `_finite_values` fetched) to the stage sums."""
        for key, value in parts.items():
            self.loss_sums[key] += value
        self.loss_batches += 1

    # ---------------------------------------------------------------------------- training
    def fit(self, epoch_counter, train_set, valid_set=None, progressbar=None, **kwargs):
        """`sb.Brain.fit`, after counting the batches and optimiser steps per epoch for the
        accumulation windows and the schedule. Progress bars are drawn on a terminal only;
        elsewhere (a log file) one line per epoch is written instead."""
        # The encoder cache (if any) is filled for these in on_fit_start.
        self._cache_datasets = [
            s.dataset if isinstance(s, DataLoader) else s
            for s in (train_set, valid_set)
            if s is not None
        ]
        # The per-utterance draws of training crops (`dataio_prep` attaches them).
        self._item_seeds = getattr(self._cache_datasets[0], "item_seeds", None)
        if not isinstance(train_set, DataLoader | LoopedLoader):
            train_set = self.make_dataloader(
                train_set, stage=sb.Stage.TRAIN, **kwargs.pop("train_loader_kwargs", {})
            )
        self.batches_per_epoch = len(train_set)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.grad_accumulation_factor)
        wanted = not self.noprogressbar if progressbar is None else progressbar
        bars = wanted and is_terminal(sys.stderr)  # tqdm writes to stderr
        self._epoch_lines = wanted and not bars
        super().fit(epoch_counter, train_set, valid_set, progressbar=bars, **kwargs)

    def evaluate(self, test_set, max_key=None, min_key=None, progressbar=None, **kwargs):
        """`sb.Brain.evaluate`, with a progress bar on a terminal only."""
        wanted = not self.noprogressbar if progressbar is None else progressbar
        return super().evaluate(
            test_set, max_key, min_key, progressbar=wanted and is_terminal(sys.stderr), **kwargs
        )

    def _train_loader_specifics(self, dataset, loader_kwargs):
        if isinstance(loader_kwargs.get("batch_sampler"), DistributedBatches):
            # Already this process's whole batches (not SpeechBrain's padding wrapper).
            self.train_sampler = loader_kwargs["batch_sampler"]
            return loader_kwargs
        loader_kwargs = super()._train_loader_specifics(dataset, loader_kwargs)
        if not self.distributed_launch and loader_kwargs.get("batch_sampler") is not None:
            # Outside DDP SpeechBrain leaves a batch sampler alone and never calls its
            # set_epoch: every epoch would get the same batches, and a resumed epoch others.
            self.train_sampler = loader_kwargs["batch_sampler"]
        return loader_kwargs

    def on_fit_start(self):
        """SpeechBrain's (optimisers, resume), then the resumed schedule is checked against
        this run's plan, and the encoder cache is filled (on the main process, the others
        wait) unless training is already over.

        Raises CheckpointLoadError when the run folder's schedule was planned for another
        number of optimiser steps (e.g. a finished run re-run with a larger
        ``number_of_epochs``: its restored schedule would train the extra epochs at
        learning rate 0)."""
        super().on_fit_start()
        self._check_resumed_schedule()
        if self.encoder_cache is not None and not self.hparams.epoch_counter.finished:
            sb.utils.distributed.run_on_main(
                self.encoder_cache.fill,
                kwargs={
                    "encoder": self._bare_encoder,
                    "datasets": self._cache_datasets,
                    "device": self.device,
                    "progress": not self.noprogressbar,
                },
            )

    def _check_resumed_schedule(self) -> None:
        """Refuses a resumed schedule whose total steps differ from this run's plan. The
        choice: refuse rather than re-plan, since a schedule re-planned mid-run (warm-up and
        decay stretched from wherever the old one stood) is a third schedule that neither
        the old nor the new setting describes, and its results could not be reproduced from
        the setting alone."""
        planned = self.steps_per_epoch * self.hparams.number_of_epochs
        for scheduler in self.schedulers.values():
            if scheduler.num_training_steps == planned:
                continue
            saved_epochs = scheduler.num_training_steps / self.steps_per_epoch
            raise CheckpointLoadError(
                f"{self.checkpointer.checkpoints_dir} holds a run whose learning-rate schedule "
                f"was planned for {scheduler.num_training_steps} optimiser steps (about "
                f"{saved_epochs:g} epochs of {self.steps_per_epoch}), but this run plans "
                f"{planned} (number_of_epochs {self.hparams.number_of_epochs}): resuming it "
                "would train the extra steps at learning rate 0 (or end its decay early). "
                f"Keep --number_of_epochs={saved_epochs:g} (and the batch settings) to "
                "resume, or train into a new --output_folder"
            )

    def accumulation_window(self, batch_index: int) -> tuple[int, int]:
        """The accumulation window of the ``batch_index``-th batch of an epoch (1-based):
        (its last batch index, its size). Windows hold ``grad_accumulation_factor`` batches,
        the last one of the epoch what is left."""
        k, n = self.grad_accumulation_factor, self.batches_per_epoch
        start = (batch_index - 1) // k * k + 1
        end = min(start + k - 1, n)
        return end, end - start + 1

    def fit_batch(self, batch):
        """Forward, backward, and an optimiser step at the end of each accumulation window.

        Returns: the detached loss (a 0-dim tensor).
        """
        window_end, window_size = self.accumulation_window(self.step)
        should_step = self.step >= window_end
        self.on_fit_batch_start(batch, should_step)
        with self._naming_out_of_memory(batch, sb.Stage.TRAIN), self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            # One host synchronisation per batch, as GradScaler makes per step: whether to
            # apply this batch (agreed by every DDP process) and its losses for the sums.
            finite, values = self._finite_values(self.batch_losses)
            if finite:
                self._consecutive_nonfinite = 0
                self._add_to_sums(values)
                self._backward(loss, window_size)
                self._window_applied += 1
                self._window_synced = should_step
            else:
                self._skip_nonfinite(batch, values)
        stepped = False
        if should_step:
            if self._window_applied:
                # The mean over the batches applied, not over the window's size.
                stepped = self.optimizers_step(renormalise=window_size / self._window_applied)
            else:  # every batch of the window was skipped: nothing to apply
                self.zero_grad(set_to_none=True)
            self._window_applied = 0
        self.on_fit_batch_end(batch, outputs, loss, stepped)
        return loss.detach()

    def _backward(self, loss: torch.Tensor, window_size: int) -> None:
        """The batch's backward pass (its share of the window: ``loss / window_size``), or
        with ``task_weighting: pcgrad`` PCGrad's on the shared encoder's parameters."""
        if not isinstance(self.task_weighting, PCGradWeighting):
            self.scaler.scale(loss / window_size).backward()
            return
        shared = [p for p in self.modules.encoder.parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared}
        others = [
            p for p in self.modules.parameters() if p.requires_grad and id(p) not in shared_ids
        ]
        terms = [self.scaler.scale(t / window_size) for t in self.batch_losses.terms.values()]
        self.task_weighting.backward(terms, shared, others)

    def _finite_values(self, losses: TaskLosses) -> tuple[bool, dict[str, float]]:
        """Whether a training batch's loss is finite in every process (all-reduced under
        DDP), and its losses as host floats (`_loss_parts` keys), fetched together: the
        batch's one host synchronisation."""
        parts = self._loss_parts(losses)
        values = torch.stack(list(parts.values()))
        finite = torch.isfinite(values[:1]).to(values.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        fetched = torch.cat([finite, values]).tolist()
        return bool(fetched[0]), dict(zip(parts, fetched[1:], strict=True))

    def _skip_nonfinite(self, batch, values: dict[str, float]) -> None:
        """Skips a batch with a non-finite loss (``values``: its `_finite_values`); raises
        NonFiniteLossError after ``nonfinite_patience`` consecutive ones."""
        self.nonfinite_batches += 1
        self._consecutive_nonfinite += 1
        parts = ", ".join(
            f"{task.display} {values[f'loss_{task.loss_key}']:.4g}" for task in self.tasks
        )
        ids = ", ".join(list(batch.id)[:4])
        if self._consecutive_nonfinite >= self.nonfinite_patience:
            raise NonFiniteLossError(
                f"{self._consecutive_nonfinite} consecutive training batches had a non-finite "
                f"loss (the last: {parts}; utterances {ids}, ...): training diverged. Lower "
                f"lr_encoder / lr_heads (now {self.hparams.lr_encoder} / "
                f"{self.hparams.lr_heads}), use fp32 if training in fp16 / bf16, or raise "
                "--nonfinite_patience"
            )
        logger.warning(
            "skipping a training batch with a non-finite loss (%s; utterances %s, ...): "
            "%d in a row, training stops at %d",
            parts,
            ids,
            self._consecutive_nonfinite,
            self.nonfinite_patience,
        )

    def optimizers_step(self, renormalise: float = 1.0) -> bool:
        """Unscales and renormalises the gradients, checks them, clips (globally or per
        optimiser, over every parameter group), steps every optimiser and clears the
        gradients.

        Args:
            renormalise: factor on every gradient (window size / batches applied, so the
                step applies the mean over the batches that were not skipped).

        Returns: whether the step was applied. A non-finite gradient (fp16's GradScaler
        overflowing, or a finite loss whose gradient is not) skips it: no parameter moves,
        ``optimizer_step`` stays, the schedules do not advance (`on_fit_batch_end`) and the
        epoch counts it; ``nonfinite_patience`` such steps in a row raise NonFiniteLossError.
        """
        optimizers = self.freeze_optimizers(self.optimizers_dict)
        if self.distributed_launch and not self._window_synced:
            # The window's last batch was skipped: its applied batches ran backward without
            # DDP's all-reduce (no_sync), so the processes' gradients are averaged here.
            self._average_gradients()
        for optimizer in optimizers.values():
            self.scaler.unscale_(optimizer)
        groups = [
            [p for group in optimizer.param_groups for p in group["params"]]
            for optimizer in optimizers.values()
        ]
        if renormalise != 1.0:
            for params in groups:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(renormalise)
        if self.hparams.grad_clip == "global":
            groups = [[p for params in groups for p in params]]
        device = torch.device(self.device)
        norms = [torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm) for params in groups]
        # A non-finite total norm is a non-finite gradient (the step's one host sync;
        # GradScaler makes one per step as well).
        finite = bool(torch.isfinite(torch.stack([n.to(device) for n in norms])).all())
        if finite:
            for optimizer in optimizers.values():
                self.scaler.step(optimizer)
        # After an overflow in fp16 this lowers the scale (unscale_ recorded the infinities).
        self.scaler.update()
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        if finite:
            self.optimizer_step += 1
            self._consecutive_bad_steps = 0
        else:
            self._skip_nonfinite_step()
        return finite

    def _average_gradients(self) -> None:
        """Averages every gradient over the DDP processes (what DDP's backward does)."""
        world = torch.distributed.get_world_size()
        for module in self.modules.values():
            for p in module.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)

    def _skip_nonfinite_step(self) -> None:
        """Counts an optimiser step skipped for a non-finite gradient; raises
        NonFiniteLossError after ``nonfinite_patience`` consecutive ones."""
        self.nonfinite_steps += 1
        self._consecutive_bad_steps += 1
        if self._consecutive_bad_steps >= self.nonfinite_patience:
            raise NonFiniteLossError(
                f"{self._consecutive_bad_steps} consecutive optimiser steps had a non-finite "
                "gradient (each skipped): training diverged. Lower lr_encoder / lr_heads (now "
                f"{self.hparams.lr_encoder} / {self.hparams.lr_heads}), use fp32 or bf16 if "
                "training in fp16, or raise --nonfinite_patience"
            )
        logger.warning(
            "skipping an optimiser step with a non-finite gradient (%s): %d in a row, "
            "training stops at %d",
            "fp16 overflow" if self.scaler.is_enabled() else "finite loss",
            self._consecutive_bad_steps,
            self.nonfinite_patience,
        )

    def init_optimizers(self):
        """Two optimisers (encoder, heads) with their own learning rates, each with linear
        warm-up over ``warmup_fraction`` of all steps, then linear decay to 0 at the last
        step (``lr_decay: True``) or a constant learning rate."""
        if self.steps_per_epoch is None:
            raise RuntimeError("init_optimizers needs steps_per_epoch: call fit()")
        total = self.steps_per_epoch * self.hparams.number_of_epochs
        warmup = round(self.hparams.warmup_fraction * total)
        groups = {
            "encoder": (
                [self.modules.encoder],
                self.hparams.encoder_opt_class,
                self.hparams.lr_encoder,
            ),
            "heads": (
                [m for name, m in self.modules.items() if name != "encoder"],
                self.hparams.heads_opt_class,
                self.hparams.lr_heads,
            ),
        }
        self.optimizers_dict, self.schedulers = {}, {}
        for name, (modules, opt_class, lr) in groups.items():
            params = [p for m in modules for p in m.parameters() if p.requires_grad]
            if not params:  # e.g. a frozen encoder
                continue
            optimizer = opt_class(params)
            scheduler = WarmupScheduler(lr, warmup, total, decay=self.hparams.lr_decay)
            for group in optimizer.param_groups:
                group["lr"] = scheduler.calculate_lr(0)
            self.optimizers_dict[name] = optimizer
            self.schedulers[name] = scheduler
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable(f"{name}_optimizer", optimizer)
                self.checkpointer.add_recoverable(f"{name}_scheduler", scheduler)
        if not self.optimizers_dict:
            raise ValueError("nothing to train: every parameter is frozen")

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Advances the schedules after an applied optimiser step (``should_step``: whether
        `fit_batch` applied one; a skipped step does not count)."""
        if should_step:
            for name, scheduler in self.schedulers.items():
                scheduler(self.optimizers_dict[name])

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's interval, at the end of an accumulation window only: a checkpoint
        taken inside one would lose the window's gradients (the next window end saves)."""
        if self.step != self.accumulation_window(self.step)[0]:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def _save_intra_epoch_ckpt(self):
        self.random_states.gather()  # every DDP process's generators (a collective)
        super()._save_intra_epoch_ckpt()

    def epoch_progress(self) -> dict:
        """The training epoch's statistics so far (what a checkpoint saved inside an epoch
        restores): loss sums, batch and skip counts, the epoch's first optimiser step and
        its seconds; {} outside training."""
        if self._stage != sb.Stage.TRAIN:
            return {}
        return {
            "loss_sums": {k: float(v) for k, v in self.loss_sums.items()},
            "loss_batches": self.loss_batches,
            "nonfinite_batches": self.nonfinite_batches,
            "nonfinite_steps": self.nonfinite_steps,
            "stage_start_step": self.stage_start_step,
            "consecutive_nonfinite": self._consecutive_nonfinite,
            "consecutive_bad_steps": self._consecutive_bad_steps,
            "seconds": self._stage_elapsed(),
        }

    # -------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        with self._naming_out_of_memory(batch, stage), self.evaluation_ctx:
            outputs = self.compute_forward(batch, stage=stage)
            loss = self.compute_objectives(outputs, batch, stage=stage)
        self._add_to_sums(self._loss_parts(self.batch_losses))
        return loss.detach()

    @contextlib.contextmanager
    def _naming_out_of_memory(self, batch, stage):
        """Turns an out-of-memory error into an `OutOfMemoryBatchError` that names the
        batch's utterances and the settings that help."""
        try:
            yield
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(err):
                raise
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise OutOfMemoryBatchError(
                f"{out_of_memory_message(batch, stage, self.device)} ({first_line})"
            ) from err

    def update_average(self, loss, avg_loss):
        """What SpeechBrain's progress bar shows as ``train_loss``: in training the running
        mean of the epoch's total loss and its emotion / CTC parts, from the host sums each
        batch's one synchronisation fills; outside training SpeechBrain's average is
        skipped (those sums stay on the device)."""
        if self._stage != sb.Stage.TRAIN or not self.loss_batches:
            return avg_loss
        mean = {k: v / self.loss_batches for k, v in self.loss_sums.items()}
        parts = ", ".join(
            f"{task.display} {mean[f'loss_{task.loss_key}']:.4f}" for task in self.tasks
        )
        return f"{mean['loss']:.4f} ({parts})"

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the checkpoint chosen by ``checkpoint_selection`` (keys passed by callers
        are ignored: the selection is this run's); refuses to test an untrained model."""
        # How training went, read before loading the chosen checkpoint rewinds the counter.
        self.training_state = self.hparams.epoch_counter.state()
        self.tested_checkpoint = self.checkpointer.recover_if_possible(
            importance_key=selection_key(self.hparams.checkpoint_selection),
            ckpt_predicate=has_valid_metrics,
        )
        if self.tested_checkpoint is None:
            raise RuntimeError(
                f"no checkpoint with validation metrics in {self.checkpointer.checkpoints_dir}: "
                "the run has not completed an epoch, refusing to test an untrained model"
            )

    # ------------------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        """Empty stage sums (host floats in training, device tensors otherwise); a training
        epoch resumed from a checkpoint inside it continues that checkpoint's statistics."""
        self._stage = stage
        self._stage_start_time = time.monotonic()
        self._stage_resumed_seconds = 0.0
        keys = ["loss"] + [f"loss_{task.loss_key}" for task in self.tasks]
        if stage == sb.Stage.TRAIN:
            self.loss_sums = dict.fromkeys(keys, 0.0)
        else:
            zero = torch.zeros((), device=self.device)
            self.loss_sums = {k: zero.clone() for k in keys}
        self.loss_batches = 0
        self.nonfinite_batches = 0
        self.nonfinite_steps = 0
        self.stage_start_step = self.optimizer_step
        for task in self.tasks:
            task.start_stage(stage)
        self.predictions = PredictionLog(
            self.labels, task_logs={t.name: t.new_log() for t in self.tasks if t.new_log()}
        )
        if stage == sb.Stage.TRAIN:
            if self._item_seeds is not None:
                self._item_seeds.set_epoch(epoch)  # before the loader's workers draw
            if self._resumed_epoch:
                self._continue_epoch(self._resumed_epoch)
            self._resumed_epoch = None
        if stage == sb.Stage.TEST:
            self.test_done = True

    def _continue_epoch(self, saved: dict) -> None:
        """Restores the statistics `epoch_progress` saved inside this epoch."""
        self.loss_sums.update(saved["loss_sums"])
        self.loss_batches = saved["loss_batches"]
        self.nonfinite_batches = saved["nonfinite_batches"]
        self.nonfinite_steps = saved["nonfinite_steps"]
        self.stage_start_step = saved["stage_start_step"]
        self._consecutive_nonfinite = saved["consecutive_nonfinite"]
        self._consecutive_bad_steps = saved["consecutive_bad_steps"]
        self._stage_resumed_seconds = saved["seconds"]

    def _stage_elapsed(self) -> float:
        """Seconds of the current stage (including those before a resume inside it)."""
        return self._stage_resumed_seconds + time.monotonic() - self._stage_start_time

    def _stage_losses(self) -> dict:
        n = max(self.loss_batches, 1)
        stats = {k: float(v) / n for k, v in self.loss_sums.items()}  # the stage's one sync
        # The epoch log's columns since mtl-ser 0.1: null for a task the run does not have.
        stats.setdefault("loss_emo", None)
        stats.setdefault("loss_ctc", None)
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        losses = self._stage_losses()
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)  # the stage's queued work belongs to its time
        self.stage_seconds[stage] = self._stage_elapsed()
        if stage == sb.Stage.TRAIN:
            self.train_stats = {
                **losses,
                "nonfinite_batches": self.nonfinite_batches,
                "nonfinite_steps": self.nonfinite_steps,
                **self.task_weighting.stats(),  # learned log-variances (uncertainty)
            }
            self.epoch_steps = self.optimizer_step - self.stage_start_step
            return
        metrics = self._valid_metrics = self.predictions.metrics()
        stats = {
            **losses,
            "WA": metrics["wa"],
            "UA": metrics["ua"],
            "macro_F1": metrics["macro_f1"],
            "WER": metrics["wer"],
            "CER": metrics["cer"],
        }
        # The other tasks' metrics by name (dimensions/ccc_mean, gender/accuracy, ...).
        for name, values in metrics.get("by_task", {}).items():
            stats.update({f"{name}/{k}": v for k, v in values.items() if k != "num_utterances"})
        if stage == sb.Stage.VALID:
            self._end_of_epoch(epoch, stats)
        else:
            self._end_of_test(stats, metrics)

    def _end_of_epoch(self, epoch: int, valid_stats: dict) -> None:
        """Logs the epoch, updates early stopping, then saves the checkpoint (so a resumed
        run knows its best epoch and patience) and keeps the latest and the chosen one."""
        if self.test_done:
            raise RuntimeError("a checkpoint was about to be chosen after the test pass")
        counter = self.hparams.epoch_counter
        selected = self.selection_value(valid_stats)
        counter.update_metric(selected)
        lrs = {f"lr_{n}": opt.param_groups[0]["lr"] for n, opt in self.optimizers_dict.items()}
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, **lrs},
            train_stats=_loggable(self.train_stats),
            valid_stats=_loggable(valid_stats),
        )
        self.hparams.experiment_tracker.log_epoch(
            self.identity, epoch, lrs, self.train_stats, valid_stats
        )
        entry = {"epoch": epoch, "batches": self.batches_per_epoch}
        entry.update({"optimizer_steps": self.epoch_steps, **lrs})
        entry.update({f"train_{k}": v for k, v in self.train_stats.items()})
        entry.update({f"valid_{k.lower()}": v for k, v in valid_stats.items()})
        entry.update({"best_epoch": counter.best_epoch, "stopped_early": counter.should_stop})
        seconds = {
            "train_seconds": round(self.stage_seconds[sb.Stage.TRAIN], 3),
            "valid_seconds": round(self.stage_seconds[sb.Stage.VALID], 3),
        }
        entry.update(seconds)
        if if_main_process():
            with open(f"{self.hparams.output_folder}/{EPOCH_LOG}", "a") as f:
                f.write(json.dumps(entry) + "\n")
            if self._epoch_lines:
                print(_epoch_line(entry), file=sys.stderr, flush=True)
        self.random_states.gather()  # every DDP process's generators (a collective)
        self.checkpointer.save_and_keep_only(
            meta={
                "UA": valid_stats["UA"],
                "WA": valid_stats["WA"],
                "epoch": epoch,
                "selection": selected,
            },
            importance_keys=[selection_key(self.hparams.checkpoint_selection)],
            num_to_keep=1,
        )

    def selection_value(self, valid_stats: dict) -> float:
        """The validation value that early stopping and ``checkpoint_selection:
        best_valid`` maximise: ``selection_metric``'s (negated when lower is better; -inf
        when it could not be computed)."""
        task, metric, higher = self.selection
        values = task.metric_values(self._valid_metrics)
        if metric not in values:
            raise ValueError(
                f"selection_metric {task.name}/{metric}: task {task.name} has the metrics "
                f"{sorted(values)}"
            )
        value = values[metric]
        if value is None or not math.isfinite(value):
            return -math.inf
        return float(value) if higher else -float(value)

    def _end_of_test(self, stats: dict, metrics: dict) -> None:
        """Logs the test metrics and writes the run's result files (main process only)."""
        tested = self.tested_checkpoint
        self.hparams.train_logger.log_stats(
            stats_meta={"test from epoch": tested.meta["epoch"]},
            test_stats=_loggable(stats),
        )
        self.hparams.experiment_tracker.log_test(self.identity, tested.meta["epoch"], stats)
        if not if_main_process():
            return
        task, metric, _ = self.selection
        identity = {
            **self.identity,
            **tasks_identity(self.tasks),
            "task_weighting": vars(self.hparams).get("task_weighting", "fixed"),
            "learned_task_weights": self.task_weighting.stats() or None,
            "selection_metric": f"{task.name}/{metric}",
            "task_metrics": {t.name: t.metric_values(metrics) for t in self.tasks},
            "checkpoint_selection": self.hparams.checkpoint_selection,
            "best_epoch": tested.meta["epoch"],
            "valid_ua": tested.meta["UA"],
            "epochs_trained": self.training_state["current"],
            "stopped_early": self.training_state["should_stop"],
        }
        # Per-group results: each test utterance's group values from its manifest record.
        records = load_manifest(self.hparams.test_annotation)
        attach_groups(self.predictions, records, check_columns(self.hparams.group_columns))
        self.results = write_run_outputs(
            self.hparams.output_folder, identity, self.predictions, self._read_epoch_log()
        )

    def _read_epoch_log(self) -> list[dict]:
        """Per-epoch entries of this run, including those written before a resume."""
        path = f"{self.hparams.output_folder}/{EPOCH_LOG}"
        try:
            with open(path) as f:
                entries = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        latest = {e["epoch"]: e for e in entries}  # a resumed epoch replaces its first try
        return [latest[k] for k in sorted(latest)]


class WarmupScheduler(LinearWarmupScheduler):
    """SpeechBrain's linear warm-up then linear decay, or warm-up then constant
    (``decay=False``), per optimiser step; checkpointable like its parent."""

    def __init__(self, initial_value, num_warmup_steps, num_training_steps, decay: bool = True):
        super().__init__(initial_value, num_warmup_steps, num_training_steps)
        self.decay = decay

    def calculate_lr(self, current_step):
        if not self.decay and current_step >= self.num_warmup_steps:
            return self.lr0
        return super().calculate_lr(current_step)


@register_checkpoint_hooks
class EpochProgress:
    """A recoverable of `EmotionBrain`'s training-epoch statistics (`epoch_progress`): a
    checkpoint saved inside an epoch restores them, so the resumed epoch's log covers every
    batch and step of the epoch; an end-of-epoch checkpoint starts the next epoch afresh.

    Under DDP the main process saves its own sums (the ones the epoch log reports); every
    process restores them, and the counts agree across processes.
    """

    def __init__(self, brain: EmotionBrain):
        self.brain = brain

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.brain.epoch_progress(), f)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        self.brain._resumed_epoch = None if end_of_epoch else saved


def _epoch_line(entry: dict) -> str:
    """One line of an epoch-log entry, for logs that get no progress bars."""
    train = f"loss {entry['train_loss']:.4f} (emotion {entry['train_loss_emo']:.4f}"
    if entry["train_loss_ctc"] is not None:
        train += f", CTC {entry['train_loss_ctc']:.4f}"
    valid = f"UA {entry['valid_ua']:.2%}"
    if entry["valid_cer"] is not None:
        valid += f", CER {entry['valid_cer']:.3f}"
    return (
        f"epoch {entry['epoch']}: train {entry['batches']} batches in "
        f"{entry['train_seconds']:.1f} s, {train}); valid in {entry['valid_seconds']:.1f} s, "
        f"{valid}"
    )


def _loggable(stats: dict) -> dict:
    """Drops None values (SpeechBrain's logger formats numbers only)."""
    return {k: v for k, v in stats.items() if v is not None}
