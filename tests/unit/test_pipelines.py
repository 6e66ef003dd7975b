"""Dataset pipelines: cropping, labels, tokens, CTC mask, dynamic batches, held-out test."""

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader

from mtl_ser.data.labels import LabelSet
from mtl_ser.data.pipelines import (
    ItemSeeds,
    add_pipelines,
    assert_test_is_held_out,
    load_dataset,
    train_loader_options,
)
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary


@pytest.fixture(scope="module")
def prepared(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    return prepare_iemocap(demo_corpus, out, verbose=False), LabelSet.load(out)


def dataset(prepared, demo_corpus, split="train", max_len=None):
    paths, labels = prepared
    data = load_dataset(paths[split], demo_corpus)
    add_pipelines(data, labels, CharVocabulary(), max_len)
    return data


def test_items(prepared, demo_corpus):
    data = dataset(prepared, demo_corpus)
    item = data[0]
    record = data.data[item["id"]]
    assert item["sig"].dtype == torch.float32 and item["sig"].dim() == 1
    assert item["sig"].shape[0] == pytest.approx(record["duration"] * 16000, abs=1)
    assert prepared[1].classes[int(item["emo_encoded"])] == record["emo"]
    assert CharVocabulary().decode(item["tokens"]) == record["wrd"]
    assert bool(item["ctc_mask"]) == record["has_text"]


def test_training_crop_masks_ctc(prepared, demo_corpus):
    data = dataset(prepared, demo_corpus, max_len=1.0)
    long_ids = [k for k, r in data.data.items() if r["duration"] > 1.0 and r["has_text"]]
    short_ids = [k for k, r in data.data.items() if r["duration"] <= 1.0]
    assert long_ids and short_ids
    index = {k: i for i, k in enumerate(data.data_ids)}
    cropped = data[index[long_ids[0]]]
    assert cropped["sig"].shape[0] == 16000
    # A crop no longer matches the full transcript: it trains the emotion only.
    assert not bool(cropped["ctc_mask"])
    whole = data[index[short_ids[0]]]
    assert whole["sig"].shape[0] == pytest.approx(
        data.data[short_ids[0]]["duration"] * 16000, abs=1
    )


def test_dynamic_batches_respect_the_seconds_budget(prepared, demo_corpus):
    data = dataset(prepared, demo_corpus)
    hparams = {
        "dynamic_batching": True,
        "max_len": 2.0,
        "max_batch_length": 12.0,
        "num_buckets": 4,
        "seed": 1,
        "train_dataloader_opts": {"batch_size": 8, "shuffle": True, "num_workers": 0},
        "pin_memory": None,
        "persistent_workers": None,
        "features": None,
    }
    options = train_loader_options(hparams, data)
    assert "batch_size" not in options and "shuffle" not in options
    batches = list(options["batch_sampler"])
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    durations = [r["duration"] for r in data.data.values()]
    for b in batches:
        assert sum(min(durations[i], 2.0) for i in b) <= 12.0


def test_test_utterances_may_not_be_trained_on(prepared, demo_corpus):
    train = dataset(prepared, demo_corpus, "train")
    test = dataset(prepared, demo_corpus, "test")
    leaked = load_dataset(prepared[0]["test"], demo_corpus)
    with pytest.raises(ValueError, match="53 test utterance\\(s\\) also in valid"):
        assert_test_is_held_out({"train": train, "valid": leaked, "test": test})


def test_utterance_without_text_has_a_masked_placeholder_target(prepared, demo_corpus):
    data = dataset(prepared, demo_corpus, "test")
    no_text = [i for i, k in enumerate(data.data_ids) if not data.data[k]["has_text"]]
    assert no_text, "the demo corpus has a tag-only utterance in Session 1"
    item = data[no_text[0]]
    assert item["tokens"].tolist() == [CharVocabulary().encode(" ").item()]
    assert not bool(item["ctc_mask"])


def test_training_crops_depend_on_seed_epoch_and_utterance_only(prepared, demo_corpus):
    """The crops of an epoch are the same in the main process and in two persistent worker
    processes (whose history differs), in any order; another epoch crops elsewhere; and
    cropping leaves the main process's generators where they were (they are checkpointed)."""
    paths, labels = prepared
    data = load_dataset(paths["train"], demo_corpus)
    seeds = ItemSeeds(7)
    add_pipelines(data, labels, CharVocabulary(), 0.5, item_seeds=seeds)
    data.set_output_keys(["id", "sig"])
    long_ids = [k for k, r in data.data.items() if r["duration"] > 1.0][:12]
    data = data.filtered_sorted(key_test={"id": lambda utt: utt in long_ids})

    def loader(workers: int, reverse: bool = False) -> DataLoader:
        order = list(range(len(data)))[:: -1 if reverse else 1]
        return DataLoader(
            data,
            sampler=order,
            batch_size=1,
            collate_fn=PaddedBatch,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),
        )

    def crops(loader: DataLoader, epoch: int) -> dict[str, torch.Tensor]:
        seeds.set_epoch(epoch)
        return {b.id[0]: b.sig.data[0] for b in loader}

    in_main, in_workers = loader(0), loader(2)
    state = torch.get_rng_state()
    main_crops = [crops(in_main, epoch) for epoch in (1, 2)]
    assert torch.equal(torch.get_rng_state(), state), "cropping moved the process's generator"
    worker_crops = [crops(in_workers, epoch) for epoch in (1, 2)]
    reversed_crops = crops(loader(0, reverse=True), 2)
    assert len(main_crops[0]) == len(long_ids)
    for utt in long_ids:
        for epoch in (0, 1):
            assert torch.equal(main_crops[epoch][utt], worker_crops[epoch][utt]), (utt, epoch)
        assert torch.equal(main_crops[1][utt], reversed_crops[utt])
    assert any(not torch.equal(main_crops[0][u], main_crops[1][u]) for u in long_ids)


def test_characters_outside_the_vocabulary_are_left_out_of_targets(prepared, demo_corpus):
    paths, labels = prepared
    data = load_dataset(paths["test"], demo_corpus)
    ids = [k for k in data.data_ids if data.data[k]["has_text"]][:2]
    data.data[ids[0]]["wrd"] = "ÜBER ØL"  # some letters no training transcript had
    data.data[ids[1]]["wrd"] = "你好"  # none of its letters in the set
    vocab = CharVocabulary.from_transcripts(["ÜBER"])
    add_pipelines(data, labels, vocab, None)
    first, second = (data[data.data_ids.index(k)] for k in ids)
    assert vocab.decode(first["tokens"]) == "ÜBER L"
    assert bool(first["ctc_mask"])
    # Nothing left: the placeholder target, masked out of the loss.
    assert second["tokens"].tolist() == [vocab.encode(" ").item()]
    assert not bool(second["ctc_mask"])
