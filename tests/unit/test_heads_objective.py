"""Heads and the multi-task objective on tiny tensors with known answers."""

import pytest
import torch
import torch.nn.functional as F

from mtl_ser.models.heads import AttentiveStatisticsPooling, CTCHead, EmotionHead, MeanPooling
from mtl_ser.models.objective import MultiTaskObjective


def test_mean_pooling_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    out = MeanPooling(1)(x, torch.tensor([2, 3]))
    assert out.squeeze(-1).tolist() == [2.0, 4.0]


def test_attentive_pooling_ignores_padding():
    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(3, attention_size=4)
    x = torch.randn(1, 5, 3)
    padded = torch.cat([x, 50 * torch.randn(1, 4, 3)], dim=1)
    torch.testing.assert_close(pool(padded, torch.tensor([5])), pool(x, torch.tensor([5])))
    assert pool(x, torch.tensor([5])).shape == (1, 6)
    # With equal scores (constant input frames) the weights are uniform: mean = frame, std ~ 0.
    same = torch.ones(1, 4, 3)
    out = pool(same, torch.tensor([4]))
    torch.testing.assert_close(out[0, :3], torch.ones(3))
    assert out[0, 3:].max() < 1e-2


def test_emotion_head_classes_are_set_once():
    head = EmotionHead(8)
    with pytest.raises(RuntimeError, match="set_num_classes was never called"):
        head(torch.zeros(1, 2, 8), torch.tensor([2]))
    head.set_num_classes(5)
    assert head(torch.zeros(2, 3, 8), torch.tensor([3, 1])).shape == (2, 5)
    head.set_num_classes(5)  # same number: fine
    with pytest.raises(ValueError, match="has 5 classes, not 4"):
        head.set_num_classes(4)
    with pytest.raises(ValueError, match="pooling 'max'"):
        EmotionHead(8, pooling="max")


def test_ctc_head_gives_log_probabilities():
    out = CTCHead(8, 29)(torch.randn(2, 7, 8))
    assert out.shape == (2, 7, 29)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 7))


def batch(seed=0):
    """Two utterances: 6 and 4 true frames (padded to 6), targets of 3 and 2 characters."""
    gen = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(2, 6, 5, generator=gen).log_softmax(-1).requires_grad_()
    logits = torch.randn(2, 3, generator=gen, requires_grad=True)
    return dict(
        emo_logits=logits,
        emo_targets=torch.tensor([0, 2]),
        ctc_log_probs=log_probs,
        frame_lens=torch.tensor([6, 4]),
        tokens=torch.tensor([[1, 2, 3], [4, 4, 0]]),
        token_lens=torch.tensor([3, 2]),
        has_text=torch.tensor([True, True]),
    )


def per_utterance_ctc(b, i):
    """CTC of utterance i computed alone, on its true frames only, divided by its length."""
    n, s = b["frame_lens"][i], b["token_lens"][i]
    loss = F.ctc_loss(
        b["ctc_log_probs"][i : i + 1, :n].transpose(0, 1),
        b["tokens"][i : i + 1, :s],
        torch.tensor([n]),
        torch.tensor([s]),
        blank=0,
        reduction="sum",
    )
    return loss / s


def test_total_is_emotion_plus_alpha_ctc():
    b = batch()
    losses = MultiTaskObjective(alpha=0.1)(**b)
    ce = F.cross_entropy(b["emo_logits"], b["emo_targets"])
    ctc = (per_utterance_ctc(b, 0) + per_utterance_ctc(b, 1)) / 2
    torch.testing.assert_close(losses.emo, ce)
    torch.testing.assert_close(losses.ctc, ctc)
    torch.testing.assert_close(losses.total, ce + 0.1 * ctc)


def test_ctc_uses_true_lengths_not_padding():
    b = batch()
    b_padded_garbage = {**b, "ctc_log_probs": b["ctc_log_probs"].detach().clone()}
    b_padded_garbage["ctc_log_probs"][1, 4:] = torch.tensor([0.0, -50, -50, -50, -50])
    a = MultiTaskObjective(0.5)(**b).ctc
    c = MultiTaskObjective(0.5)(**b_padded_garbage).ctc
    torch.testing.assert_close(a, c)


def test_utterances_without_text_do_not_count():
    b = batch()
    b["has_text"] = torch.tensor([True, False])
    losses = MultiTaskObjective(1.0)(**b)
    torch.testing.assert_close(losses.ctc, per_utterance_ctc(b, 0))
    b["has_text"] = torch.tensor([False, False])
    none = MultiTaskObjective(1.0)(**b)
    assert none.ctc.item() == 0.0 and none.ctc.requires_grad


def test_alpha_zero_turns_ctc_off():
    b = batch()
    objective = MultiTaskObjective(alpha=0.0)
    assert not objective.ctc_enabled
    losses = objective(**b)
    assert losses.ctc is None
    losses.total.backward()
    assert b["ctc_log_probs"].grad is None  # CTC head untouched
    torch.testing.assert_close(losses.total, F.cross_entropy(b["emo_logits"], b["emo_targets"]))


def test_alpha_scales_only_the_ctc_gradient():
    grads = {}
    for alpha in (0.01, 0.1):
        b = batch()
        MultiTaskObjective(alpha)(**b).total.backward()
        grads[alpha] = (b["ctc_log_probs"].grad.clone(), b["emo_logits"].grad.clone())
    torch.testing.assert_close(grads[0.1][0], 10 * grads[0.01][0])
    torch.testing.assert_close(grads[0.1][1], grads[0.01][1])


def test_bad_alpha_and_missing_ctc_output():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        MultiTaskObjective(-0.1)
    b = batch()
    b["ctc_log_probs"] = None
    with pytest.raises(ValueError, match="needs the CTC head's output"):
        MultiTaskObjective(0.1)(**b)
