#!/usr/bin/env python3
"""Multi-task speech emotion recognition: emotion + CTC characters on a shared wav2vec 2.0
encoder, L = L_emo + alpha * L_ctc (Cai et al., Interspeech 2021).

    python recipes/train_mtl.py hparams/mtl.yaml --data_folder=/path/to/IEMOCAP
    python recipes/train_mtl.py hparams/mtl.yaml hparams/overrides/tiny.yaml \
        --data_folder=data/demo_corpus
    torchrun --nproc_per_node=2 recipes/train_mtl.py hparams/mtl.yaml --data_folder=...

The SER-only baseline (train_ser.py) runs this same script with hparams/ser.yaml.
Outputs in <output_folder>: results.json, predictions.csv, confusion_matrix.png,
training_curves.png, train_log.txt, checkpoints in save/.
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from mtl_ser.brain import EmotionBrain
from mtl_ser.data.pipelines import dataio_prep, eval_loader_options, train_loader_options
from mtl_ser.experiment import (
    claim_run_folder,
    end_distributed,
    experiment_vocabulary,
    fit_calibration,
    given_keys,
    label_set_of,
    lock_run_folder,
    parse_arguments,
    prepare_data,
    run_identity,
    run_recipe_main,
    run_setting_values,
)
from mtl_ser.hparams_check import check_hparams


def main(argv):
    hparams_file, run_opts, overrides = parse_arguments(argv)
    # Every value checked before anything is built; then one writer per run folder.
    config = check_hparams(hparams_file, overrides, run_opts, set(given_keys(argv)))
    lock_run_folder(config["output_folder"])
    # A run folder holds one setting: a re-run with another one is refused here.
    setting_values = run_setting_values(hparams_file, overrides, config, run_opts)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    # Manifests for this protocol and fold (skipped when already prepared alike).
    prepare_data(hparams)

    # Class order from the manifests; characters from the training transcripts.
    label_set = label_set_of(hparams)
    setting = claim_run_folder(hparams, setting_values)
    vocab = experiment_vocabulary(
        hparams["output_folder"],
        hparams["train_annotation"],
        (hparams["valid_annotation"], hparams["test_annotation"]),
    )
    hparams["emotion_head"].set_num_classes(len(label_set.classes))
    if "ctc_head" in hparams["modules"]:  # the CNN baseline has no CTC head
        hparams["modules"]["ctc_head"].set_num_tokens(len(vocab))
    datasets = dataio_prep(hparams, label_set, vocab)

    brain = EmotionBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        labels=label_set.classes,
        vocab=vocab,
        identity={**run_identity(hparams, label_set), "setting": setting},
    )
    # Early stopping and checkpoint choice use the validation set only.
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_loader_options(hparams, datasets["train"], brain.device),
        valid_loader_kwargs=eval_loader_options(hparams, brain.device),
    )
    # Temperature scaling (calibration: temperature): fitted on validation logits only.
    fit_calibration(brain, datasets["valid"], eval_loader_options(hparams, brain.device))
    # The test set, once, from the checkpoint chosen on validation (checkpoint_selection).
    brain.evaluate(datasets["test"], test_loader_kwargs=eval_loader_options(hparams, brain.device))
    if sb.utils.distributed.if_main_process():
        results = brain.results
        wer, cer = (
            "n/a" if results[key] is None else f"{results[key]:.3f}" for key in ("wer", "cer")
        )
        print(
            f"test ({results['num_utterances']} utterances): WA {results['wa']:.2%}  "
            f"UA {results['ua']:.2%}  macro-F1 {results['macro_f1']:.2%}  WER {wer}  CER {cer}\n"
            f"results in {hparams['output_folder']}/results.json"
        )
        if results.get("text_view"):  # which transcripts the emotion head read (oracle?)
            print(f"text view: {results['text_view']}")
    end_distributed()
    return brain


if __name__ == "__main__":
    sys.exit(run_recipe_main(main, sys.argv[1:]))
