"""Runs a recipe under torchrun and saves each process's parameters as training left them
(before the test pass loads the chosen checkpoint), for tests/recipes/test_train_mtl.py.

    python -m torch.distributed.run --nproc_per_node=2 tests/recipes/ddp_params.py OUT \
        recipes/train_mtl.py hparams/mtl.yaml ... (the recipe's arguments)
"""

import os
import sys
from pathlib import Path

import torch

from mtl_ser.brain import EmotionBrain


def main() -> None:
    out, recipe, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, str(recipe.parent))
    from train_mtl import main as recipe_main

    evaluate = EmotionBrain.evaluate

    def save_then_evaluate(self, *args, **kwargs):
        state = {
            k.replace(".module.", "."): v.detach().cpu()
            for k, v in self.modules.state_dict().items()
        }
        torch.save(state, out / f"params_rank{os.environ['RANK']}.pt")
        return evaluate(self, *args, **kwargs)

    EmotionBrain.evaluate = save_then_evaluate
    recipe_main(argv)


if __name__ == "__main__":
    main()
