"""A prepared folder equals a fresh preparation of its input, whatever changed in between.

Property: prepare, mutate the corpus (or the prepared folder), prepare again into the same
folder, and compare with a fresh preparation of the mutated corpus: manifests, labels,
options, summary and converted audio are identical, and the re-run said why it prepared again.
"""

import os
import shutil
from pathlib import Path

import pytest

from mtl_ser.data.corpora.base import CONVERTED_FOLDER
from mtl_ser.data.csv_corpus import prepare_csv
from mtl_ser.data.fingerprint import DigestCache
from mtl_ser.data.prepare import prepare_iemocap
from tests.builders import build_trap_tree, write_csv_corpus, write_wav

COMPARED = ("train.json", "valid.json", "test.json", "labels.json", "prepare_options.json")


def snapshot(folder: Path) -> dict[str, bytes]:
    """The compared files and every converted file, by relative path."""
    files = {name: (folder / name).read_bytes() for name in COMPARED}
    summary = (folder / "summary.txt").read_text()
    files["summary.txt"] = summary.encode()
    for path in sorted((folder / CONVERTED_FOLDER).rglob("*")):
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def older_mtime(path: Path) -> None:
    """What cp -p / tar / rsync -a leave: a modification time a day in the past."""
    stamp = path.stat().st_mtime - 86400
    os.utime(path, (stamp, stamp))


# ---------------------------------------------------------------------------- IEMOCAP
WAVS = "Session1/sentences/wav/Ses01F_impro01"
EMO = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
TRANS = "Session1/dialog/transcriptions/Ses01F_impro01.txt"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


IEMOCAP_MUTATIONS = {
    "delete a wav": lambda root, out: (root / WAVS / "Ses01F_impro01_F000.wav").unlink(),
    "add a wav": lambda root, out: write_wav(
        root / "Session5/sentences/wav/Ses05M_script01_1b/Ses05M_script01_1b_M002.wav"
    ),
    "replace a wav, older mtime": lambda root, out: (
        write_wav(root / WAVS / "Ses01F_impro01_M000.wav", seconds=0.3, seed=99),
        older_mtime(root / WAVS / "Ses01F_impro01_M000.wav"),
    ),
    "relabel ang -> sad": lambda root, out: _edit(
        root / EMO, "Ses01F_impro01_M000\tang", "Ses01F_impro01_M000\tsad"
    ),
    "edit a transcript": lambda root, out: _edit(root / TRANS, "Excuse me.", "Excuse you."),
    "truncate a manifest": lambda root, out: (out / "train.json").write_text(
        (out / "train.json").read_text()[:50]
    ),
    "empty a manifest": lambda root, out: (out / "valid.json").write_text("{}\n"),
}


@pytest.mark.parametrize("mutation", sorted(IEMOCAP_MUTATIONS))
def test_iemocap_reprepared_equals_fresh(mutation, tmp_path, capsys):
    root = build_trap_tree(tmp_path / "IEMOCAP")
    out = tmp_path / "prep"
    prepare_iemocap(root, out, verbose=False)
    before = snapshot(out)
    IEMOCAP_MUTATIONS[mutation](root, out)
    capsys.readouterr()
    prepare_iemocap(root, out, verbose=True)
    said = capsys.readouterr().out
    assert "already prepared" not in said
    assert f"{out}: preparing again: " in said
    prepare_iemocap(root, tmp_path / "fresh", verbose=False)
    assert snapshot(out) == snapshot(tmp_path / "fresh")
    if "manifest" not in mutation:  # the input changed: so must the content
        assert snapshot(out) != before


def test_iemocap_changed_option_is_named(tmp_path, capsys):
    root = build_trap_tree(tmp_path / "IEMOCAP")
    out = tmp_path / "prep"
    prepare_iemocap(root, out, verbose=False)
    prepare_iemocap(root, out, fold=3, seed=7, verbose=False)
    assert f"{out}: preparing again: options changed: fold, seed" in capsys.readouterr().out
    prepare_iemocap(root, tmp_path / "fresh", fold=3, seed=7, verbose=False)
    assert snapshot(out) == snapshot(tmp_path / "fresh")


def test_unchanged_input_is_skipped_after_its_outputs_validate(tmp_path, capsys):
    root = build_trap_tree(tmp_path / "IEMOCAP")
    out = tmp_path / "prep"
    prepare_iemocap(root, out, verbose=False)
    stamp = (out / "train.json").stat().st_mtime_ns
    prepare_iemocap(root, out, verbose=True)
    said = capsys.readouterr().out
    assert "already prepared with the same options and inputs, skipping" in said
    assert "preparing again" not in said
    assert (out / "train.json").stat().st_mtime_ns == stamp


# -------------------------------------------------------------------------------- CSV
def csv_corpus(root: Path) -> Path:
    """20 utterances of 5 speakers; spk0's and spk1's first two are 44.1 kHz (converted)."""
    csv_path, _ = write_csv_corpus(root)
    for utt in ("spk0/utt0", "spk0/utt1", "spk1/utt0", "spk1/utt1"):
        write_wav(root / f"{utt}.wav", seconds=0.3, rate=44100, seed=len(utt))
    return csv_path


def _replace_older(root: Path, seconds: float) -> None:
    path = root / "spk0/utt0.wav"
    write_wav(path, seconds=seconds, rate=44100, seed=123)
    older_mtime(path)


def _drop_line(csv_path: Path, path: str) -> None:
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(line for line in lines if not line.startswith(path + ",")))


CSV_MUTATIONS = {
    # Same size and name, other samples, older time: only the content says it changed.
    "replace converted audio, same length, older mtime": lambda root, out: _replace_older(
        root, 0.3
    ),
    "replace converted audio, other length, older mtime": lambda root, out: _replace_older(
        root, 0.5
    ),
    "replace 16 kHz audio, older mtime": lambda root, out: (
        write_wav(root / "spk2/utt0.wav", seconds=0.4, seed=5),
        older_mtime(root / "spk2/utt0.wav"),
    ),
    "delete a converted file": lambda root, out: (
        out / CONVERTED_FOLDER / "spk1/utt0.wav"
    ).unlink(),
    "overwrite a converted file": lambda root, out: write_wav(
        out / CONVERTED_FOLDER / "spk1/utt0.wav", seconds=0.3, seed=4
    ),
    "delete a row": lambda root, out: _drop_line(root / "corpus.csv", "spk0/utt1.wav"),
    "add a row": lambda root, out: (
        write_wav(root / "spk3/utt9.wav", seconds=0.3, rate=22050),
        (root / "corpus.csv").write_text(
            (root / "corpus.csv").read_text() + "spk3/utt9.wav,sad,a new one,spk3\n"
        ),
    ),
    "relabel a row": lambda root, out: _edit(
        root / "corpus.csv", "spk2/utt1.wav,hap,", "spk2/utt1.wav,sad,"
    ),
    "edit a transcript": lambda root, out: _edit(
        root / "corpus.csv", "spk1/utt2.wav,ang,hello number 2", "spk1/utt2.wav,ang,goodbye"
    ),
    "truncate a manifest": lambda root, out: (out / "train.json").write_text('{"spk'),
    "delete the digest cache": lambda root, out: (out / ".digests.json").unlink(),
}


@pytest.mark.parametrize("mutation", sorted(CSV_MUTATIONS))
def test_csv_reprepared_equals_fresh(mutation, tmp_path, capsys):
    root = tmp_path / "audio"
    csv_path = csv_corpus(root)
    out = tmp_path / "prep"
    prepare_csv(csv_path, root, out, verbose=False)
    before = snapshot(out)
    CSV_MUTATIONS[mutation](root, out)
    capsys.readouterr()
    prepare_csv(csv_path, root, out, verbose=True)
    said = capsys.readouterr().out
    if mutation == "delete the digest cache":  # nothing changed: digests are recomputed
        assert "already prepared with the same options and inputs" in said
    else:
        assert f"{out}: preparing again: " in said
    prepare_csv(csv_path, root, tmp_path / "fresh", verbose=False)
    assert snapshot(out) == snapshot(tmp_path / "fresh")
    if mutation.startswith(("replace", "delete a row", "add", "relabel", "edit")):
        assert snapshot(out) != before


def test_csv_changed_option_and_copied_corpus(tmp_path, capsys):
    root = tmp_path / "audio"
    csv_path = csv_corpus(root)
    out = tmp_path / "prep"
    prepare_csv(csv_path, root, out, verbose=False)
    prepare_csv(csv_path, root, out, seed=9, verbose=False)
    assert f"{out}: preparing again: options changed: seed" in capsys.readouterr().out
    prepare_csv(csv_path, root, tmp_path / "fresh", seed=9, verbose=False)
    assert snapshot(out) == snapshot(tmp_path / "fresh")
    # A prepared folder copied with its times (cp -a) is still believed: same contents.
    shutil.copytree(out, tmp_path / "copy")
    prepare_csv(csv_path, root, tmp_path / "copy", seed=9, verbose=True)
    assert "already prepared" in capsys.readouterr().out


def test_digest_cache_notices_same_size_same_mtime_rewrite(tmp_path):
    path = write_wav(tmp_path / "a.wav", seed=1)
    cache = DigestCache(tmp_path / "cache.json")
    first = cache.digest(path)
    cache.save()
    stat = path.stat()
    write_wav(path, seed=2)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert DigestCache(tmp_path / "cache.json").digest(path) != first
