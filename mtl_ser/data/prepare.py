"""IEMOCAP preparation: scan -> label mapping -> protocol split -> checks -> manifests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mtl_ser.data.iemocap import Utterance, check_full_release, scan_iemocap
from mtl_ser.data.labels import iemocap_label_set
from mtl_ser.data.manifest import check_splits, is_prepared, summarize, write_prepared
from mtl_ser.data.protocols import SPEAKER_INDEPENDENT, SplitOptions, assign_splits, describe
from mtl_ser.data.text import NORMALIZATION_VERSION, normalize_transcript


def utterance_record(u: Utterance, label: str) -> dict:
    """The manifest record of one utterance (see README, "Manifests")."""
    wrd = normalize_transcript(u.transcript)
    return {
        "wav": "{data_root}/" + u.wav,
        "duration": u.duration,
        "emo": label,
        "label_raw": u.label_raw,
        "wrd": wrd,
        "transcript": u.transcript,
        # False when nothing is left after normalisation: kept for SER, skipped by WER/CTC.
        "has_text": bool(wrd),
        "spk": u.spk,
        "gender": u.gender,
        "session": u.session,
        "dialog": u.dialog,
        "scripted": u.scripted,
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
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of one fold of an IEMOCAP copy.

    Args:
        data_folder: folder holding Session1..Session5 (a partial copy is allowed).
        output_folder: where the manifests, labels.json, options and summary go.
        protocol, fold, valid_strategy, valid_fraction, valid_speaker, seed: see
            `mtl_ser.data.protocols.SplitOptions`.
        keep_exc_apart: keep ``exc`` as its own class instead of merging it into ``hap``.
        verbose: print the summary (and the skip notice).

    Returns:
        ``{"train": Path, "valid": Path, "test": Path}``.

    Re-running with identical options skips; any changed option regenerates. A copy that
    claims to be the full release must match the published counts (ValueError otherwise).
    """
    split_options = SplitOptions(
        protocol, int(fold), valid_strategy, float(valid_fraction), valid_speaker, int(seed)
    ).resolved()
    label_set = iemocap_label_set(keep_exc_apart)
    options = {
        "corpus": "iemocap",
        "data_folder": str(Path(data_folder).resolve()),
        **split_options.to_dict(),
        "labels": label_set.to_dict(),
        "normalization": NORMALIZATION_VERSION,
    }
    output_folder = Path(output_folder)
    if is_prepared(output_folder, options):
        if verbose:
            print(f"{output_folder}: already prepared with the same options, skipping")
        return {s: output_folder / f"{s}.json" for s in ("train", "valid", "test")}

    utterances, report = scan_iemocap(data_folder, progress=verbose)
    header = [describe(split_options), *report.lines(), *check_full_release(utterances, report)]
    records, dropped = [], Counter()
    for u in utterances:
        label = label_set.map(u.label_raw)
        if label is None:
            dropped[u.label_raw] += 1
        else:
            records.append({"id": u.id, **utterance_record(u, label)})
    header.append(
        f"kept {len(records)} utterances in classes {list(label_set.classes)}"
        + (f" (merged: {label_set.merge})" if label_set.merge else "")
        + "; dropped (label outside the set): "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none")
    )
    no_text = sum(not r["has_text"] for r in records)
    header.append(f"utterances with no text after normalisation (kept for SER, no WER): {no_text}")

    splits = {
        name: {r.pop("id"): r for r in split}
        for name, split in assign_splits(records, split_options).items()
    }
    check_splits(
        splits,
        label_set,
        speaker_independent=split_options.protocol in SPEAKER_INDEPENDENT,
        roots={"data_root": Path(data_folder).resolve(), "manifest_root": output_folder.resolve()},
    )
    summary = summarize(splits, label_set, header)
    paths = write_prepared(output_folder, splits, label_set, options, summary)
    if verbose:
        print(summary)
    return paths
