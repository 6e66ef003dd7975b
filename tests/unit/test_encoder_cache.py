"""The encoder cache: what it stores is what the encoder computes, reuse, keys, damage, the
size limit, refused settings, and pipelines that no longer read the audio."""

import os

import pytest
import torch
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.dataset import DynamicItemDataset

from mtl_ser.data.audio import load_audio
from mtl_ser.data.encoder_cache import EncoderCache, EncoderCacheError, cache_kind
from mtl_ser.data.labels import iemocap_label_set
from mtl_ser.data.pipelines import add_pipelines
from mtl_ser.data.text import CharVocabulary
from mtl_ser.hparams_check import ConfigError
from mtl_ser.models.heads import CTCHead, EmotionHead
from mtl_ser.models.ssl import SSLEncoder
from tests.builders import write_wav
from tests.unit.test_hparams_check import check

SECONDS = [0.4, 1.3, 0.7, 2.1, 1.0]


def encoder(seed: int = 0, **kwargs) -> SSLEncoder:
    torch.manual_seed(seed)
    return SSLEncoder("random:tiny", **kwargs).eval()


def heads(emotion: str = "weighted", ctc: str | None = "last") -> list:
    made = [EmotionHead(64, layers=emotion, num_layers=3, n_classes=4)]
    if ctc is not None:
        made.append(CTCHead(64, 29, layers=ctc, num_layers=3))
    return made


@pytest.fixture
def corpus(tmp_path):
    """Five recordings and a dataset of them (records with wav and duration)."""
    records = {}
    for i, seconds in enumerate(SECONDS):
        path = write_wav(tmp_path / "audio" / f"u{i}.wav", seconds, seed=i)
        records[f"u{i}"] = {
            "wav": str(path),
            "duration": seconds,
            "emo": "neu",
            "wrd": "A",
            "has_text": True,
            "scripted": False,
        }
    return DynamicItemDataset(records)


def planned(folder, enc, kind="hidden", dtype="float32", head_list=None, **kwargs):
    cache = EncoderCache(folder, kind, dtype=dtype, batch_size=2, **kwargs)
    cache.plan(enc, heads() if head_list is None else head_list)
    return cache


def entries(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.feat")}


def test_entries_are_the_encoders_output_and_a_second_run_reuses_them(corpus, tmp_path):
    enc = encoder()
    cache = planned(tmp_path / "cache", enc)
    summary = cache.fill(enc, [corpus], progress=False)
    assert (summary["computed"], summary["reused"], summary["entries"]) == (5, 0, 5)
    assert cache.slots == ("hidden", "layers")  # one head reads the last layer, one all
    for record in corpus.data.values():
        wav = load_audio(record["wav"])
        with torch.no_grad():
            alone = enc(wav[None], torch.ones(1))
        stored = cache.read(record["wav"])
        assert stored.shape == (alone.hidden.shape[1], 1 + 3, 64)  # [T, hidden + 3 layers, D]
        torch.testing.assert_close(stored[:, 0], alone.hidden[0], atol=1e-5, rtol=1e-4)
        for i, layer in enumerate(alone.layers):
            torch.testing.assert_close(stored[:, 1 + i], layer[0], atol=1e-5, rtol=1e-4)
    written = entries(tmp_path / "cache")
    assert len(written) == 5
    assert sum(p.stat().st_size for p in written) > summary["bytes"] > 0

    again = planned(tmp_path / "cache", encoder())  # another run: same weights and settings
    summary = again.fill(encoder(), [corpus], progress=False)
    assert (summary["computed"], summary["reused"]) == (0, 5)
    assert entries(tmp_path / "cache") == written


def test_a_padded_batch_of_entries_gives_the_encoders_output(corpus, tmp_path):
    """What the Brain feeds the heads from the cache (both kinds) equals the encoder run on
    the padded waveforms; float16 entries are within their rounding."""
    enc = encoder()
    wavs = [load_audio(r["wav"]) for r in corpus.data.values()]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    rel = torch.tensor([len(w) for w in wavs]) / padded.shape[1]
    with torch.no_grad():
        expected = enc(padded, rel)
    for kind, dtype, tol in [("hidden", "float32", 1e-5), ("conv", "float32", 1e-5)] + [
        ("hidden", "float16", 2e-2)
    ]:
        cache = planned(tmp_path / kind / dtype, enc, kind, dtype)
        cache.fill(enc, [corpus], progress=False)
        stored = [cache.read(r["wav"]) for r in corpus.data.values()]
        batch = torch.nn.utils.rnn.pad_sequence(stored, batch_first=True)
        lens = torch.tensor([len(s) for s in stored]) / batch.shape[1]
        with torch.no_grad():
            out = cache.encoder_output((batch, lens), enc)
        assert torch.equal(out.lengths, expected.lengths)
        mask = torch.arange(batch.shape[1])[None, :] < out.lengths[:, None]
        torch.testing.assert_close(out.hidden[mask], expected.hidden[mask], atol=tol, rtol=tol)
        for got, want in zip(out.layers, expected.layers, strict=True):
            torch.testing.assert_close(got[mask], want[mask], atol=tol, rtol=tol)


def test_heads_decide_which_layers_are_stored(tmp_path):
    enc = encoder()
    last = planned(tmp_path, enc, head_list=heads("last", "last"))
    weighted = planned(tmp_path, enc, head_list=heads("weighted", None))
    assert last.slots == ("hidden",) and last.entry_shape(16000) == [49, 1, 64]
    assert weighted.slots == ("layers",) and weighted.entry_shape(16000) == [49, 3, 64]
    conv = planned(tmp_path, enc, kind="conv")
    assert conv.entry_shape(16000) == [49, 32]
    assert len({last.store.folder, weighted.store.folder, conv.store.folder}) == 3


@pytest.mark.parametrize(
    "change",
    ["dtype", "weights", "normalize_waveform", "kind", "feature_encoder_weights"],
)
def test_what_changes_the_numbers_changes_the_key(change, tmp_path):
    reference = planned(tmp_path, encoder()).store.folder
    if change == "dtype":
        other = planned(tmp_path, encoder(), dtype="float16")
    elif change == "weights":  # a random preset drawn with another seed is another encoder
        other = planned(tmp_path, encoder(seed=1))
    elif change == "normalize_waveform":
        other = planned(tmp_path, encoder(normalize_waveform=False))
    elif change == "kind":
        other = planned(tmp_path, encoder(), kind="conv")
    else:
        enc = encoder()
        with torch.no_grad():
            enc.model.feature_extractor.conv_layers[2].conv.weight.mul_(1.01)
        other = planned(tmp_path, enc)
    assert other.store.folder != reference


def test_what_a_frozen_part_ignores_keeps_the_key(tmp_path):
    """Dropout, layer drop and masking do nothing in eval mode: the entries stay valid."""
    reference = planned(tmp_path, encoder()).store.folder
    other = planned(tmp_path, encoder(mask_time_prob=0.3, layerdrop=0.1))
    assert other.store.folder == reference
    conv = planned(tmp_path, encoder(), kind="conv").store.folder
    enc = encoder()
    with torch.no_grad():  # a trained transformer does not change the frozen conv features
        enc.model.encoder.layers[0].feed_forward.output_dense.weight.mul_(1.01)
    assert planned(tmp_path, enc, kind="conv").store.folder == conv


def test_a_damaged_entry_is_an_error_when_read_and_is_rebuilt_by_the_next_fill(corpus, tmp_path):
    enc = encoder()
    cache = planned(tmp_path / "cache", enc)
    cache.fill(enc, [corpus], progress=False)
    path = corpus.data["u3"]["wav"]
    expected = cache.read(path)
    entry = cache.store.entry_path(cache.store.key(path))
    data = entry.read_bytes()
    entry.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(EncoderCacheError, match=f"{entry} of {path} is damaged .*checksum"):
        cache.read(path)
    entry.unlink()
    with pytest.raises(EncoderCacheError, match=f"no encoder cache entry for {path}"):
        cache.read(path)
    entry.write_bytes(data[:100])  # truncated
    rebuilt = planned(tmp_path / "cache", enc)
    summary = rebuilt.fill(enc, [corpus], progress=False)
    assert (summary["computed"], summary["reused"], summary["rebuilt"]) == (1, 4, 1)
    # Recomputed alone rather than in a batch of two: equal up to float summation order.
    torch.testing.assert_close(rebuilt.read(path), expected, atol=1e-5, rtol=1e-4)


def test_a_cache_over_the_limit_is_refused_before_anything_is_computed(corpus, tmp_path):
    enc = encoder()
    # 5.5 s of audio: 270 frames x (1 + 3) x 64 float32 values, 276.5 kB.
    cache = planned(tmp_path / "cache", enc, max_gb=0.0002)
    message = (
        r"would take 276\.5 kB \(5 utterances, 0\.0 h, the last hidden state and all 3 hidden "
        r"layers \(64 dims\) as float32\) in .*cache, more than encoder_cache_max_gb = 0\.0002"
    )
    with pytest.raises(EncoderCacheError, match=message):
        cache.fill(enc, [corpus], progress=False)
    assert not list((tmp_path / "cache").rglob("*.feat"))
    assert planned(tmp_path / "cache", enc, max_gb=0.0003).fill(enc, [corpus], progress=False)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"augment_prob": 0.5}, "augment_prob: 0.5 augments the waveforms"),
        ({"max_len": 4.0}, "max_len: 4.0 crops the waveforms"),
        ({"padding_aware": False}, "padding_aware: False makes the encoder's output depend"),
    ],
)
def test_settings_a_cache_cannot_serve_exactly_are_refused(setting, message, tmp_path):
    settings = {
        "folder": tmp_path,
        "freeze_encoder": True,
        "freeze_feature_encoder": False,
        "augment_prob": 0.0,
        "max_len": None,
        "padding_aware": True,
    }
    assert cache_kind(**settings) == "hidden"
    assert cache_kind(**{**settings, "freeze_encoder": False}) is None  # nothing frozen
    assert cache_kind(**{**settings, "folder": None, **setting}) is None  # no cache: fine
    with pytest.raises(ValueError, match=f"freeze_encoder: True caches .*{message}"):
        cache_kind(**{**settings, **setting})
    # Before anything is built, from the command line:
    args = [f"--{key}={value}" for key, value in setting.items()]
    with pytest.raises(ConfigError, match="set encoder_cache_folder: null to compute them"):
        check(tmp_path, "--freeze_feature_encoder=True", *args)
    check(tmp_path, "--freeze_feature_encoder=True", "--encoder_cache_folder=null", *args)


def test_pipelines_read_the_cache_and_not_the_audio(corpus, tmp_path):
    """After the cache is filled the recordings are overwritten with noise of the same size
    and modification time (the same cache key): training batches still come, from the
    cache, while reading the audio would now fail."""
    enc = encoder()
    cache = planned(tmp_path / "cache", enc)
    cache.fill(enc, [corpus], progress=False)
    expected = {utt: cache.read(r["wav"]) for utt, r in corpus.data.items()}
    for record in corpus.data.values():
        path = record["wav"]
        stat = os.stat(path)
        with open(path, "r+b") as f:
            f.write(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError, match="cannot read audio"):
        load_audio(corpus.data["u0"]["wav"])
    add_pipelines(corpus, iemocap_label_set(), CharVocabulary(), None, encoder_cache=cache)
    seen = set()
    for batch in make_dataloader(corpus, batch_size=2):
        padded, rel = batch.cached
        for i, utt in enumerate(batch.id):
            frames = int(torch.round(rel[i] * padded.shape[1]))
            assert torch.equal(padded[i, :frames], expected[utt])
            seen.add(utt)
    assert seen == set(corpus.data)
