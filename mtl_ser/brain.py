"""The shared Brain of every recipe: forward, objectives, metrics and checkpoint choice.

One class serves the multi-task recipe, the SER-only baseline (``alpha: 0`` and no CTC
head) and the CNN baseline (another ``encoder`` module); configuration decides which.

Modules (``hparams["modules"]``): ``encoder`` (waveforms, or the features the data pipeline
computes when ``features`` is configured -> ``[B, T, D]`` + frame counts), ``emotion_head``
and, when ``alpha > 0``, ``ctc_head``.

Checkpoints are chosen on *validation* UA only. The test set is evaluated once, after
training, from the best validation checkpoint; saving a checkpoint after the test pass is
an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import LoopedLoader
from speechbrain.decoders.ctc import ctc_greedy_decode
from speechbrain.nnet.schedulers import LinearWarmupScheduler
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from mtl_ser.data.text import CharVocabulary
from mtl_ser.export import write_model_spec
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.results import PredictionLog, write_run_outputs

logger = logging.getLogger(__name__)

EPOCH_LOG = "epoch_log.jsonl"


@dataclass
class Outputs:
    """What `EmotionBrain.compute_forward` returns."""

    emo_logits: torch.Tensor  # [B, C]
    ctc_log_probs: torch.Tensor | None  # [B, T, V], None when alpha = 0
    frame_lens: torch.Tensor  # [B] true encoder frame counts


class EmotionBrain(sb.Brain):
    """Emotion recognition with an optional CTC task on a shared encoder.

    Extra constructor arguments:
        labels: class names in their fixed order (from the manifests' labels.json).
        vocab: the CTC character vocabulary.
        identity: facts about the run written into results.json (recipe, alpha, ...).

    Reads from hparams: ``alpha``, ``features`` (null: the encoder reads the batch's
    waveforms ``sig``; else its features ``feats``), ``batch_augment`` (augmentation of
    training batches of the encoder input, or null), ``lr_encoder``, ``lr_heads``,
    ``encoder_opt_class``, ``heads_opt_class``, ``warmup_fraction``, ``lr_decay``,
    ``number_of_epochs``,
    ``epoch_counter``, ``train_logger``, ``experiment_tracker``, ``output_folder``.
    """

    def __init__(self, *args, labels, vocab: CharVocabulary, identity: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = tuple(labels)
        self.vocab = vocab
        self.identity = identity
        self.objective = MultiTaskObjective(self.hparams.alpha, blank_index=vocab.blank_index)
        if self.objective.ctc_enabled and "ctc_head" not in self.modules:
            raise ValueError(f"alpha = {self.hparams.alpha} needs a ctc_head in modules")
        if self.objective.ctc_enabled and self.modules.ctc_head.n_tokens != len(vocab):
            raise ValueError(
                f"ctc_head has {self.modules.ctc_head.n_tokens} outputs but the character "
                f"vocabulary has {len(vocab)} symbols"
            )
        if "ctc_head" in self.modules and not self.objective.ctc_enabled:
            # alpha = 0: no CTC head at all (not run, trained, DDP-wrapped or checkpointed).
            del self.modules["ctc_head"]
            if self.checkpointer is not None:
                self.checkpointer.recoverables.pop("ctc_head", None)
        self.steps_per_epoch = None
        self.test_done = False
        if if_main_process():  # how to rebuild the model offline (mtl-ser export / predict)
            write_model_spec(self.hparams.output_folder, self.modules, self.labels, vocab)

    # ----------------------------------------------------------------- forward / objectives
    def compute_forward(self, batch, stage) -> Outputs:
        """Encoder -> heads. Training batches are augmented first (if configured)."""
        batch = batch.to(self.device)
        inputs, input_lens = batch.sig if self.hparams.features is None else batch.feats
        if stage == sb.Stage.TRAIN and self.hparams.batch_augment is not None:
            inputs, input_lens = self.hparams.batch_augment(inputs, input_lens)
        # Every head gets the encoder's output and hidden layers and reads what it needs.
        enc = self.modules.encoder(inputs, input_lens)
        emo_logits = self.modules.emotion_head(enc.hidden, enc.lengths, enc.layers)
        ctc = self.modules.ctc_head(enc.hidden, enc.layers) if self.objective.ctc_enabled else None
        return Outputs(emo_logits, ctc, enc.lengths)

    def compute_objectives(self, outputs: Outputs, batch, stage) -> torch.Tensor:
        """The weighted loss; records per-task losses and, outside training, predictions."""
        emo = batch.emo_encoded.data.squeeze(-1)
        tokens, token_rel = batch.tokens
        token_lens = torch.round(token_rel * tokens.shape[1]).long()
        ctc_mask = batch.ctc_mask.data.squeeze(-1)
        augment = self.hparams.batch_augment
        if stage == sb.Stage.TRAIN and augment is not None:
            # Augmented copies keep their utterance's emotion and transcript.
            emo, tokens, token_lens, ctc_mask = augment.replicate_multiple_labels(
                emo, tokens, token_lens, ctc_mask
            )
        losses = self.objective(
            outputs.emo_logits,
            emo,
            outputs.ctc_log_probs,
            outputs.frame_lens,
            tokens,
            token_lens,
            ctc_mask,
        )
        self.loss_sums["loss"] += losses.total.detach().item()
        self.loss_sums["loss_emo"] += losses.emo.detach().item()
        if losses.ctc is not None:
            self.loss_sums["loss_ctc"] += losses.ctc.detach().item()
        self.loss_batches += 1
        if stage != sb.Stage.TRAIN:
            self.predictions.add_batch(
                batch.id,
                outputs.emo_logits,
                emo,
                batch.wrd,
                self.greedy_transcripts(outputs),
                [bool(x) for x in batch.has_text],
                [None if x is None else bool(x) for x in batch.scripted],
            )
        return losses.total

    def greedy_transcripts(self, outputs: Outputs) -> list[str] | None:
        """Greedy CTC decoding of a batch, or None without CTC head."""
        if outputs.ctc_log_probs is None:
            return None
        rel = outputs.frame_lens.float() / outputs.ctc_log_probs.shape[1]
        ids = ctc_greedy_decode(outputs.ctc_log_probs, rel, blank_id=self.vocab.blank_index)
        return [self.vocab.decode(seq) for seq in ids]

    # ------------------------------------------------------------------------- optimisation
    def fit(self, epoch_counter, train_set, valid_set=None, **kwargs):
        """`sb.Brain.fit`, after counting the optimiser steps per epoch for the schedule."""
        if not isinstance(train_set, DataLoader | LoopedLoader):
            train_set = self.make_dataloader(
                train_set, stage=sb.Stage.TRAIN, **kwargs.pop("train_loader_kwargs", {})
            )
        self.steps_per_epoch = math.ceil(len(train_set) / self.grad_accumulation_factor)
        super().fit(epoch_counter, train_set, valid_set, **kwargs)

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
        if should_step:
            for name, scheduler in self.schedulers.items():
                scheduler(self.optimizers_dict[name])

    # ------------------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        self.loss_sums = {"loss": 0.0, "loss_emo": 0.0, "loss_ctc": 0.0}
        self.loss_batches = 0
        self.predictions = PredictionLog(self.labels)
        if stage == sb.Stage.TEST:
            self.test_done = True

    def _stage_losses(self) -> dict:
        n = max(self.loss_batches, 1)
        stats = {k: v / n for k, v in self.loss_sums.items()}
        if not self.objective.ctc_enabled:
            stats["loss_ctc"] = None
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        losses = self._stage_losses()
        if stage == sb.Stage.TRAIN:
            self.train_stats = losses
            return
        metrics = self.predictions.metrics()
        stats = {
            **losses,
            "WA": metrics["wa"],
            "UA": metrics["ua"],
            "macro_F1": metrics["macro_f1"],
            "WER": metrics["wer"],
            "CER": metrics["cer"],
        }
        if stage == sb.Stage.VALID:
            self._end_of_epoch(epoch, stats)
        else:
            self._end_of_test(stats, metrics)

    def _end_of_epoch(self, epoch: int, valid_stats: dict) -> None:
        """Logs the epoch, keeps the best checkpoint by validation UA, updates early stopping."""
        if self.test_done:
            raise RuntimeError("a checkpoint was about to be chosen after the test pass")
        lrs = {f"lr_{n}": opt.param_groups[0]["lr"] for n, opt in self.optimizers_dict.items()}
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, **lrs},
            train_stats=_loggable(self.train_stats),
            valid_stats=_loggable(valid_stats),
        )
        self.hparams.experiment_tracker.log_epoch(
            self.identity, epoch, lrs, self.train_stats, valid_stats
        )
        entry = {"epoch": epoch, "optimizer_steps": self.steps_per_epoch, **lrs}
        entry.update({f"train_{k}": v for k, v in self.train_stats.items()})
        entry.update({f"valid_{k.lower()}": v for k, v in valid_stats.items()})
        if if_main_process():
            with open(f"{self.hparams.output_folder}/{EPOCH_LOG}", "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.checkpointer.save_and_keep_only(
            meta={"UA": valid_stats["UA"], "WA": valid_stats["WA"], "epoch": epoch},
            max_keys=["UA"],
            num_to_keep=1,
        )
        self.hparams.epoch_counter.update_metric(valid_stats["UA"])

    def _end_of_test(self, stats: dict, metrics: dict) -> None:
        """Logs the test metrics and writes the run's result files (main process only)."""
        best = self.checkpointer.find_checkpoint(max_key="UA") if self.checkpointer else None
        self.hparams.train_logger.log_stats(
            stats_meta={"test from epoch": best.meta["epoch"] if best else None},
            test_stats=_loggable(stats),
        )
        self.hparams.experiment_tracker.log_test(
            self.identity, best.meta["epoch"] if best else None, stats
        )
        if not if_main_process():
            return
        identity = {
            **self.identity,
            "best_epoch": best.meta["epoch"] if best else None,
            "valid_ua": best.meta["UA"] if best else None,
        }
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


def _loggable(stats: dict) -> dict:
    """Drops None values (SpeechBrain's logger formats numbers only)."""
    return {k: v for k, v in stats.items() if v is not None}
