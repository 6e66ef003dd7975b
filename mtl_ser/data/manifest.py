"""Manifests: writing, skip-if-done, invariant checks, summaries and loading.

A prepared folder holds::

    train.json valid.json test.json   SpeechBrain JSON: {utt_id: record}
    labels.json                       the class order (mtl_ser.data.labels.LabelSet)
    prepare_options.json              every option that decided the content
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

from mtl_ser.data.labels import LabelSet
from mtl_ser.data.protocols import SPLITS

MARKER = "PREPARED"
OPTIONS_FILE = "prepare_options.json"
SUMMARY_FILE = "summary.txt"
# Bumped when the manifest format changes: older folders are then regenerated.
MANIFEST_FORMAT = 1

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
    return stored == json.loads(json.dumps({**options, "manifest_format": MANIFEST_FORMAT}))


def write_prepared(
    folder: str | Path,
    splits: dict[str, dict[str, dict]],
    label_set: LabelSet,
    options: dict,
    summary: str,
) -> dict[str, Path]:
    """Writes a prepared folder; the marker is written last, so a crash leaves no marker.

    Args:
        folder: output folder (created).
        splits: ``{"train": {utt_id: record}, "valid": ..., "test": ...}``.
        label_set: class order saved as labels.json.
        options: JSON-serialisable preparation options (compared by `is_prepared`).
        summary: text saved as summary.txt.

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
    _write_json_atomic(folder / OPTIONS_FILE, {**options, "manifest_format": MANIFEST_FORMAT})
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
    set; every record has the required keys, a positive duration and an existing wav.

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
            elif not record["duration"] > 0:
                bad_records.append(f"{utt_id}: duration {record['duration']}")
            elif not Path(fill_path(record["wav"], roots)).is_file():
                bad_records.append(f"{utt_id}: no file {fill_path(record['wav'], roots)}")
    if bad_labels:
        problems.append(f"labels outside {list(label_set.classes)}: {bad_labels[:10]}")
    if bad_records:
        problems.append(f"{len(bad_records)} bad record(s): {bad_records[:10]}")
    if problems:
        raise ValueError("manifest invariants violated:\n  " + "\n  ".join(problems))


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
        spk_width = max([8] + [len(s) + 1 for s in counts])
        lines.append(
            "  "
            + "speaker".ljust(spk_width)
            + "".join(c.rjust(width) for c in classes)
            + "total".rjust(width + 1)
        )
        totals = Counter()
        for spk in sorted(counts):
            totals.update(counts[spk])
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
