"""Runs a recipe under torchrun and saves each process's parameters as training left them
(before the test pass loads the chosen checkpoint) and the utterance ids of each training
batch it took, for tests/recipes/test_train_mtl.py.

    python -m torch.distributed.run --nproc_per_node=2 tests/recipes/ddp_params.py OUT \
        recipes/train_mtl.py hparams/mtl.yaml ... (the recipe's arguments)
"""

import json
import os
import sys
from pathlib import Path

import torch

from mtl_ser.brain import EmotionBrain


def main() -> None:
    out, recipe, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, str(recipe.parent))
    from train_mtl import main as recipe_main

    evaluate, fit_batch = EmotionBrain.evaluate, EmotionBrain.fit_batch
    batches = []

    def recording_fit_batch(self, batch):
        batches.append(list(batch.id))
        return fit_batch(self, batch)

    def save_then_evaluate(self, *args, **kwargs):
        state = {
            k.replace(".module.", "."): v.detach().cpu()
            for k, v in self.modules.state_dict().items()
        }
        torch.save(state, out / f"params_rank{os.environ['RANK']}.pt")
        (out / f"batches_rank{os.environ['RANK']}.json").write_text(json.dumps(batches))
        return evaluate(self, *args, **kwargs)

    EmotionBrain.evaluate = save_then_evaluate
    EmotionBrain.fit_batch = recording_fit_batch
    recipe_main(argv)


if __name__ == "__main__":
    main()
