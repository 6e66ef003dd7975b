"""How the tasks' losses make the training loss (``task_weighting``).

- ``fixed``: ``sum_t w_t L_t`` with the configured weights (emotion 1, CTC alpha: Cai et al.).
- ``uncertainty`` (Kendall et al., CVPR 2018): a learned log-variance ``s_t`` per task,
  ``sum_t 0.5 exp(-s_t) w_t L_t + 0.5 s_t``; the ``s_t`` are trained with the heads and
  logged per epoch (``log_var_<task>``).
- ``pcgrad`` (Yu et al., NeurIPS 2020): the loss is the fixed sum, but the shared encoder's
  gradient is the sum of each task's gradient projected off the other tasks' gradients it
  conflicts with (negative inner product); the heads get their ordinary gradients.
"""

from __future__ import annotations

import torch
from torch import nn

TASK_WEIGHTINGS = ("fixed", "uncertainty", "pcgrad")


class FixedWeighting(nn.Module):
    """``sum_t w_t L_t``. Args: weights ``{task: w_t}``."""

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.weights = dict(weights)

    def weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's term of the total (its share of the training loss)."""
        return {t: self.weights[t] * loss for t, loss in losses.items()}

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss (a scalar) from the tasks' losses ``{task: scalar}``."""
        terms = list(self.weighted(losses).values())
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def stats(self) -> dict[str, float]:
        """Per-epoch figures of the weighting ({} when nothing is learned)."""
        return {}


class UncertaintyWeighting(FixedWeighting):
    """Kendall et al.'s homoscedastic-uncertainty weighting on top of the fixed weights; the
    log-variances start at 0 (the fixed weighting, halved)."""

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.names = list(weights)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def weighted(self, losses):
        out = {}
        for t, loss in losses.items():
            s = self.log_vars[self.names.index(t)]
            out[t] = 0.5 * torch.exp(-s) * self.weights[t] * loss + 0.5 * s
        return out

    def stats(self):
        return {
            f"log_var_{t}": float(v)
            for t, v in zip(self.names, self.log_vars.detach(), strict=True)
        }


class PCGradWeighting(FixedWeighting):
    """The fixed sum as the loss; `backward` applies PCGrad on the shared parameters."""

    def backward(self, terms: list[torch.Tensor], shared: list[nn.Parameter], others) -> None:
        """Accumulates into ``.grad``: for ``shared`` parameters the sum of the tasks'
        projected gradients (`project_conflicting`), for ``others`` (the heads) the ordinary
        gradient of ``sum(terms)``.

        Args: terms: each task's (scaled) term of the loss; shared: the shared encoder's
        trainable parameters; others: every other trainable parameter.
        """
        grads = []
        for term in terms:
            g = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
            grads.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if gi is None else gi).flatten()
                        for p, gi in zip(shared, g, strict=True)
                    ]
                )
            )
        combined = torch.stack(project_conflicting(grads)).sum(0)
        offset = 0
        for p in shared:
            part = combined[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = part.clone() if p.grad is None else p.grad + part
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        if others:
            total.backward(inputs=list(others))


def project_conflicting(grads: list[torch.Tensor], order=None) -> list[torch.Tensor]:
    """PCGrad's projection: each task's flat gradient ``[P]`` minus its component along
    every other task's gradient (in random order, or ``order``) it has a negative inner
    product with. Returns the projected gradients, one ``[P]`` per task."""
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in range(len(grads)) if j != i]
        if order is None:
            others = [others[k] for k in torch.randperm(len(others)).tolist()]
        for j in others:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
        projected.append(g)
    return projected


def make_weighting(kind: str, weights: dict[str, float]) -> FixedWeighting:
    """The ``task_weighting`` of ``kind`` over the tasks' fixed ``weights``."""
    if kind not in TASK_WEIGHTINGS:
        raise ValueError(f"task_weighting must be one of {list(TASK_WEIGHTINGS)}, not {kind!r}")
    classes = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting}
    return classes.get(kind, PCGradWeighting)(weights)
