"""Transcript normalisation and the CTC character vocabulary."""

import pytest
import torch

from mtl_ser.data.text import BLANK_INDEX, CharVocabulary, normalize_transcript


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Excuse me.", "EXCUSE ME"),
        ("[LAUGHTER] Oh, that's   great!", "OH THAT'S GREAT"),
        ("I don't [BREATHING] know... [GARBAGE]", "I DON'T KNOW"),
        ("{LG} yeah {NS} right {BR}", "YEAH RIGHT"),
        ("Well--okay; fine: 'quoted'", "WELL OKAY FINE QUOTED"),
        ("It\u2019s 5 o'clock", "IT'S O'CLOCK"),
        ("the singers' song", "THE SINGERS SONG"),
        ("[LAUGHTER]", ""),
        ("  ", ""),
    ],
)
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


def test_vocabulary_is_fixed_with_blank_first():
    vocab = CharVocabulary()
    assert len(vocab) == 29
    assert vocab.characters[BLANK_INDEX] == "<blank>"
    assert vocab.characters[1:3] == (" ", "'")


def test_vocabulary_round_trip(tmp_path):
    vocab = CharVocabulary()
    ids = vocab.encode("DON'T GO")
    assert ids.dtype == torch.long and ids.shape == (8,)
    assert BLANK_INDEX not in ids.tolist()
    assert vocab.decode(ids) == "DON'T GO"
    # Blanks are skipped when decoding.
    assert vocab.decode([0, *ids.tolist(), 0]) == "DON'T GO"
    vocab.save(tmp_path / "vocab.json")
    assert CharVocabulary.load(tmp_path / "vocab.json") == vocab


def test_unnormalised_text_is_refused():
    with pytest.raises(ValueError, match="'x' of 'xy' is not in the CTC vocabulary"):
        CharVocabulary().encode("xy")


def test_vocabulary_needs_blank_at_zero():
    with pytest.raises(ValueError, match="must be '<blank>'"):
        CharVocabulary(("A", "<blank>"))
