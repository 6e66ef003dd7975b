#!/usr/bin/env python3
"""CNN baseline of the original student study: log-mel spectrograms -> 3x3 conv blocks ->
the shared emotion head, on the same manifests, protocols, folds, Brain and outputs as the
wav2vec2 recipes.

    python recipes/train_cnn.py hparams/cnn.yaml --data_folder=/path/to/IEMOCAP
    python recipes/train_cnn.py hparams/cnn.yaml hparams/overrides/cnn_small.yaml \
        --data_folder=data/demo_corpus

Everything that differs from the multi-task run is in hparams/cnn.yaml: the encoder, and
its input, log-mel features from the feature cache (``features``) instead of waveforms.
The training flow is train_mtl.py's, run unchanged.
"""

import sys

from train_mtl import main

from mtl_ser.experiment import run_recipe_main

if __name__ == "__main__":
    sys.exit(run_recipe_main(main, sys.argv[1:]))
