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


def utterance_nll(b, i):
    """CTC negative log-likelihood of utterance i computed alone, on its true frames only."""
    n, s = b["frame_lens"][i], b["token_lens"][i]
    return F.ctc_loss(
        b["ctc_log_probs"][i : i + 1, :n].transpose(0, 1),
        b["tokens"][i : i + 1, :s],
        torch.tensor([n]),
        torch.tensor([s]),
        blank=0,
        reduction="sum",
    )


def test_total_is_emotion_plus_alpha_ctc():
    b = batch()
    ce = F.cross_entropy(b["emo_logits"], b["emo_targets"])
    nll = [utterance_nll(b, 0), utterance_nll(b, 1)]
    expected = {
        # Default: the released code's scale, 2 x the mean NLL per utterance.
        "sum": 2 * (nll[0] + nll[1]) / 2,
        "length_mean": (nll[0] / 3 + nll[1] / 2) / 2,
        "token_mean": (nll[0] + nll[1]) / 5,
    }
    for reduction, ctc in expected.items():
        losses = MultiTaskObjective(alpha=0.1, ctc_reduction=reduction)(**b)
        torch.testing.assert_close(losses.emo, ce)
        torch.testing.assert_close(losses.ctc, ctc)
        torch.testing.assert_close(losses.total, ce + 0.1 * ctc)
    assert MultiTaskObjective(0.1).ctc_reduction == "sum"


def test_sum_reduction_is_torch_sum_over_groups():
    """ctc_sum_utterances = batch size is F.ctc_loss(reduction="sum") over the batch."""
    b = batch()
    torch_sum = F.ctc_loss(
        b["ctc_log_probs"].transpose(0, 1),
        b["tokens"],
        b["frame_lens"],
        b["token_lens"],
        blank=0,
        reduction="sum",
    )
    ours = MultiTaskObjective(1.0, ctc_sum_utterances=2)(**b).ctc
    torch.testing.assert_close(ours, torch_sum)
    torch.testing.assert_close(
        MultiTaskObjective(1.0, ctc_sum_utterances=1)(**b).ctc, torch_sum / 2
    )


def released_batch(seed=1, size=8):
    """``size`` utterances of 5..12 frames with 1..4 characters each, padded."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(5, 13, (size,), generator=gen)
    token_lens = torch.randint(1, 5, (size,), generator=gen)
    tokens = torch.randint(1, 6, (size, 4), generator=gen) * (
        torch.arange(4)[None] < token_lens[:, None]
    )
    return dict(
        emo_logits=torch.randn(size, 4, generator=gen, requires_grad=True),
        emo_targets=torch.randint(0, 4, (size,), generator=gen),
        ctc_log_probs=torch.randn(size, 12, 6, generator=gen).log_softmax(-1).requires_grad_(),
        frame_lens=frames,
        tokens=tokens,
        token_lens=token_lens,
        has_text=torch.ones(size, dtype=torch.bool),
    )


def test_default_gradient_equals_the_released_training_step():
    """The released code (run.sh: 2 utterances per device, 4 accumulation steps, the loss of
    each micro-batch divided by 4; F.ctc_loss with reduction "sum") and our default on one
    batch of the same 8 utterances take the same gradient step."""
    alpha = 0.1
    b = released_batch()
    released_logits = b["emo_logits"].detach().clone().requires_grad_()
    released_log_probs = b["ctc_log_probs"].detach().clone().requires_grad_()
    for m in range(4):
        rows = slice(2 * m, 2 * m + 2)
        ce = F.cross_entropy(released_logits[rows], b["emo_targets"][rows])
        ctc = F.ctc_loss(
            released_log_probs[rows].transpose(0, 1),
            b["tokens"][rows],
            b["frame_lens"][rows],
            b["token_lens"][rows],
            blank=0,
            reduction="sum",
        )
        ((ce + alpha * ctc) / 4).backward()
    MultiTaskObjective(alpha)(**b).total.backward()
    torch.testing.assert_close(b["emo_logits"].grad, released_logits.grad)
    torch.testing.assert_close(b["ctc_log_probs"].grad, released_log_probs.grad)


@pytest.mark.parametrize("reduction", ["sum", "length_mean"])
def test_an_utterances_ctc_weight_does_not_depend_on_its_neighbours_text(reduction):
    """In a batch of 8, utterance 0's CTC gradient is the same whether 0 or 7 of its
    neighbours have text (or were cropped): each sum is divided by the batch size, not by
    the number of utterances with text (which gave utterance 0 8/k times its weight)."""
    grads = []
    for with_text in range(1, 9):
        b = released_batch()
        b["has_text"] = torch.arange(8) < with_text
        MultiTaskObjective(1.0, ctc_reduction=reduction)(**b).total.backward()
        grads.append(b["ctc_log_probs"].grad[0].clone())
    for k, grad in enumerate(grads[1:], start=2):
        torch.testing.assert_close(grad, grads[0], msg=f"{k} of 8 with text")
    assert grads[0].abs().sum() > 0


def test_reductions_differ_by_the_transcript_length():
    """Why alpha was not the paper's alpha: length_mean divides each NLL by its length, so
    with transcripts of L characters the released scale is 2 L times larger (~100x for
    IEMOCAP's ~50 characters)."""
    b = released_batch()
    b["token_lens"] = torch.full((8,), 4)
    b["tokens"] = b["tokens"].clamp(min=1)
    released = MultiTaskObjective(1.0)(**b).ctc
    per_length = MultiTaskObjective(1.0, ctc_reduction="length_mean")(**b).ctc
    torch.testing.assert_close(released / per_length, torch.tensor(8.0))


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
    # 2 x the sum over the batch of 2, the utterance without text counting 0.
    torch.testing.assert_close(losses.ctc, 2 * utterance_nll(b, 0) / 2)
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
    with pytest.raises(ValueError, match="ctc_reduction must be one of"):
        MultiTaskObjective(0.1, ctc_reduction="mean")
    with pytest.raises(ValueError, match="ctc_sum_utterances must be an integer >= 1"):
        MultiTaskObjective(0.1, ctc_sum_utterances=0)


def test_infeasible_alignment_is_infinite_only_when_asked():
    """A transcript longer than its frames: 0 with zero_infinity (default), inf as in the
    released code without it; an utterance without text never makes the loss infinite."""
    b = batch()
    b["token_lens"] = torch.tensor([3, 2])
    b["frame_lens"] = torch.tensor([6, 1])  # 2 characters cannot fit in 1 frame
    assert torch.isfinite(MultiTaskObjective(1.0)(**b).ctc)
    assert torch.isinf(MultiTaskObjective(1.0, ctc_zero_infinity=False)(**b).ctc)
    b["has_text"] = torch.tensor([True, False])
    released = MultiTaskObjective(1.0, ctc_zero_infinity=False)(**b)
    torch.testing.assert_close(released.ctc, 2 * utterance_nll(b, 0) / 2)


def test_fit_batch_with_accumulation_takes_the_released_training_step(tmp_path):
    """The released training step, through the real Brain: 8 utterances (2 without text) as
    2 batches of 4 with --grad_accumulation_factor=2 through EmotionBrain.fit_batch move the
    tiny model's parameters by exactly the gradient of the released code's 4 micro-batches
    of 2 utterances (CE mean + alpha * F.ctc_loss(reduction="sum"), each divided by 4).

    Plain SGD at learning rate 1 without warm-up, decay or clipping, so the update is the
    gradient; modules in eval mode (no dropout, no masking), so both passes compute the
    same function. A wrong division anywhere (window size, batch size, text count) fails."""
    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch

    from mtl_ser.data.text import CharVocabulary
    from tests.recipes.helpers import tiny_mtl_brain

    alpha = 0.1

    def plain_sgd(hparams):
        hparams["encoder_opt_class"] = hparams["heads_opt_class"] = lambda p: torch.optim.SGD(
            p, lr=1.0
        )

    brain = tiny_mtl_brain(
        tmp_path,
        f"--alpha={alpha}",
        "--lr_encoder=1.0",
        "--lr_heads=1.0",
        "--warmup_fraction=0.0",
        "--lr_decay=False",
        "--head_dropout=0.0",
        adjust=plain_sgd,
    )
    # SpeechBrain run options (tiny_mtl_brain passes none on).
    brain.grad_accumulation_factor, brain.max_grad_norm = 2, 1e9
    brain.batches_per_epoch, brain.steps_per_epoch = 2, 1
    brain.modules.eval()
    vocab = CharVocabulary()
    gen = torch.Generator().manual_seed(0)
    words = ["HI", "", "OK THEN", "YES", "NO", "", "WELL", "A B"]
    examples = [
        {
            "id": f"utt{i}",
            "sig": 0.1 * torch.randn(int(4000 + 500 * i), generator=gen),
            "emo_encoded": torch.tensor([i % 4]),
            "tokens": vocab.encode(w or " "),
            "ctc_mask": torch.tensor([bool(w)]),
            "wrd": w,
            "has_text": bool(w),
            "scripted": False,
            "duration": 0.25,
        }
        for i, w in enumerate(words)
    ]
    params = [
        p for opt in brain.optimizers_dict.values() for g in opt.param_groups for p in g["params"]
    ]

    # The released step: micro-batches of 2, each loss / 4, gradients summed.
    for m in range(4):
        part = examples[2 * m : 2 * m + 2]
        out = brain.compute_forward(PaddedBatch(part), sb.Stage.TRAIN)
        loss = F.cross_entropy(out.emo_logits, torch.cat([e["emo_encoded"] for e in part]))
        for i, e in enumerate(part):
            if e["has_text"]:
                loss = loss + alpha * F.ctc_loss(
                    out.ctc_log_probs[i, : out.frame_lens[i]].unsqueeze(1),
                    e["tokens"][None],
                    out.frame_lens[i : i + 1],
                    torch.tensor([len(e["tokens"])]),
                    blank=vocab.blank_index,
                    reduction="sum",
                    zero_infinity=True,
                )
        (loss / 4).backward()
    released = [p.grad.clone() for p in params]
    brain.zero_grad(set_to_none=True)

    before = [p.detach().clone() for p in params]
    brain.on_stage_start(sb.Stage.TRAIN)
    steps = brain.optimizer_step
    for step, part in ((1, examples[:4]), (2, examples[4:])):
        brain.step = step
        brain.fit_batch(PaddedBatch(part))
    assert brain.optimizer_step == steps + 1  # one step for the window of 2 batches
    for p, old, grad in zip(params, before, released, strict=True):
        torch.testing.assert_close(old - p.detach(), grad, rtol=1e-4, atol=1e-7)
