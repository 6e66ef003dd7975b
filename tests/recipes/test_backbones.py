"""Every supported backbone trains, exports in both formats and round-trips through
transformers; a weighted layer sum and the TensorBoard tracker along the way.

The runs use a small subset of the demo fold (24 / 8 / 8 utterances) to stay cheap; the
wav2vec2 backbone is covered by the ``mtl_run`` fixture.
"""

import csv
import json
import shutil

import pytest

from mtl_ser import load_model
from mtl_ser.export import export_run
from mtl_ser.export_hf import export_hf
from tests.recipes.helpers import read_json, run_recipe
from tests.recipes.test_export_hf import assert_same_as_mtl_ser, first_test_wavs


@pytest.fixture(scope="module")
def small_manifests(mtl_run, tmp_path_factory):
    """train / valid / test manifests of the first 24 / 8 / 8 utterances of the mtl_run
    fold (labels.json and prepare_options.json beside them)."""
    source = mtl_run[0] / "manifests"
    out = tmp_path_factory.mktemp("small_manifests")
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        records = read_json(source / f"{split}.json")
        kept = dict(sorted(records.items())[:count])
        (out / f"{split}.json").write_text(json.dumps(kept))
    for name in ("labels.json", "prepare_options.json"):
        shutil.copy(source / name, out / name)
    return out


def train(small_manifests, demo_corpus, out, *extra):
    return run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--skip_prep=True",
        f"--train_annotation={small_manifests / 'train.json'}",
        f"--valid_annotation={small_manifests / 'valid.json'}",
        f"--test_annotation={small_manifests / 'test.json'}",
        *extra,
    )


def check_exports(run, small_manifests, demo_corpus, tmp_path, backbone, weighted_emotion):
    """Both export formats give the run's predictions; returns the transformers folder."""
    spec = read_json(run / "model_spec.json")["modules"]
    assert spec["encoder"]["kwargs"]["source"]["model_type"] == backbone
    # mtl_ser's own format: the run's test predictions, exactly.
    model = load_model(export_run(run, tmp_path / "mtl_ser_format"))
    with open(run / "predictions.csv") as f:
        expected = {row["id"]: row for row in csv.DictReader(f)}
    files = first_test_wavs(small_manifests, demo_corpus, count=8)
    for path, prediction in zip(files, model.predict_batch(files), strict=True):
        row = expected[path.rsplit("/", 1)[1][: -len(".wav")]]
        assert prediction.emotion == row["predicted"]
        assert prediction.transcript == row["hypothesis"]
    # transformers' format: the same probabilities through pipeline().
    hf = export_hf(run, tmp_path / "hf")
    assert_same_as_mtl_ser(run, hf, files[:3])
    config = read_json(hf / "config.json")
    assert config["model_type"] == backbone
    assert config["use_weighted_layer_sum"] == weighted_emotion
    return hf


@pytest.mark.parametrize(
    "backbone, extra",
    [
        ("wavlm", ["--encoder_source=random:wavlm-tiny", "--emotion_layers=weighted"]),
        ("data2vec-audio", ["--encoder_source=random:data2vec-audio-tiny"]),
    ],
)
def test_backbone_trains_and_exports(backbone, extra, small_manifests, demo_corpus, tmp_path):
    run = tmp_path / "run"
    train(small_manifests, demo_corpus, run, "--number_of_epochs=1", *extra)
    hf = check_exports(run, small_manifests, demo_corpus, tmp_path, backbone, "wavlm" in backbone)
    assert (hf / "ctc" / "model.safetensors").is_file()


def test_hubert_weighted_ctc_head_and_tensorboard(small_manifests, demo_corpus, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(
        small_manifests,
        demo_corpus,
        run,
        "--encoder_source=random:hubert-tiny",
        "--encoder_type=hubert",
        "--ctc_layers=weighted",
        "--number_of_epochs=2",
        "--tracker=tensorboard",
    )
    # A CTC head on a weighted layer sum has no transformers form: left out, and said so.
    hf = check_exports(run, small_manifests, demo_corpus, tmp_path, "hubert", False)
    assert not (hf / "ctc").exists()
    assert "is not part of this export" in (hf / "README.md").read_text()
    assert "not exported: The CTC head reads a weighted sum" in capsys.readouterr().out

    events = EventAccumulator(str(run / "tracking")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss_emo/train", "loss_ctc/train", "UA/valid", "WER/valid", "lr_encoder"} <= scalars
    assert {"UA/test", "WA/test", "CER/test"} <= scalars
    assert [e.step for e in events.Scalars("UA/valid")] == [1, 2]
    log = [json.loads(line) for line in (run / "epoch_log.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("UA/valid")] == pytest.approx(
        [entry["valid_ua"] for entry in log]
    )
    results = read_json(run / "results.json")
    assert events.Scalars("UA/test")[0].value == pytest.approx(results["ua"])
    assert events.Scalars("UA/test")[0].step == results["best_epoch"]
    identity = events.Tensors("run/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| protocol | loso |" in identity and "| alpha | 0.1 |" in identity
