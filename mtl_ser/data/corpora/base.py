"""The one preparation pipeline every corpus goes through.

A corpus module supplies two functions and its options; everything else is shared::

    scan()          -> Scan: one record per usable file, plus report lines and bad items
    (shared)           label mapping (outside the set: dropped and counted), audio checks
                       (unreadable, empty, NaN / Inf, shorter than MIN_DURATION: refused or
                       skipped), conversion of other rates / channels to 16 kHz mono
    split(records)  -> Split: train / valid / test and what the split is
    (shared)           invariant checks, summary, manifests, inputs' key, marker

One rule decides whether a folder is already prepared: its key is the options, one digest per
kept utterance (its scanned record: label, transcript, speaker, path, ..., and its audio's
bytes) and a digest of the scan report. The scan therefore always runs (it reads the
annotation files and lists the audio); audio bytes are digested through a cache in the
output folder (`mtl_ser.data.fingerprint.DigestCache`), so a re-run costs a stat per file.
A folder whose key differs, or whose outputs are missing or altered, is prepared again and
one line says why; converted audio is reused only when its source's content digest is the
one it was made from and the converted file still has its recorded digest.

A scanned record is a flat dict with at least ``id``, ``source`` (the audio file, a Path),
``where`` (how messages name it, e.g. ``Actor_01/03-01-01-01-01-01-01.wav`` or ``line 5
(a.wav)``), ``label_raw``, ``transcript`` (raw, "" when none), ``spk`` and ``gender``; an
optional ``split`` hint (train / valid / test) for corpora that come split; any other keys
(``session``, ``scripted``, ...) go into the manifest record unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from mtl_ser.data.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, inspect_audio, load_audio
from mtl_ser.data.fingerprint import DIGEST_CACHE_FILE, DigestCache, text_digest
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import (
    MARKER,
    check_splits,
    manifest_paths,
    read_prepared_inputs,
    stale_reason,
    summarize,
    write_prepared,
)
from mtl_ser.data.protocols import SPLITS, speaker_folds
from mtl_ser.data.text import NORMALIZATION_VERSION, dropped_characters, normalize_transcript
from mtl_ser.progress import Progress, track

CONVERTED_FOLDER = "audio_16k"
ON_ERROR = ("fail", "skip")
# Keys of a scanned record that are not written into the manifest.
INTERNAL_KEYS = ("id", "source", "where", "split")


@dataclass
class Scan:
    """What a corpus scan found.

    Attributes:
        records: scanned records (see the module docstring).
        lines: report lines for the summary (files found, anomalies, ...).
        errors: bad items, each naming its file and the reason; refused or skipped with the
            audio problems found later, per ``on_error``.
        source: names the corpus in error messages (a folder or a CSV file).
        what: the unit of ``errors`` ("file", "row").
    """

    records: list[dict]
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str = ""
    what: str = "file"


@dataclass
class Split:
    """A split and what it is.

    Attributes:
        splits: ``{"train": [records], "valid": [...], "test": [...]}``.
        protocol: the protocol's name (e.g. ``loso``, ``actor_folds``, ``official``).
        fold: 1-based fold number.
        folds: the protocol's number of folds.
        speaker_independent: whether no test speaker is in train or valid (checked).
        description: one line for the summary.
    """

    splits: dict[str, list[dict]]
    protocol: str
    fold: int
    folds: int
    speaker_independent: bool
    description: str

    def info(self) -> dict:
        """The facts saved with the manifests (see `mtl_ser.data.manifest.read_split_info`)."""
        return {
            "protocol": self.protocol,
            "fold": self.fold,
            "folds": self.folds,
            "speaker_independent": self.speaker_independent,
            "description": self.description,
        }


def listing_fingerprint(files: list[Path], root: Path) -> str:
    """SHA-1 of the sorted relative paths and sizes of ``files``: a corpus copy that gains,
    loses or changes a file is prepared again."""
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def prepare_corpus(
    output_folder: str | Path,
    options: dict,
    label_set: LabelSet,
    scan: Callable[[], Scan],
    split: Callable[[list[dict]], Split],
    data_root: str | Path | None,
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """Scans, checks, splits and writes one corpus (see the module docstring).

    Args:
        output_folder: where manifests, labels.json, options, summary and converted audio go.
            Nothing is written anywhere else.
        options: JSON-serialisable options that decide the content (the corpus name, its
            folder, a fingerprint of its files, protocol options, ...); the label set,
            ``on_error``, the transcript normalisation and the minimum duration are added.
        label_set: the classes kept, in order; other labels are dropped and counted.
        scan: returns the corpus's `Scan` (always called: its records are part of the key).
        split: assigns the kept, checked records to train / valid / test.
        data_root: the folder ``{data_root}`` stands for in wav paths (None: none).
        on_error: "fail" (raise listing every bad item) or "skip" (print and count them).
        verbose: progress and the summary on the terminal.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``. An earlier preparation in
    ``output_folder`` is kept only when made from the same key and its outputs validate
    (see the module docstring); otherwise one printed line says what changed.

    Raises:
        ValueError: bad items with ``on_error="fail"``, an empty split, violated invariants.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    output_folder = Path(output_folder)
    options = {
        **options,
        "labels": label_set.to_dict(),
        "on_error": on_error,
        "normalization": NORMALIZATION_VERSION,
        "min_samples": MIN_SAMPLES,
    }
    found = scan()
    kept, dropped = [], Counter()
    for record in found.records:
        label = label_set.map(record["label_raw"])
        if label is None:
            dropped[record["label_raw"]] += 1
        else:
            kept.append({**record, "emo": label})
    cache = DigestCache(output_folder / DIGEST_CACHE_FILE)
    inputs = {
        "options": json.loads(json.dumps(options)),
        "records": _record_digests(kept, cache, verbose),
        "report": text_digest([found.lines, found.errors, sorted(dropped.items())]),
    }
    reason = stale_reason(output_folder, inputs, cache)
    if reason is None:
        cache.save()
        if verbose:
            print(f"{output_folder}: already prepared with the same options and inputs, skipping")
        return manifest_paths(output_folder)
    previous = read_prepared_inputs(output_folder)
    if previous or (output_folder / MARKER).exists():
        print(f"{output_folder}: preparing again: {reason}")

    errors = list(found.errors)
    records = []
    for record in track(kept, "checking audio", unit="file", enabled=verbose):
        try:
            info = inspect_audio(record["source"])
        except AudioError as err:
            errors.append(f"{record['where']}: {err.reason}")
            continue
        record["duration"] = info.duration
        record["_convert"] = info.needs_conversion
        records.append(record)
    if errors and on_error == "fail":
        raise ValueError(
            f"{found.source}: {len(errors)} bad {found.what}(s) (use --on-error skip to skip "
            "them):\n  " + "\n  ".join(errors)
        )
    for error in errors:
        print(f"skipped {error}")

    header = [*found.lines, f"skipped {found.what}s: {len(errors)}"]
    header.append(
        f"kept {len(records)} utterances in classes {list(label_set.classes)}"
        + (f" (merged: {label_set.merge})" if label_set.merge else "")
        + "; dropped (label outside the set): "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none")
    )
    roots = {"manifest_root": output_folder.resolve()}
    if data_root is not None:
        roots["data_root"] = Path(data_root).resolve()
    converted = _place_audio(records, roots, verbose, cache, previous)
    if converted:
        header.append(f"converted to 16 kHz mono under {CONVERTED_FOLDER}/: {len(converted)} files")
    dropped_chars, dropped_in = Counter(), []
    for record in records:
        record["wrd"] = normalize_transcript(record["transcript"])
        # False when nothing is left after normalisation: kept for SER, skipped by WER/CTC.
        record["has_text"] = bool(record["wrd"])
        lost = dropped_characters(record["transcript"])
        if lost:
            dropped_chars.update(lost)
            dropped_in.append(record["id"])
    no_text = sum(not r["has_text"] for r in records)
    header.append(f"utterances with no text after normalisation (kept for SER, no WER): {no_text}")
    if dropped_chars:
        header.append(dropped_characters_line(dropped_chars, dropped_in))

    result = split(records)
    splits = {name: {r["id"]: _manifest_record(r) for r in result.splits[name]} for name in SPLITS}
    check_splits(splits, label_set, result.speaker_independent, roots)
    summary = summarize(splits, label_set, [result.description, *header])
    inputs["converted"] = converted
    paths = write_prepared(
        output_folder, splits, label_set, options, summary, result.info(), inputs, cache
    )
    if verbose:
        print(summary)
    return paths


def dropped_characters_line(counts: Counter, utterances: list[str], shown: int = 10) -> str:
    """One line naming characters left out of CTC transcripts: each with its count (the
    ``shown`` most frequent), how many utterances had any, and the first few of them."""
    chars = ", ".join(f"{c!r} {n}" for c, n in counts.most_common(shown))
    more = f" (+{len(counts) - shown} more kinds)" if len(counts) > shown else ""
    examples = ", ".join(utterances[:3]) + (" ..." if len(utterances) > 3 else "")
    return (
        f"characters dropped from transcripts (not letters): {sum(counts.values())}: "
        f"{chars}{more}; in {len(utterances)} utterance(s), e.g. {examples}"
    )


def _record_digests(records: list[dict], cache: DigestCache, verbose: bool) -> dict[str, str]:
    """One digest per record: its scanned fields and its audio's bytes (the latter also kept
    as ``record["_source_digest"]``, None when the file cannot be read: the audio check then
    names it).

    Returns: ``{utt_id: digest}``.
    """
    digests = {}
    for record in track(records, "digesting audio", unit="file", enabled=verbose):
        try:
            record["_source_digest"] = cache.digest(record["source"])
        except OSError:
            record["_source_digest"] = None
        fields = {k: v for k, v in record.items() if k != "_source_digest"}
        digests[record["id"]] = text_digest([fields, record["_source_digest"]])
    return digests


def _manifest_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in INTERNAL_KEYS and not k.startswith("_")}


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(utt_id: str) -> str:
    """A relative path made of ``utt_id`` that stays inside its folder: its ``/``-separated
    parts with odd characters replaced, and empty, ``.`` and ``..`` parts left out."""
    parts = [_UNSAFE.sub("_", p) for p in utt_id.replace("\\", "/").split("/")]
    return "/".join(p for p in parts if p not in ("", ".", "..")) or "_"


def _place_audio(
    records: list[dict], roots: dict, verbose: bool, cache: DigestCache, previous: dict
) -> dict[str, str]:
    """Sets each record's ``wav``: converted copies of files that are not 16 kHz mono under
    ``<output>/audio_16k/``, and paths relative to ``{data_root}`` or ``{manifest_root}`` for
    the others (absolute only outside both).

    A converted copy is reused only when ``previous`` (the last preparation's
    prepare_inputs.json) says it was made from a source with the same content digest and
    the copy still has its recorded digest; never on its name or time alone. Files under
    ``audio_16k/`` that no record uses any more are deleted.

    Returns: ``{path relative to the output folder: source digest}`` of the converted
    copies. Raises ValueError if a target would lie outside the output folder (it cannot,
    by construction; checked all the same).
    """
    out_root = roots["manifest_root"]
    todo = [r for r in records if r.pop("_convert")]
    made_from = previous.get("converted") or {}
    recorded = previous.get("outputs") or {}
    used, converted = set(), {}
    with Progress("converting to 16 kHz mono", len(todo), "file", enabled=verbose) as bar:
        for record in todo:
            name = safe_name(record["id"])
            if name in used:  # two ids that differ only in replaced characters
                name += "_" + hashlib.sha1(record["id"].encode()).hexdigest()[:8]
            used.add(name)
            target = (out_root / CONVERTED_FOLDER / (name + ".wav")).resolve()
            if not target.is_relative_to(out_root):
                raise ValueError(f"{record['where']}: would write {target} outside {out_root}")
            relative = target.relative_to(out_root).as_posix()
            source_digest = record["_source_digest"]
            reusable = (
                made_from.get(relative) == source_digest
                and target.is_file()
                and recorded.get(relative) == cache.digest(target)
            )
            if not reusable:
                target.parent.mkdir(parents=True, exist_ok=True)
                waveform = load_audio(record["source"], SAMPLE_RATE)
                tmp = target.with_suffix(".tmp.wav")
                soundfile.write(str(tmp), waveform.numpy(), SAMPLE_RATE, subtype="PCM_16")
                tmp.replace(target)
            converted[relative] = source_digest
            record["wav"] = "{manifest_root}/" + relative
            bar.update()
    for record in records:
        if "wav" not in record:
            record["wav"] = _placeholder_path(Path(record["source"]), roots)
    folder = out_root / CONVERTED_FOLDER
    if folder.is_dir():
        for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
            if path.is_file() and path.relative_to(out_root).as_posix() not in converted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return converted


def _placeholder_path(path: Path, roots: dict) -> str:
    """``{data_root}/rel`` or ``{manifest_root}/rel`` for a file below either, else the
    absolute path."""
    path = path.resolve()
    for key in ("data_root", "manifest_root"):
        if key in roots and path.is_relative_to(roots[key]):
            return "{" + key + "}/" + path.relative_to(roots[key]).as_posix()
    return str(path)


def actor_fold_split(records: list[dict], fold: int, folds: int, protocol: str) -> Split:
    """A speaker-independent split by `mtl_ser.data.protocols.speaker_folds` over the
    records' ``spk`` / ``gender``: test = fold ``fold``'s speakers, valid = fold
    ``fold + 1``'s (cyclically), train = the rest; each split sorted by id."""
    speakers = {r["spk"]: r["gender"] for r in records}
    test, valid = speaker_folds(speakers, folds, fold)
    splits = {name: [] for name in SPLITS}
    for record in sorted(records, key=lambda r: r["id"]):
        name = "test" if record["spk"] in test else "valid" if record["spk"] in valid else "train"
        splits[name].append(record)
    description = (
        f"{protocol} fold {fold} of {folds}: test = {', '.join(sorted(test))}; "
        f"valid = {', '.join(sorted(valid))}; speaker-independent"
    )
    return Split(splits, protocol, fold, folds, True, description)


def choose_label_set(sets: dict[str, LabelSet], name: str) -> LabelSet:
    """The label set called ``name`` among a corpus's ``sets``; ValueError naming the choices."""
    if name not in sets:
        raise ValueError(f"label set {name!r} is not one of {sorted(sets)}")
    return sets[name]


def prepare_actor_folds(
    output_folder: str | Path,
    options: dict,
    label_set: LabelSet,
    scan: Callable[[], Scan],
    data_root: Path,
    files: list[Path],
    fold: int,
    folds: int,
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """`prepare_corpus` for a corpus split into speaker folds by `actor_fold_split`.

    Args:
        options: the corpus's own options (at least ``corpus`` and ``protocol``); the data
            folder, the fingerprint of ``files`` and the fold are added.
        data_root: the corpus folder (``{data_root}`` in wav paths).
        files: every file whose listing decides the content (fingerprinted).
        fold, folds: which of ``folds`` speaker folds tests.
        output_folder, label_set, scan, on_error, verbose: as in `prepare_corpus`.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    fold, folds = int(fold), int(folds)
    options = {
        **options,
        "data_folder": str(data_root.resolve()),
        "files_sha1": listing_fingerprint(files, data_root),
        "fold": fold,
        "folds": folds,
    }

    def split(records: list[dict]) -> Split:
        return actor_fold_split(records, fold, folds, options["protocol"])

    return prepare_corpus(
        output_folder,
        options,
        label_set,
        scan,
        split,
        data_root=data_root,
        on_error=on_error,
        verbose=verbose,
    )
