"""Length-grouped training batches: a fixed number of utterances per batch, little padding.

Random batches of utterances whose durations spread as IEMOCAP's do (0.6 to 34 s) are more
than half padding. `LengthGroupedBatchSampler` keeps the batch of ``batch_size`` utterances
(what the optimisation sees is unchanged: every utterance counts once per epoch, batches are
as large as before) but builds each batch from utterances of similar length:

1. the utterances are shuffled, then cut into pools of ``pool`` batches (``pool x
   batch_size`` utterances);
2. each pool is sorted by length (longest first) and cut into batches, so a batch holds
   neighbours in length;
3. the order of all batches is shuffled, so long and short batches alternate at random;
4. the batch holding the longest utterance goes first.

This is the scheme of Hugging Face's ``group_by_length`` (pools of 50 batches). Batches
differ every epoch and are a function of (seed, epoch) only: `set_epoch` chooses the epoch
(SpeechBrain's Brain calls it before each epoch), so a run resumed from an intra-epoch
checkpoint, which skips the batches already consumed, skips exactly those.

Under DDP, `DistributedBatches` deals whole batches of any batch sampler to the processes
(every process builds the same list from the same seed, so nothing is sent): each utterance
is trained on exactly once per epoch, and every process takes the same number of batches,
hence of optimiser steps. SpeechBrain's own ``DistributedSamplerWrapper`` padded the dealt
list by repeating batches, so some utterances were seen twice, and the epoch's one short
batch sat beside full ones in a DDP step, whose gradient averages the processes equally (its
utterances weighed ``batch_size / its size`` times as much).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` dataset indices (the last one of an epoch may be smaller),
    grouped by length inside shuffled pools (see the module docstring).

    Args:
        lengths: the length of every utterance, in dataset order (seconds, or samples; what
            the batch will be padded to: the cropped length when training crops).
        batch_size: utterances per batch.
        pool: batches per pool; 1 is random batches (no grouping), a pool as large as the
            data is fully sorted batches.
        seed: the base seed; the batches of epoch ``e`` depend on ``seed`` and ``e`` only.
        epoch: the epoch to start at (`set_epoch` changes it).
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int,
        pool: int = 50,
        seed: int = 0,
        epoch: int = 0,
    ):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        if int(pool) != pool or pool < 1:
            raise ValueError(f"pool must be an integer >= 1 (batches per pool), not {pool!r}")
        if len(lengths) == 0:
            raise ValueError("no utterances to batch")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.float64)
        self.batch_size = int(batch_size)
        self.pool = int(pool)
        self.seed = int(seed)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose batches `__iter__` yields."""
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch, in the order they are yielded."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        pool_size = self.pool * self.batch_size
        batches = []
        for start in range(0, len(order), pool_size):
            members = order[start : start + pool_size]
            # Stable: equal lengths keep their shuffled order.
            ranked = members[
                torch.argsort(self.lengths[members], descending=True, stable=True)
            ].tolist()
            batches += [
                ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)
            ]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        # The largest batch to pad (the longest utterance, then the most utterances) first:
        # if it does not fit in memory, the run fails at its first step, not hours in.
        first = max(range(len(shuffled)), key=lambda i: self._padded_size(shuffled[i]))
        shuffled.insert(0, shuffled.pop(first))
        return shuffled

    def _padded_size(self, batch: list[int]) -> tuple[float, int]:
        return float(self.lengths[batch].max()), len(batch)

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class DistributedBatches(Sampler[list[int]]):
    """One process's share of the batches of ``batches`` (any batch sampler yielding the
    same batches in every process), dealt whole.

    Rule, per epoch: the full batches (``batch_size`` utterances; with ``batch_size`` None,
    any batch) are dealt round-robin in the inner sampler's order (process ``r`` takes batches
    ``r, r + W, ...``) for as many whole rounds of ``W`` processes as they fill. What is left
    (the full batches beyond the last round, and every shorter batch) is pooled and cut into
    ``W`` batches whose sizes differ by at most one, one per process, as the last step;
    fewer than ``W`` left utterances join the last batches of the first processes instead
    (one each). So every utterance is trained on exactly once per epoch and every process
    takes the same number of batches, whose sizes differ by at most one in any step.

    Args:
        batches: the inner batch sampler (`set_epoch` is passed on to it).
        num_replicas: the number of processes ``W``.
        rank: this process.
        batch_size: the full batch size (None: batches of any size count as full, e.g.
            dynamic batches of a duration budget).
    """

    def __init__(self, batches, num_replicas: int, rank: int, batch_size: int | None = None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.inner = batches
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.batch_size = batch_size
        self.epoch = 0
        logger.info(
            "DDP: %d processes take %d whole batches each per epoch; the utterances left "
            "after the last full round are shared out as one batch per process (last step)",
            self.num_replicas,
            len(self),
        )

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch (passed on to the inner sampler)."""
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def deal(self) -> list[list[list[int]]]:
        """Returns: the batches of every process for this epoch, in step order."""
        batches = [list(b) for b in self.inner]
        w = self.num_replicas
        full = [b for b in batches if self.batch_size is None or len(b) == self.batch_size]
        rounds = len(full) // w
        dealt = [full[r : rounds * w : w] for r in range(w)]
        dealt_ids = {id(b) for b in full[: rounds * w]}
        rest = [i for b in batches if id(b) not in dealt_ids for i in b]
        if len(rest) >= w:
            cuts = [round(k * len(rest) / w) for k in range(w + 1)]
            for r in range(w):
                dealt[r].append(rest[cuts[r] : cuts[r + 1]])
        elif rest:
            if rounds == 0:
                raise ValueError(f"{len(rest)} training utterance(s) for {w} processes")
            for r, index in enumerate(rest):  # fewer than processes: one more each
                dealt[r][-1].append(index)
        return dealt

    def __iter__(self):
        return iter(self.deal()[self.rank])

    def __len__(self) -> int:
        return len(self.deal()[self.rank])


def ddp_world_size() -> int:
    """The number of DDP processes (1 without a running process group)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_batches(batches, batch_size: int | None = None):
    """``batches`` dealt with `DistributedBatches` to this process when more than one DDP
    process runs; else ``batches`` unchanged."""
    if ddp_world_size() == 1:
        return batches
    rank = torch.distributed.get_rank()
    return DistributedBatches(batches, ddp_world_size(), rank, batch_size)


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[float]) -> float:
    """The share of padding in padded batches: 1 - (true length) / (batch size x longest),
    summed over the batches. ``lengths`` in any unit, indexed by the batches' indices."""
    padded = true = 0.0
    for batch in batches:
        values = [float(lengths[i]) for i in batch]
        padded += len(values) * max(values)
        true += sum(values)
    return 1.0 - true / padded if padded else 0.0
