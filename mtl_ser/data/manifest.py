"""Manifests: writing, skip-if-done, invariant checks, summaries and loading.

A prepared folder holds::

    train.json valid.json test.json   SpeechBrain JSON: {utt_id: record}
    labels.json                       the class order (mtl_ser.data.labels.LabelSet)
    prepare_options.json              every option that decided the content, and under
                                      "split" what the split is (protocol, fold, folds,
                                      speaker-independent or not), read into run identities
    summary.txt                       what `prepare` printed
    prepare_inputs.json               what made the content: the options, one digest per
                                      utterance (its annotation and its audio's bytes), the
                                      converted files' sources and every output's digest
    PREPARED                          completion marker, written last

Every file is written atomically and the marker last, so an interrupted preparation leaves no
marker. "Already prepared" is believed only when the inputs' key is unchanged and every output
listed in prepare_inputs.json is present with its recorded digest (see `stale_reason`).

Wav paths start with ``{data_root}`` (the corpus folder) or ``{manifest_root}`` (this folder,
for audio converted during preparation), so both folders can move: `load_manifest` fills them.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from mtl_ser.data.audio import MIN_DURATION, MIN_SAMPLES, SAMPLE_RATE
from mtl_ser.data.fingerprint import DigestCache
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.protocols import SPLITS

MARKER = "PREPARED"
OPTIONS_FILE = "prepare_options.json"
SUMMARY_FILE = "summary.txt"
INPUTS_FILE = "prepare_inputs.json"
# Bumped when the manifest format changes: older folders are then regenerated.
# 2: the "split" facts in prepare_options.json; utterances shorter than MIN_SAMPLES refused.
# 3: prepare_inputs.json (folders keyed on their inputs' contents, outputs validated).
MANIFEST_FORMAT = 3
SPLIT_KEY = "split"
# Above this many speakers in a split, summaries show the split's totals only (MSP-Podcast has
# thousands of speakers; its per-speaker table would bury the rest).
MAX_SUMMARY_SPEAKERS = 40

RECORD_KEYS = ("wav", "duration", "emo", "wrd", "transcript", "spk")


def manifest_paths(folder: str | Path) -> dict[str, Path]:
    """Returns ``{"train": folder/train.json, "valid": ..., "test": ...}``."""
    return {split: Path(folder) / f"{split}.json" for split in SPLITS}


def _names(ids: list[str], shown: int = 3) -> str:
    more = f", +{len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} ({', '.join(ids[:shown])}{more})"


def stale_reason(folder: str | Path, inputs: dict, cache: DigestCache) -> str | None:
    """Whether ``folder`` holds a completed preparation of exactly ``inputs``.

    Args:
        folder: a prepared folder (or one that is not prepared yet).
        inputs: the key of this preparation: ``{"options": {...}, "records": {utt_id:
            digest}, "report": digest}`` (see `mtl_ser.data.corpora.base.prepare_corpus`).
        cache: digests of the outputs (a truncated or replaced output is noticed).

    Returns:
        None when the folder is complete, was made from the same key and every recorded
        output is present with its recorded digest; otherwise one phrase saying what differs
        (what changed in the inputs, or which output is missing or altered).
    """
    folder = Path(folder)
    if not (folder / MARKER).is_file():
        return "the earlier preparation did not complete"
    try:
        stored = json.loads((folder / INPUTS_FILE).read_text())
        if not isinstance(stored, dict):
            raise ValueError
    except (OSError, ValueError):
        return f"no readable {INPUTS_FILE} (prepared by an older version)"
    if stored.get("format") != MANIFEST_FORMAT:
        return f"manifest format {stored.get('format')} (now {MANIFEST_FORMAT})"
    reasons = []
    old_options, new_options = stored.get("options") or {}, inputs["options"]
    changed = sorted(
        k for k in set(old_options) | set(new_options) if old_options.get(k) != new_options.get(k)
    )
    if changed:
        reasons.append("options changed: " + ", ".join(changed))
    old, new = stored.get("records") or {}, inputs["records"]
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    altered = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    if added:
        reasons.append(f"utterances added: {_names(added)}")
    if removed:
        reasons.append(f"utterances removed: {_names(removed)}")
    if altered:
        reasons.append(f"utterances whose audio or annotation changed: {_names(altered)}")
    if stored.get("report") != inputs["report"]:
        reasons.append("the corpus scan reports something else")
    if reasons:
        return "; ".join(reasons)
    outputs = stored.get("outputs") or {}
    if not all(p.name in outputs for p in manifest_paths(folder).values()):
        return f"{INPUTS_FILE} lists no manifests"
    for relative, digest in sorted(outputs.items()):
        path = folder / relative
        if not path.is_file():
            return f"output {relative} is missing"
        if cache.digest(path) != digest:
            return f"output {relative} was changed or truncated"
    for path in manifest_paths(folder).values():
        try:
            if not isinstance(json.loads(path.read_text()), dict):
                raise ValueError
        except ValueError:
            return f"output {path.name} is not a manifest"
    return None


def read_prepared_inputs(folder: str | Path) -> dict:
    """The content of ``folder/prepare_inputs.json`` ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    inputs: dict | None = None,
    cache: DigestCache | None = None,
) -> dict[str, Path]:
    """Writes a prepared folder file by file (each atomically); the marker is removed first
    and written last, so a crash leaves no marker and the next run prepares again.

    Args:
        folder: output folder (created).
        splits: ``{"train": {utt_id: record}, "valid": ..., "test": ...}``.
        label_set: class order saved as labels.json.
        options: JSON-serialisable preparation options (saved in prepare_options.json).
        summary: text saved as summary.txt.
        split_info: what the split is (``protocol``, ``fold``, ``folds``,
            ``speaker_independent``, ``description``), saved under "split" in
            prepare_options.json; training runs copy it into their identity.
        inputs: the preparation's key (see `stale_reason`), plus ``converted``
            ``{relative path: source digest}`` of the converted audio; saved in
            prepare_inputs.json with the digests of every output (None: not saved).
        cache: computes those digests (required with ``inputs``).

    Returns: the manifest paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    paths = manifest_paths(folder)
    for split, path in paths.items():
        _write_json_atomic(path, splits[split])
    labels_path = label_set.save(folder)
    _write_text_atomic(folder / SUMMARY_FILE, summary + "\n")
    stored = {**options, "manifest_format": MANIFEST_FORMAT}
    if split_info is not None:
        stored[SPLIT_KEY] = split_info
    _write_json_atomic(folder / OPTIONS_FILE, stored)
    if inputs is not None:
        outputs = [*paths.values(), labels_path, folder / SUMMARY_FILE]
        outputs += [folder / OPTIONS_FILE, *(folder / p for p in inputs.get("converted", {}))]
        record = {"format": MANIFEST_FORMAT, **inputs}
        record["outputs"] = {p.relative_to(folder).as_posix(): cache.digest(p) for p in outputs}
        _write_json_atomic(folder / INPUTS_FILE, record)
        cache.save()
    _write_text_atomic(folder / MARKER, "complete\n")
    return paths


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
