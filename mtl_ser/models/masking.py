"""Length masks and masked reductions shared by encoders and heads."""

from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Args: lengths ``[B]`` integer counts; max_len T. Returns: bool mask ``[B, T]``."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of the valid frames.

    Args: x ``[B, T, D]``; mask ``[B, T]`` (bool). Returns: ``[B, D]``.
    """
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
