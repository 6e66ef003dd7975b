"""Transcript normalisation and the CTC character vocabulary."""

import pytest
import torch

from mtl_ser.data.text import (
    BLANK_INDEX,
    CHARACTERS,
    CharVocabulary,
    dropped_characters,
    normalize_transcript,
)


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
        # Letters of every script survive, NFKC-normalised and upper-cased.
        ("Café naïve, über 3 Straße", "CAFÉ NAÏVE ÜBER STRAßE"),
        ("Cafe\u0301", "CAFÉ"),  # decomposed accent: the same word as the composed one
        ("\uff21\uff22\uff23 ok", "ABC OK"),  # full-width Latin
        ("میں ٹھیک ہوں۔", "میں ٹھیک ہوں"),  # Urdu: its full stop is punctuation
        ("你好，世界！", "你好 世界"),
        ("नमस्ते दुनिया", "नमस्ते दुनिया"),  # combining vowel signs kept
    ],
)
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


def test_dropped_characters_are_counted():
    assert dropped_characters("Café naïve, über 3 Straße") == {"3": 1}
    assert dropped_characters("€100 [LAUGHTER] 5%!") == {"€": 1, "1": 1, "0": 2, "5": 1}
    assert dropped_characters("Oh, no... 'fine'") == {}


def test_english_transcripts_give_exactly_the_base_set():
    vocab = CharVocabulary.from_transcripts(["OH THAT'S GREAT", "", "XYZ QUIZ JACK"])
    assert vocab == CharVocabulary()
    assert vocab.characters == CHARACTERS


def test_vocabulary_from_other_scripts_round_trips():
    texts = [normalize_transcript(t) for t in ("Grüße über Straße", "Ça va, œuvre", "你好")]
    vocab = CharVocabulary.from_transcripts(texts)
    assert vocab.characters[: len(CHARACTERS)] == CHARACTERS
    assert vocab.characters[len(CHARACTERS) :] == ("Ç", "Ü", "ß", "Œ", "你", "好")
    for text in texts:
        assert vocab.decode(vocab.encode(text)) == text
    assert vocab.unknown("ÜBER ÅL") == {"Å": 1}
    assert vocab.decode(vocab.encode("ÜBER ÅL", drop_unknown=True)) == "ÜBER L"
    with pytest.raises(ValueError, match="'Å' of 'ÅL' is not in the CTC vocabulary"):
        vocab.encode("ÅL")


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
