"""Class-balanced, length-grouped training batches (``sampling: class_balanced``).

Each epoch draws as many utterances as the training split holds, with replacement, each
class equally likely (an utterance's probability is 1 / (K n_c)); the draws are then
grouped by length exactly as `LengthGroupedBatchSampler` groups an epoch (shuffled pools
sorted by length, batches in random order, the largest first), so batches keep little
padding. Rare classes' utterances recur within an epoch and frequent ones are left out;
the draws depend on (seed, epoch) only, as the plain sampler's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from mtl_ser.data.sampler import LengthGroupedBatchSampler


class ClassBalancedBatchSampler(LengthGroupedBatchSampler):
    """Args: ``labels``: each utterance's class (dataset order); the others as
    `LengthGroupedBatchSampler`."""

    def __init__(self, lengths: Sequence[float], labels: Sequence[str], batch_size: int, **kw):
        super().__init__(lengths, batch_size, **kw)
        if len(labels) != len(self.lengths):
            raise ValueError(f"{len(labels)} labels for {len(self.lengths)} utterances")
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[c] for c in labels], dtype=torch.float64)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """``N`` draws with replacement, each class equally likely: ``[N]`` indices."""
        return torch.multinomial(self.weights, len(self.weights), True, generator=generator)
