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
checkpoint, which skips the batches already consumed, skips exactly those. Under DDP,
SpeechBrain wraps the sampler in a ``DistributedSamplerWrapper`` that deals the batches to
the processes; every process builds the same list from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


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
        order = self.draw(generator)
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

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's utterances in random order (each once): ``[N]`` indices."""
        return torch.randperm(len(self.lengths), generator=generator)

    def _padded_size(self, batch: list[int]) -> tuple[float, int]:
        return float(self.lengths[batch].max()), len(batch)

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[float]) -> float:
    """The share of padding in padded batches: 1 - (true length) / (batch size x longest),
    summed over the batches. ``lengths`` in any unit, indexed by the batches' indices."""
    padded = true = 0.0
    for batch in batches:
        values = [float(lengths[i]) for i in batch]
        padded += len(values) * max(values)
        true += sum(values)
    return 1.0 - true / padded if padded else 0.0
