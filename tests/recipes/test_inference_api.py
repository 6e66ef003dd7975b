"""The Python API on waveforms (shapes, non-finite samples, batches), `embed` and
`mtl-ser embed`, on the tiny trained model."""

import numpy as np
import pytest
import torch

from mtl_ser import load_model
from mtl_ser.cli import main
from mtl_ser.data.audio import load_audio
from mtl_ser.data.manifest import load_manifest
from mtl_ser.models.masking import lengths_to_mask, masked_mean


@pytest.fixture(scope="module")
def model(mtl_run):
    return load_model(mtl_run[0])


@pytest.fixture(scope="module")
def files(mtl_run, demo_corpus):
    records = load_manifest(mtl_run[0] / "manifests/test.json", demo_corpus)
    return [records[k]["wav"] for k in sorted(records)[:3]]


def test_waveform_shapes(model, files):
    wave = load_audio(files[0])
    mono = model.predict(wave, sample_rate=16000)
    assert mono.path is None
    # [channels, time], channels first: two identical channels are the mono signal.
    stereo = model.predict(torch.stack([wave, wave]), sample_rate=16000)
    assert stereo.probabilities == pytest.approx(mono.probabilities, abs=1e-6)
    stereo_np = model.predict(np.stack([wave.numpy(), wave.numpy()]), sample_rate=16000)
    assert stereo_np.probabilities == pytest.approx(mono.probabilities, abs=1e-6)
    with pytest.raises(ValueError, match=r"read as \[channels, time\].*predict_batch"):
        model.predict(torch.stack([wave, wave], dim=1), sample_rate=16000)  # [time, channels]
    with pytest.raises(ValueError, match=r"expected a waveform \[time\] or \[channels, time\]"):
        model.predict(wave[None, None], sample_rate=16000)
    with pytest.raises(ValueError, match="needs its sample_rate"):
        model.predict(wave)


def test_batch_of_waveforms(model, files):
    length = min(load_audio(f).shape[0] for f in files)
    batch = torch.stack([load_audio(f)[:length] for f in files])  # [batch, time]
    predictions = model.predict_batch(batch, sample_rate=16000, batch_size=2)
    assert len(predictions) == 3
    for row, prediction in zip(batch, predictions, strict=True):
        alone = model.predict(row, sample_rate=16000)
        assert prediction.path is None and prediction.error is None
        assert prediction.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    with pytest.raises(ValueError, match="one recording: use predict"):
        model.predict_batch(batch[0], sample_rate=16000)


def test_non_finite_audio_and_bad_batch_sizes(model, files, capsys):
    wave = load_audio(files[0])
    wave[100] = float("nan")
    with pytest.raises(ValueError, match=r"the waveform: 1 sample\(s\) are NaN or infinite"):
        model.predict(wave, sample_rate=16000)
    mixed = model.predict_batch([files[0], wave.numpy()], sample_rate=16000)
    assert mixed[0].error is None and mixed[0].path == files[0]
    assert mixed[1].emotion is None and "waveform 1: 1 sample(s) are NaN" in mixed[1].error
    short = model.predict_batch([np.zeros(50, dtype=np.float32)], sample_rate=16000)
    assert short[0].error == "waveform 0: too short to score (0.003 s)"
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be at least 1"):
            model.predict_batch(files, batch_size=size)
    with pytest.raises(SystemExit):
        main(["predict", "x", files[0], "--batch-size", "-1"])
    assert "must be at least 1, not -1" in capsys.readouterr().err


def test_embed_layers(model, files):
    encoder, head = model.modules["encoder"], model.modules["emotion_head"]
    wave = load_audio(files[0])
    with torch.no_grad():
        enc = encoder(wave[None], torch.ones(1))
        mask = lengths_to_mask(enc.lengths, enc.hidden.shape[1])
        expected = {
            "last": masked_mean(enc.hidden, mask)[0],
            "head": head.pooled(enc.hidden, enc.lengths, enc.layers)[0],
            0: masked_mean(enc.layers[0], mask)[0],
        }
    for layer, vector in expected.items():
        got = model.embed(files[0], layer=layer)
        assert got.shape == (encoder.output_size,) and got.dtype == np.float32
        np.testing.assert_allclose(got, vector.numpy(), atol=1e-5)
    # wav2vec2-base style (post-norm): the output is the last layer's.
    np.testing.assert_allclose(model.embed(files[0], layer=-1), expected["last"], atol=1e-5)
    batch = model.embed_batch(files, layer="head", batch_size=2)
    np.testing.assert_allclose(batch[0].vector, expected["head"], atol=1e-5)
    with pytest.raises(ValueError, match="layer 3 is out of range: the encoder has 3 layers"):
        model.embed(files[0], layer=3)
    with pytest.raises(ValueError, match="layer must be one of"):
        model.embed(files[0], layer="middle")


def test_embed_command(mtl_run, files, model, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    missing = str(tmp_path / "missing.wav")
    assert main(["embed", str(mtl_run[0]), *files, missing, "--output", str(out)]) == 1
    matrix = np.load(out)
    ids = (tmp_path / "emb.ids.txt").read_text().splitlines()
    assert ids == files and matrix.shape == (3, model.modules["encoder"].output_size)
    np.testing.assert_allclose(matrix[1], model.embed(files[1]), atol=1e-6)
    err = capsys.readouterr().err
    assert f"failed: {missing}: no such file" in err and "3 of 4 file(s) embedded" in err
    parquet = tmp_path / "emb.parquet"
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert main(["embed", str(mtl_run[0]), files[0], "--output", str(parquet)]) == 2
        assert "needs pyarrow: pip install pyarrow" in capsys.readouterr().err
        return
    assert (
        main(["embed", str(mtl_run[0]), *files, "--output", str(parquet), "--layer", "head"]) == 0
    )
    table = pq.read_table(parquet).to_pydict()
    assert table["path"] == files
    np.testing.assert_allclose(table["embedding"][2], model.embed(files[2], "head"), atol=1e-6)
