"""The shared Brain's optimiser step: clipping over every parameter, as configured."""

import pytest
import torch

from mtl_ser.brain import EmotionBrain
from tests.recipes.helpers import tiny_mtl_brain


def sgd_brain(tmp_path, clip: str):
    """The tiny multi-task Brain with plain SGD at learning rate 1 and no warm-up, so an
    optimiser step moves each parameter by exactly its (clipped) gradient."""

    def plain_sgd(hparams):
        hparams["encoder_opt_class"] = hparams["heads_opt_class"] = lambda p: torch.optim.SGD(
            p, lr=1.0
        )

    return tiny_mtl_brain(
        tmp_path,
        f"--grad_clip={clip}",
        "--max_grad_norm=1.0",
        "--lr_encoder=1.0",
        "--lr_heads=1.0",
        "--warmup_fraction=0.0",
        "--head_dropout=0.0",
        adjust=plain_sgd,
    )


def step_norms(brain: EmotionBrain) -> dict[str, float]:
    """Gives every parameter a gradient of 10s, steps, returns the update norm per optimiser
    and over all."""
    before = {}
    for name, optimizer in brain.optimizers_dict.items():
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.full_like(p, 10.0)
                before[p] = (name, p.detach().clone())
    brain.optimizers_step()
    squares = {"encoder": 0.0, "heads": 0.0}
    for p, (name, old) in before.items():
        squares[name] += float(((old - p.detach()) ** 2).sum())
    squares["all"] = squares["encoder"] + squares["heads"]
    return {k: v**0.5 for k, v in squares.items()}


def test_global_clipping_bounds_the_norm_over_all_parameters(tmp_path):
    norms = step_norms(sgd_brain(tmp_path, "global"))
    assert norms["all"] == pytest.approx(1.0, rel=1e-4)
    assert norms["encoder"] < 1.0 and norms["heads"] < 1.0


def test_per_optimizer_clipping_bounds_each_optimizer(tmp_path):
    norms = step_norms(sgd_brain(tmp_path, "per_optimizer"))
    assert norms["encoder"] == pytest.approx(1.0, rel=1e-4)
    assert norms["heads"] == pytest.approx(1.0, rel=1e-4)
    assert norms["all"] == pytest.approx(2**0.5, rel=1e-4)
