"""Whisper and LoRA runs of the multi-task recipe: they train, resume exactly, export (adapters
merged into plain weights) and predict.

The runs use a small subset of the demo fold (24 / 8 / 8 utterances) and 2 epochs.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from mtl_ser import load_model
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.export import export_run, load_tensors
from mtl_ser.export_hf import export_hf
from tests.recipes.helpers import ROOT, epoch_log, read_json, recipe_command, run_recipe
from tests.recipes.test_export_hf import first_test_wavs

WHISPER = str(ROOT / "hparams/overrides/whisper_tiny.yaml")
LORA = str(ROOT / "hparams/overrides/lora.yaml")
# Rank 4: the tiny Whisper is 64 wide (rank 8 would still be 2% of its weights).
WHISPER_LORA = ((WHISPER, LORA), "--lora_rank=4", "--emotion_layers=weighted")


@pytest.fixture(scope="module")
def small(demo_corpus, tmp_path_factory):
    """Manifests of the first 24 / 8 / 8 utterances of the demo's LOSO fold 1."""
    out = tmp_path_factory.mktemp("whisper_manifests")
    prepare_iemocap(demo_corpus, out / "full", verbose=False)
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        records = read_json(out / "full" / f"{split}.json")
        (out / f"{split}.json").write_text(json.dumps(dict(sorted(records.items())[:count])))
    for name in ("labels.json", "prepare_options.json"):
        shutil.copy(out / "full" / name, out / name)
    return out


def _args(small, demo_corpus, out, overrides, *extra, epochs=2):
    return dict(
        recipe="train_mtl.py",
        hparams="mtl.yaml",
        data=demo_corpus,
        out=out,
        overrides=overrides,
        extra=[
            "--skip_prep=True",
            f"--train_annotation={small / 'train.json'}",
            f"--valid_annotation={small / 'valid.json'}",
            f"--test_annotation={small / 'test.json'}",
            f"--number_of_epochs={epochs}",
            *extra,
        ],
    )


def _command(a):
    return recipe_command(
        a["recipe"], a["hparams"], a["data"], a["out"], *a["extra"], overrides=a["overrides"]
    )


def _run(a):
    return run_recipe(
        a["recipe"], a["hparams"], a["data"], a["out"], *a["extra"], overrides=a["overrides"]
    )


@pytest.fixture(scope="module")
def lora_run(small, demo_corpus, tmp_path_factory):
    """A finished 2-epoch run: tiny Whisper, LoRA, weighted emotion layers, CTC."""
    out = tmp_path_factory.mktemp("whisper_lora") / "run"
    overrides, *extra = WHISPER_LORA
    _run(_args(small, demo_corpus, out, overrides, *extra))
    return out


def _run_probabilities(run) -> dict[str, list[float]]:
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    labels = read_json(run / "results.json")["labels"]
    return {row["id"]: [float(row[f"p_{label}"]) for label in labels] for row in rows}


def test_whisper_lora_run_trains_adapters_only_and_its_merged_export_predicts_the_same(
    lora_run, small, demo_corpus, tmp_path
):
    results = read_json(lora_run / "results.json")
    assert results["finetuning"] == "lora"
    assert 0 < results["trained_encoder_parameters"] < 0.05 * results["encoder_parameters"]
    assert "finetuning lora:" in (lora_run / "log.txt").read_text()
    spec = read_json(lora_run / "model_spec.json")["modules"]["encoder"]
    assert spec["class"] == "mtl_ser.models.whisper.WhisperEncoder"
    assert spec["kwargs"]["whisper_input"] == "true_length"
    # The checkpoint holds the adapters (and the heads in their own files), nothing else.
    for checkpoint in (lora_run / "save").glob("CKPT+*"):
        adapters = load_tensors(checkpoint / "encoder.ckpt")
        assert adapters and all("lora_" in name for name in adapters)
        trained = sum(t.numel() for t in adapters.values())
        assert trained == results["trained_encoder_parameters"]

    exported = export_run(lora_run, tmp_path / "export")
    model = load_model(exported)
    assert not any("lora_" in k or "base_layer" in k for k in model.modules["encoder"].state_dict())
    expected = _run_probabilities(lora_run)
    files = first_test_wavs(small, demo_corpus, count=8)
    for path, prediction in zip(files, model.predict_batch(files), strict=True):
        utterance = os.path.basename(path)[: -len(".wav")]
        got = [prediction.probabilities[label] for label in model.labels]
        assert got == pytest.approx(expected[utterance], abs=1e-5)
    # transformers has no Whisper emotion model equivalent: said, not approximated.
    with pytest.raises(ValueError, match="transformers has no equivalent of a Whisper"):
        export_hf(lora_run, tmp_path / "hf")


def test_whisper_lora_run_killed_after_an_epoch_resumes_to_the_same_result(
    lora_run, small, demo_corpus, tmp_path
):
    overrides, *extra = WHISPER_LORA
    a = _args(small, demo_corpus, tmp_path / "run", overrides, *extra)
    process = subprocess.Popen(
        _command(a),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list((a["out"] / "save").glob("CKPT*/COMPLETE")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert [e["epoch"] for e in epoch_log(a["out"])] == [1]
    done = _run(a)
    assert "Going into epoch 1\n" not in done.stdout + done.stderr
    timed = ("train_seconds", "valid_seconds")  # wall-clock times differ by nature
    untimed = [
        {k: v for k, v in e.items() if k not in timed}
        for e in (epoch_log(a["out"])[-1], epoch_log(lora_run)[-1])
    ]
    assert untimed[0] == untimed[1]  # every loss and metric
    assert (a["out"] / "predictions.csv").read_text() == (lora_run / "predictions.csv").read_text()


def test_whisper_full_finetuning_trains_exports_and_predicts(small, demo_corpus, tmp_path):
    a = _args(small, demo_corpus, tmp_path / "run", (WHISPER,), "--pooling=attentive", epochs=1)
    _run(a)
    results = read_json(a["out"] / "results.json")
    assert results["finetuning"] == "full"
    assert results["trained_encoder_parameters"] > 0.4 * results["encoder_parameters"]
    model = load_model(export_run(a["out"], tmp_path / "export"))
    expected = _run_probabilities(a["out"])
    files = first_test_wavs(small, demo_corpus, count=3)
    for path, prediction in zip(files, model.predict_batch(files), strict=True):
        got = [prediction.probabilities[label] for label in model.labels]
        assert got == pytest.approx(expected[os.path.basename(path)[:-4]], abs=1e-5)


def test_contradictory_finetuning_is_refused_in_one_line(small, demo_corpus, tmp_path):
    a = _args(small, demo_corpus, tmp_path / "run", (WHISPER, LORA), "--freeze_encoder=True")
    done = subprocess.run(_command(a), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0
    assert "freeze_encoder: True contradicts finetuning: lora" in done.stderr
    assert "Traceback" not in done.stderr


def test_whisper_lora_under_ddp_trains_the_same_adapters_on_every_rank(
    small, demo_corpus, tmp_path
):
    """Two processes (gloo): no unused-parameter error, identical parameters on both ranks,
    and only the adapters (and heads) moved."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from mtl_ser.experiment import parse_arguments

    overrides, *extra = WHISPER_LORA
    a = _args(
        small,
        demo_corpus,
        tmp_path / "run",
        overrides,
        *extra,
        "--distributed_backend=gloo",
        epochs=1,
    )
    command = _command(a)
    torchrun = [command[0], "-m", "torch.distributed.run", "--nproc_per_node=2"]
    wrapper = [str(ROOT / "tests/recipes/ddp_params.py"), str(tmp_path)]
    done = subprocess.run(
        torchrun + wrapper + command[1:], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"params_rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    hparams_file, _, yaml_overrides = parse_arguments(command[2:])
    with open(hparams_file) as f:
        initial = load_hyperpyyaml(f, yaml_overrides)["encoder"].state_dict()  # same seed
    changed = {k for k, v in initial.items() if not torch.equal(ranks[0][f"encoder.{k}"], v)}
    assert changed and all("lora_" in k for k in changed)
