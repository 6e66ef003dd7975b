"""Non-finite batches and steps in the training Brain: a skipped batch leaves the mean over
the batches applied, a non-finite gradient (fp16 overflow, or a finite loss whose gradient
is not finite) skips the step without counting it, and the progress bar shows the epoch's
running mean. Real tiny model, real backward passes; the infinities are real gradients."""

import math

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from mtl_ser.brain import NonFiniteLossError
from mtl_ser.data.text import CharVocabulary
from tests.recipes.helpers import tiny_mtl_brain


def batch(seed: int, nan: bool = False) -> PaddedBatch:
    """Two utterances of 0.5 s noise with text; ``nan``: one waveform is NaN (the loss
    then is too)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = CharVocabulary()
    examples = []
    for i in range(2):
        sig = torch.randn(8000, generator=generator) * 0.1
        if nan and i == 0:
            sig[100] = math.nan
        examples.append(
            {
                "id": f"u{seed}_{i}",
                "sig": sig,
                "emo_encoded": torch.tensor([i]),
                "tokens": vocab.encode("HI THERE"),
                "ctc_mask": torch.tensor([True]),
                "wrd": "HI THERE",
                "has_text": True,
                "scripted": False,
                "duration": 0.5,
            }
        )
    return PaddedBatch(examples)


def sgd_brain(tmp_path, window: int):
    """The tiny multi-task Brain with SGD at learning rate 1, no warm-up, no clipping in
    effect and no dropout, in a training epoch of ``window`` batches (one window)."""

    def plain_sgd(hparams):
        hparams["encoder_opt_class"] = hparams["heads_opt_class"] = lambda p: torch.optim.SGD(
            p, lr=1.0
        )

    brain = tiny_mtl_brain(
        tmp_path,
        "--lr_encoder=1.0",
        "--lr_heads=1.0",
        "--warmup_fraction=0.0",
        "--head_dropout=0.0",
        "--mask_time_prob=0.0",
        adjust=plain_sgd,
    )
    brain.grad_accumulation_factor = window  # run options: set on the Brain itself
    brain.max_grad_norm = 1e9
    brain.batches_per_epoch = window
    brain.modules.eval()  # no dropout inside the encoder: two runs see the same gradient
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    return brain


def train(brain, *batches) -> None:
    for b in batches:
        brain.step += 1
        brain.fit_batch(b)


def parameters(brain) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in brain.modules.state_dict().items()}


def test_a_skipped_batch_leaves_the_mean_over_the_batches_applied(tmp_path):
    """A window of 2 whose second batch has a NaN loss applies the first batch's gradient
    alone (renormalised), as a window of 1 holding only that batch does."""
    window = sgd_brain(tmp_path / "a", window=2)
    train(window, batch(1), batch(2, nan=True))
    alone = sgd_brain(tmp_path / "b", window=1)
    train(alone, batch(1))
    assert window.nonfinite_batches == 1 and window.optimizer_step == alone.optimizer_step == 1
    got, want = parameters(window), parameters(alone)
    initial = parameters(sgd_brain(tmp_path / "c", window=1))
    assert any(not torch.equal(want[k], initial[k]) for k in want), "the step moved nothing"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_a_window_of_skipped_batches_takes_no_step_and_keeps_the_schedule(tmp_path):
    brain = sgd_brain(tmp_path, window=1)
    train(brain, batch(1, nan=True))
    assert brain.nonfinite_batches == 1 and brain.optimizer_step == 0
    assert all(s.current_step == 0 for s in brain.schedulers.values())


def infinite_gradient(brain):
    """Makes one encoder parameter's gradient infinite in every backward pass (the loss
    stays finite); returns the hook's handle."""
    param = next(p for p in brain.modules.encoder.parameters() if p.requires_grad)
    return param.register_hook(lambda grad: torch.full_like(grad, math.inf))


def test_a_finite_loss_with_an_infinite_gradient_skips_the_step(tmp_path):
    brain = sgd_brain(tmp_path, window=1)
    before = parameters(brain)
    lrs = {n: o.param_groups[0]["lr"] for n, o in brain.optimizers_dict.items()}
    handle = infinite_gradient(brain)
    train(brain, batch(1))
    assert brain.nonfinite_batches == 0  # the loss was finite
    assert brain.nonfinite_steps == 1 and brain.optimizer_step == 0
    after = parameters(brain)
    assert all(torch.equal(before[k], after[k]) for k in before), "a parameter moved"
    assert all(s.current_step == 0 for s in brain.schedulers.values())
    assert {n: o.param_groups[0]["lr"] for n, o in brain.optimizers_dict.items()} == lrs
    handle.remove()
    brain.step = 0
    train(brain, batch(2))  # the next finite step is applied and counted
    assert brain.optimizer_step == 1 and all(s.current_step == 1 for s in brain.schedulers.values())
    brain.on_stage_end(sb.Stage.TRAIN, None, epoch=1)
    assert brain.train_stats["nonfinite_steps"] == 1
    assert brain.train_stats["nonfinite_batches"] == 0
    assert brain.epoch_steps == 1


def test_a_step_the_gradient_scaler_skips_is_not_counted(tmp_path):
    """fp16's GradScaler (here a real, enabled one on the CPU) finds an infinite gradient:
    the step is skipped, not counted, the schedules stay, and the scale is lowered."""
    brain = sgd_brain(tmp_path, window=1)
    brain.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    infinite_gradient(brain)
    train(brain, batch(1))
    assert brain.scaler.get_scale() == 2.0**15
    assert brain.nonfinite_steps == 1 and brain.optimizer_step == 0
    assert all(s.current_step == 0 for s in brain.schedulers.values())


def test_consecutive_non_finite_steps_stop_training(tmp_path):
    brain = sgd_brain(tmp_path, window=1)
    infinite_gradient(brain)
    train(brain, batch(1), batch(2))
    with pytest.raises(NonFiniteLossError, match="3 consecutive optimiser steps"):
        train(brain, batch(3))


def test_the_progress_bar_shows_the_running_mean_of_each_loss(tmp_path):
    brain = sgd_brain(tmp_path, window=1)
    totals, emotions, ctcs = [], [], []
    for b in (batch(1), batch(2)):
        train(brain, b)
        losses = brain.batch_losses
        totals.append(float(losses.total.detach()))
        emotions.append(float(losses.emo.detach()))
        ctcs.append(float(losses.ctc.detach()))
    shown = brain.update_average(torch.tensor(0.0), 0.0)
    assert shown == (
        f"{sum(totals) / 2:.4f} (emotion {sum(emotions) / 2:.4f}, CTC {sum(ctcs) / 2:.4f})"
    )


def _skipped_window_end_rank(rank: int, folder: str) -> None:
    """One of two gloo processes: a window of 2 whose last batch (NaN in every process)
    is skipped, so no backward pass of the window all-reduced; saves the parameters."""
    from pathlib import Path

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2
    )
    brain = sgd_brain(Path(folder) / f"rank{rank}", window=2)
    brain.distributed_launch = True  # the modules stay unwrapped: as under no_sync
    train(brain, batch(1 + rank), batch(9, nan=True))
    assert brain.nonfinite_batches == 1 and brain.optimizer_step == 1
    torch.save(parameters(brain), f"{folder}/params{rank}.pt")
    torch.distributed.destroy_process_group()


def test_a_window_ending_in_a_skipped_batch_still_averages_the_processes(tmp_path):
    """Under DDP the window's last batch carries the gradient all-reduce; when it is
    skipped, the processes' gradients are averaged before the step, so they stay equal."""
    torch.multiprocessing.spawn(_skipped_window_end_rank, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"params{r}.pt") for r in (0, 1)]
    for key in ranks[0]:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=1e-5, atol=1e-7)
