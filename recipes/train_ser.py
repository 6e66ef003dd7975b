#!/usr/bin/env python3
"""SER-only baseline (Cai et al.'s alpha = 0): the same encoder, emotion head, loss and
metrics as the multi-task recipe, without CTC head.

    python recipes/train_ser.py hparams/ser.yaml --data_folder=/path/to/IEMOCAP

Everything that differs from the multi-task run is in hparams/ser.yaml; the training flow
is train_mtl.py's, run unchanged.
"""

import sys

from train_mtl import main

from mtl_ser.experiment import run_recipe_main

if __name__ == "__main__":
    sys.exit(run_recipe_main(main, sys.argv[1:]))
