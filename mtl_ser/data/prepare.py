"""IEMOCAP preparation: scan -> label mapping -> protocol split -> checks -> manifests."""

from __future__ import annotations

from pathlib import Path

from mtl_ser.data.corpora.base import Scan, Split, prepare_corpus
from mtl_ser.data.iemocap import Utterance, check_full_release, scan_iemocap
from mtl_ser.data.labels import iemocap_label_set
from mtl_ser.data.protocols import (
    PROTOCOL_FOLDS,
    SPEAKER_INDEPENDENT,
    SplitOptions,
    assign_splits,
    describe,
)


def scanned_record(u: Utterance, root: Path) -> dict:
    """The scanned record of one utterance (see `mtl_ser.data.corpora.base`); its manifest
    record is described in the README ("Data")."""
    return {
        "id": u.id,
        "source": root / u.wav,
        "where": u.wav,
        "label_raw": u.label_raw,
        "transcript": u.transcript,
        "spk": u.spk,
        "gender": u.gender,
        "session": u.session,
        "dialog": u.dialog,
        "scripted": u.scripted,
        # Dimensional emotion: the annotators' means (1-5), for the `dimensions` task.
        "arousal": u.arousal,
        "valence": u.valence,
        "dominance": u.dominance,
    }


def prepare_iemocap(
    data_folder: str | Path,
    output_folder: str | Path,
    protocol: str = "loso",
    fold: int = 1,
    keep_exc_apart: bool = False,
    valid_strategy: str | None = None,
    valid_fraction: float = 0.1,
    valid_speaker: str | None = None,
    seed: int = 1234,
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of one fold of an IEMOCAP copy.

    Args:
        data_folder: folder holding Session1..Session5 (a partial copy is allowed).
        output_folder: where the manifests, labels.json, options and summary go.
        protocol, fold, valid_strategy, valid_fraction, valid_speaker, seed: see
            `mtl_ser.data.protocols.SplitOptions`.
        keep_exc_apart: keep ``exc`` as its own class instead of merging it into ``hap``.
        on_error: "fail" or "skip" for wavs with non-finite samples or too short for the
            encoders (see `mtl_ser.data.corpora.base.prepare_corpus`).
        verbose: print the summary (and the skip notice).

    Returns:
        ``{"train": Path, "valid": Path, "test": Path}``.

    Re-running with identical options skips; any changed option regenerates. A copy that
    claims to be the full release must match the published counts (ValueError otherwise).
    """
    split_options = SplitOptions(
        protocol, int(fold), valid_strategy, float(valid_fraction), valid_speaker, int(seed)
    ).resolved()
    root = Path(data_folder)
    options = {
        "corpus": "iemocap",
        "data_folder": str(root.resolve()),
        **split_options.to_dict(),
    }

    def scan() -> Scan:
        utterances, report = scan_iemocap(root, progress=verbose)
        lines = [*report.lines(), *check_full_release(utterances, report)]
        return Scan(
            [scanned_record(u, root) for u in utterances], lines, source=str(root), what="file"
        )

    def split(records: list[dict]) -> Split:
        return Split(
            assign_splits(records, split_options),
            protocol=split_options.protocol,
            fold=split_options.fold,
            folds=PROTOCOL_FOLDS[split_options.protocol],
            speaker_independent=split_options.protocol in SPEAKER_INDEPENDENT,
            description=describe(split_options),
        )

    return prepare_corpus(
        output_folder,
        options,
        iemocap_label_set(keep_exc_apart),
        scan,
        split,
        data_root=root,
        on_error=on_error,
        verbose=verbose,
    )
