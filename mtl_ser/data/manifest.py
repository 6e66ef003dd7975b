"""Manifests: writing, skip-if-done, invariant checks, summaries and loading.

A prepared folder holds::

    train.json valid.json test.json   SpeechBrain JSON: {utt_id: record}
    labels.json                       the class order (mtl_ser.data.labels.LabelSet)
    prepare_options.json              every option that decided the content, and under
                                      "split" what the split is (protocol, fold, folds,
                                      speaker-independent or not), read into run identities
    summary.txt                       what `prepare` printed
    PREPARED                          completion marker, written last

Wav paths start with ``{data_root}`` (the corpus folder) or ``{manifest_root}`` (this folder,
for audio converted during preparation), so both folders can move: `load_manifest` fills them.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from mtl_ser.data.audio import MIN_DURATION, MIN_SAMPLES, SAMPLE_RATE
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.protocols import SPLITS

MARKER = "PREPARED"
OPTIONS_FILE = "prepare_options.json"
SUMMARY_FILE = "summary.txt"
# Bumped when the manifest format changes: older folders are then regenerated.
# 2: the "split" facts in prepare_options.json; utterances shorter than MIN_SAMPLES refused.
MANIFEST_FORMAT = 2
SPLIT_KEY = "split"
# Above this many speakers in a split, summaries show the split's totals only (MSP-Podcast has
# thousands of speakers; its per-speaker table would bury the rest).
MAX_SUMMARY_SPEAKERS = 40

RECORD_KEYS = ("wav", "duration", "emo", "wrd", "transcript", "spk")


def manifest_paths(folder: str | Path) -> dict[str, Path]:
    """Returns ``{"train": folder/train.json, "valid": ..., "test": ...}``."""
    return {split: Path(folder) / f"{split}.json" for split in SPLITS}


def is_prepared(folder: str | Path, options: dict) -> bool:
    """True when ``folder`` holds a completed preparation made with exactly ``options``."""
    folder = Path(folder)
    options_file = folder / OPTIONS_FILE
    if not (folder / MARKER).is_file() or not options_file.is_file():
        return False
    if not all(p.is_file() for p in manifest_paths(folder).values()):
        return False
    stored = json.loads(options_file.read_text())
    stored.pop(SPLIT_KEY, None)  # a result of the preparation, not one of its options
    return stored == json.loads(json.dumps({**options, "manifest_format": MANIFEST_FORMAT}))


def read_split_info(folder: str | Path) -> dict:
    """The ``split`` facts saved by `write_prepared` ({} for folders prepared without them):
    ``protocol``, ``fold``, ``folds``, ``speaker_independent``, ``description``."""
    path = Path(folder) / OPTIONS_FILE
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get(SPLIT_KEY) or {})


def write_prepared(
    folder: str | Path,
    splits: dict[str, dict[str, dict]],
    label_set: LabelSet,
    options: dict,
    summary: str,
    split_info: dict | None = None,
) -> dict[str, Path]:
    """Writes a prepared folder; the marker is written last, so a crash leaves no marker.

    Args:
        folder: output folder (created).
        splits: ``{"train": {utt_id: record}, "valid": ..., "test": ...}``.
        label_set: class order saved as labels.json.
        options: JSON-serialisable preparation options (compared by `is_prepared`).
        summary: text saved as summary.txt.
        split_info: what the split is (``protocol``, ``fold``, ``folds``,
            ``speaker_independent``, ``description``), saved under "split" in
            prepare_options.json; training runs copy it into their identity.

    Returns: the manifest paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    paths = manifest_paths(folder)
    for split, path in paths.items():
        _write_json_atomic(path, splits[split])
    label_set.save(folder)
    (folder / SUMMARY_FILE).write_text(summary + "\n")
    stored = {**options, "manifest_format": MANIFEST_FORMAT}
    if split_info is not None:
        stored[SPLIT_KEY] = split_info
    _write_json_atomic(folder / OPTIONS_FILE, stored)
    (folder / MARKER).write_text("complete\n")
    return paths


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def check_splits(
    splits: dict[str, dict[str, dict]],
    label_set: LabelSet,
    speaker_independent: bool,
    roots: dict[str, str | Path],
) -> None:
    """Asserts the invariants every prepared folder must satisfy.

    Checks: ids unique across splits (test disjoint from train and valid); for
    speaker-independent splits, no test speaker in train or valid; every label in the label
    set; every record has the required keys, a duration of at least MIN_DURATION (see
    `check_min_duration`) and an existing wav.

    Args:
        splits: ``{split: {utt_id: record}}``.
        label_set: the allowed classes.
        speaker_independent: whether test speakers must be absent from train and valid.
        roots: values for the ``{data_root}`` / ``{manifest_root}`` placeholders.

    Raises:
        ValueError listing every violation found (at most 10 per kind).
    """
    problems = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        for utt_id in splits[split]:
            if utt_id in seen:
                problems.append(f"{utt_id} is in both {seen[utt_id]} and {split}")
            seen[utt_id] = split
    if speaker_independent:
        test_speakers = {r["spk"] for r in splits["test"].values()}
        for split in ("train", "valid"):
            shared = test_speakers & {r["spk"] for r in splits[split].values()}
            if shared:
                problems.append(f"test speakers also in {split}: {sorted(shared)}")
    bad_labels, bad_records = [], []
    for split in SPLITS:
        if not splits[split]:
            problems.append(f"the {split} split is empty")
        for utt_id, record in splits[split].items():
            if record.get("emo") not in label_set.classes:
                bad_labels.append(f"{utt_id}: {record.get('emo')!r}")
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                bad_records.append(f"{utt_id}: missing keys {missing}")
            elif not _long_enough(record["duration"]):
                bad_records.append(f"{utt_id}: duration {record['duration']} s < {MIN_DURATION} s")
            elif not Path(fill_path(record["wav"], roots)).is_file():
                bad_records.append(f"{utt_id}: no file {fill_path(record['wav'], roots)}")
    if bad_labels:
        problems.append(f"labels outside {list(label_set.classes)}: {bad_labels[:10]}")
    if bad_records:
        problems.append(f"{len(bad_records)} bad record(s): {bad_records[:10]}")
    if problems:
        raise ValueError("manifest invariants violated:\n  " + "\n  ".join(problems))


def _long_enough(duration) -> bool:
    # Durations are stored rounded to 0.1 ms; MIN_SAMPLES samples are exactly MIN_DURATION.
    return duration is not None and duration >= MIN_DURATION - 1e-9


class ManifestError(ValueError):
    """A manifest a recipe cannot train or test on (labels outside the set, test utterances
    in training, clips too short); the message names the manifest and the utterances."""


def check_min_duration(records: dict[str, dict], where: str = "manifest") -> None:
    """Refuses utterances too short for the encoders (fewer than MIN_SAMPLES samples at
    16 kHz, i.e. MIN_DURATION s: wav2vec2's first convolution and the CNN's STFT window).

    Preparation already refuses or skips them; recipes can call this on manifests made by
    older versions or by hand, before training rather than at the test pass.

    Args:
        records: ``{utt_id: record}`` with ``duration`` in seconds.
        where: names the manifest in the message.

    Raises:
        ManifestError (a ValueError) naming every such utterance (the first 10) and the minimum.
    """
    short = [
        f"{utt_id} ({record.get('duration')} s)"
        for utt_id, record in records.items()
        if not _long_enough(record.get("duration"))
    ]
    if short:
        more = f" ... (+{len(short) - 10} more)" if len(short) > 10 else ""
        raise ManifestError(
            f"{where}: {len(short)} utterance(s) shorter than the encoders' minimum of "
            f"{MIN_DURATION * 1000:g} ms ({MIN_SAMPLES} samples at {SAMPLE_RATE} Hz): "
            + ", ".join(short[:10])
            + more
            + "; prepare the data again (preparation refuses or skips them)"
        )


def speaker_overlap(splits: dict[str, list[dict]] | dict[str, dict[str, dict]]) -> list[str]:
    """Speakers of the test split that also occur in train or valid, sorted.

    Accepts splits as lists of records or as ``{utt_id: record}`` mappings.
    """

    def speakers(split):
        records = split.values() if isinstance(split, dict) else split
        return {r["spk"] for r in records}

    others = speakers(splits["train"]) | speakers(splits["valid"])
    return sorted(speakers(splits["test"]) & others)


def fill_path(path: str, roots: dict[str, str | Path]) -> str:
    """Replaces ``{data_root}`` / ``{manifest_root}`` in a manifest path."""
    for key, value in roots.items():
        path = path.replace("{" + key + "}", str(value))
    return path


def load_manifest(path: str | Path, data_root: str | Path | None = None) -> dict[str, dict]:
    """Reads a manifest and fills its path placeholders.

    Args:
        path: a ``train.json`` / ``valid.json`` / ``test.json``.
        data_root: the corpus folder for ``{data_root}`` (None: leave the placeholder).

    Returns: ``{utt_id: record}`` with ``wav`` made absolute where possible.
    """
    path = Path(path)
    roots = {"manifest_root": path.parent.resolve()}
    if data_root is not None:
        roots["data_root"] = Path(data_root).resolve()
    data = json.loads(path.read_text())
    for record in data.values():
        record["wav"] = fill_path(record["wav"], roots)
    return data


def summarize(splits: dict[str, dict[str, dict]], label_set: LabelSet, header: list[str]) -> str:
    """A plain-text table of utterances per split x speaker x class, plus hours per split.

    Args:
        splits: ``{split: {utt_id: record}}``.
        label_set: gives the column order.
        header: lines printed above the tables (protocol description, scan report, ...).

    Returns: the text.
    """
    classes = list(label_set.classes)
    width = max([6] + [len(c) + 1 for c in classes])
    lines = list(header)
    for split in SPLITS:
        records = splits[split].values()
        hours = sum(r["duration"] for r in records) / 3600
        lines.append("")
        lines.append(f"{split}: {len(splits[split])} utterances, {hours:.2f} h")
        counts = defaultdict(Counter)
        for r in records:
            counts[r["spk"]][r["emo"]] += 1
        if len(counts) > MAX_SUMMARY_SPEAKERS:
            lines.append(f"  {len(counts)} speakers (per-speaker rows omitted)")
            shown = {}
        else:
            shown = counts
        spk_width = max([8] + [len(s) + 1 for s in shown])
        lines.append(
            "  "
            + "speaker".ljust(spk_width)
            + "".join(c.rjust(width) for c in classes)
            + "total".rjust(width + 1)
        )
        totals = Counter()
        for spk in counts.values():
            totals.update(spk)
        for spk in sorted(shown):
            lines.append(
                "  "
                + spk.ljust(spk_width)
                + "".join(str(counts[spk][c]).rjust(width) for c in classes)
                + str(sum(counts[spk].values())).rjust(width + 1)
            )
        lines.append(
            "  "
            + "all".ljust(spk_width)
            + "".join(str(totals[c]).rjust(width) for c in classes)
            + str(sum(totals.values())).rjust(width + 1)
        )
    return "\n".join(lines)
