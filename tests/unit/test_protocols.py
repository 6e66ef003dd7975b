"""Protocol splits on synthetic IEMOCAP-like records with exactly known memberships."""

from collections import Counter

import pytest

from mtl_ser.data.protocols import (
    SplitOptions,
    assign_splits,
    describe,
    speaker_group_split,
    stratified_pick,
)

CLASSES = ("neu", "hap", "ang", "sad")


def make_records(per_speaker_class: int = 5) -> list[dict]:
    """5 sessions x 2 speakers x 4 classes x n, half in F dialogs, half in M dialogs."""
    records = []
    for session in range(1, 6):
        for gender in "FM":
            for label in CLASSES:
                for i in range(per_speaker_class):
                    marker = "F" if i % 2 == 0 else "M"
                    dialog = f"Ses{session:02d}{marker}_impro01"
                    records.append(
                        {
                            "id": f"{dialog}_{gender}{label}{i}",
                            "emo": label,
                            "spk": f"Ses{session:02d}{gender}",
                            "session": session,
                            "dialog": dialog,
                        }
                    )
    return records


def ids(split):
    return {r["id"] for r in split}


def speakers(split):
    return {r["spk"] for r in split}


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_loso_tests_on_one_whole_session(fold):
    records = make_records()
    splits = assign_splits(records, SplitOptions("loso", fold))
    assert ids(splits["test"]) == {r["id"] for r in records if r["session"] == fold}
    assert speakers(splits["test"]) == {f"Ses{fold:02d}F", f"Ses{fold:02d}M"}
    assert not speakers(splits["test"]) & speakers(splits["train"] + splits["valid"])
    # 10% stratified validation: 8 speakers x 5 = 40 per class in the pool -> 4 per class.
    assert Counter(r["emo"] for r in splits["valid"]) == {c: 4 for c in CLASSES}
    assert len(splits["train"]) == 160 - 16
    assert ids(splits["train"]) | ids(splits["valid"]) | ids(splits["test"]) == ids(records)


def test_stratified_validation_is_seeded():
    records = make_records()
    a = assign_splits(records, SplitOptions("loso", 1, seed=1))
    b = assign_splits(records, SplitOptions("loso", 1, seed=1))
    c = assign_splits(records, SplitOptions("loso", 1, seed=2))
    assert ids(a["valid"]) == ids(b["valid"])
    assert ids(a["valid"]) != ids(c["valid"])


@pytest.mark.parametrize(
    "fold, test_spk, valid_spk", [(1, "Ses01F", "Ses01M"), (4, "Ses02M", "Ses02F")]
)
def test_loso_speaker(fold, test_spk, valid_spk):
    records = make_records()
    splits = assign_splits(records, SplitOptions("loso_speaker", fold))
    assert speakers(splits["test"]) == {test_spk}
    assert speakers(splits["valid"]) == {valid_spk}
    assert len(splits["test"]) == len(splits["valid"]) == 20
    session = int(test_spk[3:5])
    assert all(r["session"] != session for r in splits["train"])
    assert len(splits["train"]) == 160


def test_cai2021_tests_on_dialog_prefix_and_overlaps_speakers():
    records = make_records()
    splits = assign_splits(records, SplitOptions("cai2021", 2))
    assert ids(splits["test"]) == {r["id"] for r in records if r["dialog"].startswith("Ses01M_")}
    assert speakers(splits["test"]) == {"Ses01F", "Ses01M"}
    # Speaker-overlapping by construction: the test speakers are also in training.
    assert speakers(splits["test"]) <= speakers(splits["train"])
    assert "SPEAKER-OVERLAPPING" in describe(SplitOptions("cai2021", 2))


def test_random_is_80_10_10():
    records = make_records()
    splits = assign_splits(records, SplitOptions("random", 1))
    assert Counter(r["emo"] for r in splits["test"]) == {c: 5 for c in CLASSES}
    assert Counter(r["emo"] for r in splits["valid"]) == {c: 5 for c in CLASSES}
    assert len(splits["train"]) == 160


def test_validation_speaker_strategy():
    records = make_records()
    splits = assign_splits(records, SplitOptions("loso", 1, valid_strategy="speaker"))
    assert speakers(splits["valid"]) == {"Ses02F"}
    assert "Ses02F" not in speakers(splits["train"])
    splits = assign_splits(
        records, SplitOptions("loso", 5, valid_strategy="speaker", valid_speaker="Ses03M")
    )
    assert speakers(splits["valid"]) == {"Ses03M"}
    with pytest.raises(ValueError, match="validation speaker Ses01F has no training utterance"):
        assign_splits(
            records, SplitOptions("loso", 1, valid_strategy="speaker", valid_speaker="Ses01F")
        )


@pytest.mark.parametrize(
    "options, message",
    [
        (SplitOptions("loso", 6), "fold 6 out of range 1..5"),
        (SplitOptions("loso_speaker", 0), "fold 0 out of range 1..10"),
        (SplitOptions("nope", 1), "protocol 'nope' is not one of"),
        (SplitOptions("loso_speaker", 1, valid_strategy="stratified"), "does not apply"),
        (SplitOptions("random", 1, valid_strategy="speaker"), "speaker-dependent"),
        (SplitOptions("loso", 1, valid_fraction=1.5), "valid_fraction"),
        (SplitOptions("loso", 1, valid_speaker="Ses02F"), "only used with"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        options.resolved()


def test_empty_test_split_is_an_error():
    records = [r for r in make_records() if r["session"] != 3]
    with pytest.raises(ValueError, match="the test split is empty"):
        assign_splits(records, SplitOptions("loso", 3))


def test_stratified_pick_keeps_every_class_with_two_or_more():
    import random

    records = [{"id": f"a{i}", "emo": "a"} for i in range(2)] + [{"id": "b0", "emo": "b"}]
    picked = stratified_pick(records, 0.1, random.Random(0))
    assert len(picked) == 1 and picked <= {"a0", "a1"}


def test_speaker_group_split():
    records = [{"id": f"s{s}_{i}", "spk": f"s{s}"} for s in range(10) for i in range(3)]
    splits = speaker_group_split(records, 0.1, 0.2, seed=0)
    assert len(speakers(splits["test"])) == 2 and len(speakers(splits["valid"])) == 1
    assert len(splits["train"]) == 21
    assert not speakers(splits["test"]) & speakers(splits["train"])
    with pytest.raises(ValueError, match="at least 3 speakers"):
        speaker_group_split(records[:6], 0.1, 0.1, seed=0)
