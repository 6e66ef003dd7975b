"""The corpora `mtl-ser prepare` knows: name -> command-line options -> library call.

Adding a corpus: a module with a ``prepare_<corpus>`` function built on
`mtl_ser.data.corpora.base.prepare_corpus`, and one `Corpus` entry below. Every entry gets
``--output-folder`` and ``--on-error fail|skip``; the CLI adds nothing corpus-specific.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtl_ser.data.protocols import PROTOCOL_FOLDS, VALID_STRATEGIES


@dataclass(frozen=True)
class Corpus:
    """One `mtl-ser prepare` sub-command.

    Attributes:
        name: the sub-command (``ravdess``).
        help: one line for ``mtl-ser prepare -h``.
        add_arguments: adds the corpus's own options to its parser.
        prepare: runs the preparation from the parsed arguments; returns the manifest paths.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    prepare: Callable[[argparse.Namespace], dict[str, Path]]


def _label_set_option(parser, choices=("all", "4class")) -> None:
    parser.add_argument(
        "--label-set",
        choices=choices,
        default="all",
        help="all: the corpus's emotions; 4class: neu, hap, ang, sad (others dropped, counted)",
    )


def _fold_options(parser, default_folds: int) -> None:
    parser.add_argument("--fold", type=int, default=1, help="which actor fold tests (1-based)")
    parser.add_argument(
        "--folds", type=int, default=default_folds, help="number of speaker-independent folds"
    )


def _table_options(parser) -> None:
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated classes in order (default neu,hap,ang,sad with exc merged to hap)",
    )
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--allow-speaker-overlap", action="store_true")


def _labels(args):
    from mtl_ser.data.labels import parse_label_list

    return parse_label_list(args.labels) if args.labels else None


# ------------------------------------------------------------------------------ IEMOCAP
def _iemocap_arguments(parser) -> None:
    parser.add_argument("--data-folder", required=True, help="folder with Session1..5")
    parser.add_argument("--protocol", default="loso", choices=sorted(PROTOCOL_FOLDS))
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument(
        "--keep-exc-apart", action="store_true", help="exc as a 5th class, not merged into hap"
    )
    parser.add_argument(
        "--valid-strategy",
        choices=VALID_STRATEGIES,
        default=None,
        help="validation from training: stratified fraction (default) or one held-out speaker",
    )
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--valid-speaker", default=None, help="e.g. Ses02F (with 'speaker')")
    parser.add_argument("--seed", type=int, default=1234)


def _iemocap(args):
    from mtl_ser.data.prepare import prepare_iemocap

    return prepare_iemocap(
        args.data_folder,
        args.output_folder,
        protocol=args.protocol,
        fold=args.fold,
        keep_exc_apart=args.keep_exc_apart,
        valid_strategy=args.valid_strategy,
        valid_fraction=args.valid_fraction,
        valid_speaker=args.valid_speaker,
        seed=args.seed,
        on_error=args.on_error,
    )


# ---------------------------------------------------------------------------------- CSV
def _csv_arguments(parser) -> None:
    parser.add_argument("--csv", required=True)
    parser.add_argument("--audio-root", required=True, help="folder relative paths start from")
    _table_options(parser)
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept paths leading outside the audio root (stored absolute, not relocatable)",
    )


def _csv(args):
    from mtl_ser.data.csv_corpus import prepare_csv

    return prepare_csv(
        args.csv,
        args.audio_root,
        args.output_folder,
        label_set=_labels(args),
        on_error=args.on_error,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        allow_speaker_overlap=args.allow_speaker_overlap,
        allow_outside_root=args.allow_outside_root,
    )


# ------------------------------------------------------------------------------ RAVDESS
def _ravdess_arguments(parser) -> None:
    from mtl_ser.data.corpora.ravdess import DEFAULT_FOLDS, SONG_POLICIES

    parser.add_argument("--data-folder", required=True, help="folder with Actor_01..Actor_24")
    _fold_options(parser, DEFAULT_FOLDS)
    _label_set_option(parser)
    parser.add_argument(
        "--songs",
        choices=SONG_POLICIES,
        default="refuse",
        help="song files (vocal channel 02): refuse them as bad files, or skip and count",
    )


def _ravdess(args):
    from mtl_ser.data.corpora.ravdess import prepare_ravdess

    return prepare_ravdess(
        args.data_folder,
        args.output_folder,
        fold=args.fold,
        folds=args.folds,
        label_set=args.label_set,
        songs=args.songs,
        on_error=args.on_error,
    )


# ------------------------------------------------------------------------------ CREMA-D
def _crema_d_arguments(parser) -> None:
    from mtl_ser.data.corpora.crema_d import DEFAULT_FOLDS

    parser.add_argument(
        "--data-folder", required=True, help="folder with AudioWAV/ (and VideoDemographics.csv)"
    )
    _fold_options(parser, DEFAULT_FOLDS)
    _label_set_option(parser)


def _crema_d(args):
    from mtl_ser.data.corpora.crema_d import prepare_crema_d

    return prepare_crema_d(
        args.data_folder,
        args.output_folder,
        fold=args.fold,
        folds=args.folds,
        label_set=args.label_set,
        on_error=args.on_error,
    )


# -------------------------------------------------------------------------- MSP-Podcast
def _msp_arguments(parser) -> None:
    from mtl_ser.data.corpora.msp_podcast import TEST_SETS

    parser.add_argument(
        "--data-folder", required=True, help="release folder with Audios/, Labels/, Transcripts/"
    )
    parser.add_argument("--test-set", choices=TEST_SETS, default="Test1")
    _label_set_option(parser)
    parser.add_argument("--allow-speaker-overlap", action="store_true")


def _msp(args):
    from mtl_ser.data.corpora.msp_podcast import prepare_msp_podcast

    return prepare_msp_podcast(
        args.data_folder,
        args.output_folder,
        test_set=args.test_set,
        label_set=args.label_set,
        allow_speaker_overlap=args.allow_speaker_overlap,
        on_error=args.on_error,
    )


# --------------------------------------------------------------------- Hugging Face
def _hf_arguments(parser) -> None:
    parser.add_argument(
        "--dataset", required=True, help="a save_to_disk folder, or a name load_dataset finds"
    )
    parser.add_argument("--config", default=None, help="the dataset configuration, if any")
    parser.add_argument("--audio-column", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--speaker-column", default=None)
    parser.add_argument(
        "--split-column", default=None, help="values train / valid (validation, dev) / test"
    )
    _table_options(parser)


def _hf(args):
    from mtl_ser.data.corpora.hf import prepare_hf

    return prepare_hf(
        args.dataset,
        args.output_folder,
        audio_column=args.audio_column,
        label_column=args.label_column,
        text_column=args.text_column,
        speaker_column=args.speaker_column,
        split_column=args.split_column,
        config=args.config,
        label_set=_labels(args),
        on_error=args.on_error,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        allow_speaker_overlap=args.allow_speaker_overlap,
    )


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("iemocap", "the IEMOCAP release layout", _iemocap_arguments, _iemocap),
        Corpus("csv", "a CSV: path, emotion, transcript, speaker, split", _csv_arguments, _csv),
        Corpus("ravdess", "RAVDESS speech: Actor_NN/03-01-*.wav", _ravdess_arguments, _ravdess),
        Corpus("crema-d", "CREMA-D: AudioWAV/AAAA_SSS_EEE_LL.wav", _crema_d_arguments, _crema_d),
        Corpus(
            "msp-podcast",
            "MSP-Podcast: Audios/, Labels/labels_consensus.csv, Transcripts/",
            _msp_arguments,
            _msp,
        ),
        Corpus("hf", "a Hugging Face datasets dataset (folder or cache)", _hf_arguments, _hf),
    )
}


def add_prepare_commands(subparsers) -> None:
    """Adds ``prepare <corpus>`` for every registered corpus to an argparse sub-parser set."""
    prepare = subparsers.add_parser("prepare", help="write train/valid/test manifests")
    corpora = prepare.add_subparsers(dest="corpus", required=True)
    for corpus in CORPORA.values():
        parser = corpora.add_parser(corpus.name, help=corpus.help)
        corpus.add_arguments(parser)
        parser.add_argument("--output-folder", required=True)
        parser.add_argument(
            "--on-error",
            choices=("fail", "skip"),
            default="fail",
            help="bad files / rows: fail naming each (default), or skip and count them",
        )
        parser.set_defaults(func=_runner(corpus))


def _runner(corpus: Corpus):
    def run(args) -> None:  # the CLI's exit status comes from the return value: none here
        corpus.prepare(args)

    return run
