"""The feature cache: reuse, invalidation by any front-end setting or audio change, corrupted
entries rebuilt, and the rule between waveform augmentation and the cache."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import SpeedPerturb

from mtl_ser.data import feature_cache as fc
from mtl_ser.data.audio import load_audio
from mtl_ser.data.feature_cache import FeatureCache, FeatureSource, decode_entry
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.pipelines import add_pipelines, load_dataset
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary
from mtl_ser.models.cnn import LogMelFrontEnd

N_MELS = 24


def front_end(**changes) -> LogMelFrontEnd:
    return LogMelFrontEnd(**{"n_mels": N_MELS, **changes})


@pytest.fixture
def wavs(tmp_path):
    """Three short 16 kHz recordings of different lengths."""
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([0.5, 0.8, 1.1]):
        path = tmp_path / "audio" / f"utt{i}.wav"
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
        paths.append(path)
    return paths


def entries(folder):
    """{entry path: mtime_ns} of every cache entry under ``folder``."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.feat")}


def test_second_run_reuses_every_entry(wavs, tmp_path):
    first = FeatureCache(tmp_path / "cache", front_end())
    computed = [first.get(p) for p in wavs]
    assert (first.computed, first.reused, first.rebuilt) == (3, 0, 0)
    for path, feats in zip(wavs, computed, strict=True):
        torch.testing.assert_close(feats, first.front_end.features(load_audio(path)))
    written = entries(tmp_path / "cache")
    assert len(written) == 3
    assert (first.folder / "settings.json").is_file()

    second = FeatureCache(tmp_path / "cache", front_end())  # another run, same settings
    for path, feats in zip(wavs, computed, strict=True):
        assert torch.equal(second.get(path), feats)
    assert (second.computed, second.reused, second.rebuilt) == (0, 3, 0)
    assert entries(tmp_path / "cache") == written  # nothing rewritten
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


CHANGED_SETTINGS = {
    "sample_rate": 8000,
    "n_fft": 512,
    "win_length": 20.0,
    "hop_length": 20.0,
    "n_mels": 32,
    "f_min": 50.0,
    "f_max": 4000.0,
    "log_mel": False,
    "top_db": 60.0,
    "normalize": "none",
}


def test_every_front_end_setting_is_checked():
    assert set(CHANGED_SETTINGS) == set(front_end().kwargs)


@pytest.mark.parametrize("setting", sorted(CHANGED_SETTINGS))
def test_a_changed_setting_recomputes(setting, wavs, tmp_path):
    FeatureCache(tmp_path / "cache", front_end()).get(wavs[0])
    changed = FeatureCache(tmp_path / "cache", front_end(**{setting: CHANGED_SETTINGS[setting]}))
    feats = changed.get(wavs[0])
    assert (changed.computed, changed.reused) == (1, 0)
    torch.testing.assert_close(
        feats, changed.front_end.features(load_audio(wavs[0], changed.front_end.sample_rate))
    )
    assert len(entries(tmp_path / "cache")) == 2
    # The original settings still find their entry.
    again = FeatureCache(tmp_path / "cache", front_end())
    again.get(wavs[0])
    assert (again.computed, again.reused) == (0, 1)


def test_a_new_front_end_version_recomputes(wavs, tmp_path):
    FeatureCache(tmp_path / "cache", front_end()).get(wavs[0])
    newer = front_end()
    newer.settings["version"] += 1  # what bumping FRONT_END_VERSION does
    cache = FeatureCache(tmp_path / "cache", newer)
    cache.get(wavs[0])
    assert (cache.computed, cache.reused) == (1, 0)


def test_a_rewritten_audio_file_recomputes(wavs, tmp_path):
    cache = FeatureCache(tmp_path / "cache", front_end())
    before = cache.get(wavs[0])
    stat = wavs[0].stat()
    soundfile.write(wavs[0], 0.2 * np.random.default_rng(1).standard_normal(8000), 16000)
    os.utime(wavs[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert wavs[0].stat().st_size == stat.st_size  # same size: the mtime tells
    after = cache.get(wavs[0])
    assert (cache.computed, cache.reused) == (2, 0)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, cache.front_end.features(load_audio(wavs[0])))


def _truncate_payload(data, other):
    return data[:-4]


def _truncate_header(data, other):
    return data[:20]


def _empty(data, other):
    return b""


def _flip_payload_byte(data, other):
    return data[:-7] + bytes([data[-7] ^ 0x10]) + data[-6:]


def _garbage(data, other):
    return os.urandom(len(data))


def _entry_of_another_file(data, other):
    return other


def _swapped_shape(data, other):
    """A header still valid as JSON, describing the same bytes as [F, T]."""
    header_len = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + header_len])
    header["shape"] = header["shape"][::-1]
    text = json.dumps(header, sort_keys=True).encode()
    return data[:8] + len(text).to_bytes(4, "little") + text + data[12 + header_len :]


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate_payload,
        _truncate_header,
        _empty,
        _flip_payload_byte,
        _garbage,
        _entry_of_another_file,
        _swapped_shape,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_corrupted_entry_is_rebuilt(corrupt, wavs, tmp_path, caplog):
    cache = FeatureCache(tmp_path / "cache", front_end())
    expected = cache.get(wavs[1])
    cache.get(wavs[2])
    entry = cache.entry_path(cache.key(wavs[1]))
    other = cache.entry_path(cache.key(wavs[2])).read_bytes()
    entry.write_bytes(corrupt(entry.read_bytes(), other))

    with caplog.at_level(logging.WARNING, logger=fc.__name__):
        rebuilt = FeatureCache(tmp_path / "cache", front_end())
        assert torch.equal(rebuilt.get(wavs[1]), expected)
    assert (rebuilt.computed, rebuilt.reused, rebuilt.rebuilt) == (1, 0, 1)
    assert f"{entry} is invalid" in caplog.text
    # The entry was rewritten whole and is used from now on.
    assert torch.equal(decode_entry(entry.read_bytes(), rebuilt.key(wavs[1])), expected)
    rebuilt.get(wavs[1])
    assert rebuilt.reused == 1


def test_a_failed_write_leaves_no_entry(wavs, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", front_end())

    def full_disk(src, dst):
        raise OSError("No space left on device")

    monkeypatch.setattr(fc.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        cache.get(wavs[0])
    assert not entries(tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# --------------------------------------------------------------- augmentation vs cache
def speed_80() -> Augmenter:
    """A deterministic waveform augmentation: 80% speed."""
    return Augmenter(augment_prob=1.0, augmentations=[SpeedPerturb(16000, speeds=[80])])


def expected_augmented(source: FeatureSource, path) -> torch.Tensor:
    wav = load_audio(path)
    return source.front_end.features(SpeedPerturb(16000, speeds=[80])(wav[None])[0])


def test_training_sample_drawn_for_augmentation_bypasses_the_cache(wavs, tmp_path):
    source = FeatureSource(front_end(), tmp_path / "cache", speed_80(), wav_augment_prob=1.0)
    for path in wavs:
        feats = source(path, train=True)
        torch.testing.assert_close(feats, expected_augmented(source, path))
        # 80% speed: slower, so more frames than the cached features.
        assert feats.shape[0] > source.front_end.features(load_audio(path)).shape[0]
    assert source.augmented == 3
    assert (source.cache.computed, source.cache.reused) == (0, 0)
    assert not entries(tmp_path / "cache")  # augmented features are never stored


def test_evaluation_samples_always_come_from_the_cache(wavs, tmp_path):
    source = FeatureSource(front_end(), tmp_path / "cache", speed_80(), wav_augment_prob=1.0)
    for path in wavs:
        assert torch.equal(source(path, train=False), source.cache.get(path))
    assert source.augmented == 0
    assert (source.cache.computed, source.cache.reused) == (3, 3)


def test_samples_not_drawn_come_from_the_cache(wavs, tmp_path):
    never = FeatureSource(front_end(), tmp_path / "cache", speed_80(), wav_augment_prob=0.0)
    for path in wavs:
        never(path, train=True)
    assert never.augmented == 0 and never.cache.computed == 3

    torch.manual_seed(0)
    half = FeatureSource(front_end(), tmp_path / "cache", speed_80(), wav_augment_prob=0.5)
    drawn = [not torch.equal(half(p, train=True), half.cache.get(p)) for p in wavs * 10]
    assert half.augmented == sum(drawn) and 0 < sum(drawn) < 30
    assert half.cache.computed == 0  # everything else was already cached


def test_features_are_computed_on_one_thread(wavs):
    seen = []

    def spy_augment(wavs, lens):
        seen.append(torch.get_num_threads())
        return wavs, lens

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        feats = fc.compute_features(front_end(), wavs[0], spy_augment)
        assert seen == [1] and torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(feats, front_end().features(load_audio(wavs[0])))


def test_no_cache_computes_every_time(wavs):
    source = FeatureSource(front_end(), cache_folder=None)
    assert source.cache is None
    torch.testing.assert_close(source(wavs[0]), source.front_end.features(load_audio(wavs[0])))
    with pytest.raises(ValueError, match="needs a wav_augment"):
        FeatureSource(front_end(), None, wav_augment=None, wav_augment_prob=0.5)


# ------------------------------------------------------------------- in the pipelines
@pytest.fixture(scope="module")
def prepared(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    return prepare_iemocap(demo_corpus, out, verbose=False), LabelSet.load(out)


def features_dataset(prepared, demo_corpus, source, split, max_len=None):
    paths, labels = prepared
    data = load_dataset(paths[split], demo_corpus)
    add_pipelines(data, labels, CharVocabulary(), max_len, source, train=split == "train")
    return data


def test_pipelines_deliver_cached_or_augmented_features(prepared, demo_corpus, tmp_path):
    source = FeatureSource(front_end(), tmp_path / "cache", speed_80(), wav_augment_prob=1.0)
    test = features_dataset(prepared, demo_corpus, source, "test")
    train = features_dataset(prepared, demo_corpus, source, "train")
    item = test[0]
    assert "sig" not in item and item["feats"].shape[1] == N_MELS
    assert torch.equal(item["feats"], source.cache.get(test.data[item["id"]]["wav"]))
    item = train[0]
    wav = train.data[item["id"]]["wav"]
    torch.testing.assert_close(item["feats"], expected_augmented(source, wav))


def test_training_features_are_cropped_to_max_len(prepared, demo_corpus, tmp_path):
    source = FeatureSource(front_end(), tmp_path / "cache")
    train = features_dataset(prepared, demo_corpus, source, "train", max_len=1.0)
    long_ids = [k for k, r in train.data.items() if r["duration"] > 1.1 and r["has_text"]]
    index = {k: i for i, k in enumerate(train.data_ids)}
    item = train[index[long_ids[0]]]
    assert item["feats"].shape == (100, N_MELS)  # 1 s at 100 frames/s
    assert not bool(item["ctc_mask"])  # cropped: the transcript no longer matches
    whole = source.cache.get(train.data[long_ids[0]]["wav"])
    starts = [
        s for s in range(whole.shape[0] - 99) if torch.equal(whole[s : s + 100], item["feats"])
    ]
    assert len(starts) == 1  # a window of the cached utterance
