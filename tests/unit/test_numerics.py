"""Reduced precision: normalisation statistics and CTC stay in float32 (fp16 / bf16 safe)."""

import torch
from torch import nn

from mtl_ser.models.heads import CTCHead
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.models.ssl import masked_group_norm


def test_group_norm_of_a_long_fp16_utterance_is_finite_and_exact():
    """30 s of audio gives 96,000 first-layer frames: a float16 sum of squares overflows
    (max 65,504), which made the output NaN."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 4)
    x = 3 * torch.randn(2, 4, 96_000) + 1
    lengths = torch.tensor([96_000, 40_000])
    reference = masked_group_norm(x, lengths, norm)
    half = masked_group_norm(x.half(), lengths, norm.half())
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    # Only the output rounding of float16 remains (values of a few units: ~1e-3).
    assert (half.float() - reference).abs().max() < 1e-2
    # What float16 statistics did: overflow.
    assert not torch.isfinite((x.half() ** 2).sum(dim=-1)).all()


def test_ctc_head_and_objective_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    head = CTCHead(16, 29)
    hidden = torch.randn(2, 50, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs = head(hidden)
        losses = MultiTaskObjective(0.1)(
            torch.randn(2, 4),
            torch.tensor([0, 1]),
            log_probs,
            torch.tensor([50, 30]),
            torch.randint(1, 29, (2, 10)),
            torch.tensor([10, 7]),
            torch.tensor([True, True]),
        )
    assert log_probs.dtype == torch.float32
    assert losses.ctc.dtype == torch.float32 and losses.emo.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 50))
