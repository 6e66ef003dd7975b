"""CTC decoding (mtl_ser/decoding.py) and the n-gram LM writer (mtl_ser/ngram.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtl_ser.cli import main
from mtl_ser.data.text import CHARACTERS, CharVocabulary
from mtl_ser.decoding import CTCDecoder, DecoderConfig, greedy_decode
from mtl_ser.ngram import BOS, ArpaModel, arpa_text, build_lm, kneser_ney, tokenize

VOCAB = CharVocabulary()
SENTENCES = ["THE CAT SAT", "A CAT", "THE CAT RAN", "MY CAT SAT ON THE MAT"]


def write_manifest(path, sentences):
    """A manifest ``{id: record}`` whose records carry (raw) transcripts in ``wrd``."""
    records = {
        f"utt{i}": {"wav": "x.wav", "duration": 1.0, "emo": "neu", "wrd": s.lower() + "!"}
        for i, s in enumerate(sentences)
    }
    path.write_text(json.dumps(records))
    return path


def emissions(frames: list[dict]) -> torch.Tensor:
    """``[1, T, V]`` log-probabilities: each frame gives probabilities to some characters
    (the rest share 1e-4 each), normalised."""
    rows = []
    for probs in frames:
        row = torch.full((len(VOCAB),), 1e-4)
        for char, p in probs.items():
            row[VOCAB.characters.index(char)] = p
        rows.append((row / row.sum()).log())
    return torch.stack(rows)[None]


# C, blank, O (0.55) or A (0.44), blank, T: greedy reads COT; a LM of the training
# sentences, where C is always followed by A, makes CAT the better path.
COT_OR_CAT = emissions(
    [{"C": 0.9}, {"<blank>": 0.9}, {"O": 0.55, "A": 0.44}, {"<blank>": 0.9}, {"T": 0.9}]
)


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    manifest = write_manifest(folder / "train.json", SENTENCES)
    build_lm(manifest, folder / "char.arpa", order=4, unit="char", progress=False)
    return folder / "char.arpa"


def test_beam_with_the_lm_corrects_what_greedy_gets_wrong(char_lm):
    lengths = torch.tensor([5])
    assert greedy_decode(COT_OR_CAT, lengths, VOCAB) == ["COT"]
    # Beam search alone follows the acoustics: the LM is what fixes the word.
    assert CTCDecoder(DecoderConfig("beam", 10), VOCAB)(COT_OR_CAT, lengths) == ["COT"]
    with_lm = CTCDecoder(DecoderConfig("beam", 10, str(char_lm), lm_weight=1.0), VOCAB)
    assert with_lm.name == "beam_lm"
    assert with_lm(COT_OR_CAT, lengths) == ["CAT"]


def test_a_word_lm_decodes_with_a_lexicon_of_its_words(tmp_path):
    # Several decoders: a lexicon that made the result depend on the run would show.
    manifest = write_manifest(tmp_path / "train.json", SENTENCES)
    build_lm(manifest, tmp_path / "word.arpa", order=2, unit="word", progress=False)
    two_words = emissions(
        [{"A": 0.9}, {" ": 0.9}, {"C": 0.9}, {"O": 0.55, "A": 0.44}, {"T": 0.9}, {"T": 0.9}]
    )
    for _ in range(5):
        decoder = CTCDecoder(DecoderConfig("beam", 10, str(tmp_path / "word.arpa"), 1.0), VOCAB)
        assert decoder(COT_OR_CAT, torch.tensor([5])) == ["CAT"]
        assert decoder(two_words, torch.tensor([6])) == ["A CAT"]


def test_beam_decodes_a_padded_batch_within_each_length(char_lm):
    # Row 2 is row 1 followed by padding frames that read "XX": its length cuts them off.
    padded = torch.cat([COT_OR_CAT, emissions([{"X": 0.9}, {"<blank>": 0.9}, {"X": 0.9}])], 1)
    batch = torch.cat([padded, padded])
    decoder = CTCDecoder(DecoderConfig("beam", 10, str(char_lm), 1.0), VOCAB)
    assert decoder(batch, torch.tensor([8, 5])) == [decoder(padded, torch.tensor([8]))[0], "CAT"]
    assert greedy_decode(batch, torch.tensor([8, 5]), VOCAB) == ["COTXX", "COT"]


def test_arpa_probabilities_of_every_order_sum_to_one(tmp_path):
    sentences = [tokenize(s, "char") for s in SENTENCES]
    vocabulary = tokenize("".join(CHARACTERS[1:]), "char")
    (tmp_path / "lm.arpa").write_text(arpa_text(kneser_ney(sentences, 3, vocabulary)))
    model = ArpaModel(tmp_path / "lm.arpa")
    assert model.order == 3 and model.unit == "char"
    words = [w for w in model.words if w != BOS]
    assert set(vocabulary) <= set(words)  # every CTC character can be scored
    # Seen and unseen histories of each order (the last one backs off twice).
    for history in [(), ("C",), ("Q",), (BOS, "T"), ("C", "A"), ("A", "T"), ("Z", "Q")]:
        total = sum(10 ** model.log10_prob(history, w) for w in words)
        assert math.isclose(total, 1.0, abs_tol=1e-4), (history, total)
    # Kneser-Ney keeps more mass for what training saw: A after C, not O.
    assert model.log10_prob(("C",), "A") > model.log10_prob(("C",), "O") + 1


def test_lm_build_refuses_held_out_manifests_and_names_the_split(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "test.json", SENTENCES)
    status = main(["lm", "build", "--manifest", str(manifest), "--output", str(tmp_path / "a")])
    assert status != 0
    assert "build the LM from the training split" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_lm_build_command_writes_an_arpa_file_and_keeps_other_files(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "train.json", SENTENCES)
    out = tmp_path / "lm.arpa"
    args = ["lm", "build", "--manifest", str(manifest), "--order", "3", "--output", str(out)]
    assert main(args) == 0
    assert "4 transcripts" in capsys.readouterr().out
    assert ArpaModel(out).order == 3 and ArpaModel(out).unit == "char"
    assert main(args) == 0  # its own output is replaced
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    assert main([*args[:-1], str(other)]) != 0 and other.read_text() == "mine"


def test_decoder_settings_that_cannot_work_are_refused(tmp_path, char_lm):
    with pytest.raises(ValueError, match="ctc_decoding must be one of"):
        DecoderConfig.from_hparams({"ctc_decoding": "prefix"})
    with pytest.raises(ValueError, match="set ctc_decoding: beam"):
        DecoderConfig.from_hparams({"lm_path": str(char_lm)})
    with pytest.raises(ValueError, match="no such file.*mtl-ser lm build"):
        DecoderConfig.from_hparams({"ctc_decoding": "beam", "lm_path": str(tmp_path / "x")})
    assert DecoderConfig.from_hparams({}).name == "greedy"  # today's results by default


def test_prediction_log_scores_each_decoder_beside_greedy(tmp_path):
    from mtl_ser.results import PredictionLog

    log = PredictionLog(("neu", "hap"))
    log.add_batch(
        ["a", "b"],
        torch.zeros(2, 2),
        torch.tensor([0, 1]),
        ["THE CAT", "A MAT"],
        hypotheses=["THE COT", "A MAT"],
        has_text=[True, True],
        scripted=[False, True],
        decoded={"beam_lm": ["THE CAT", "A MAT"]},
    )
    metrics = log.metrics()
    assert metrics["wer"] == 0.25 and metrics["wer_beam_lm"] == 0.0  # greedy keeps "wer"
    assert metrics["wer_improvised"] == 0.5 and metrics["wer_beam_lm_improvised"] == 0.0
    assert metrics["cer_beam_lm"] == 0.0 and metrics["cer"] > 0
    log.write_csv(tmp_path / "p.csv")
    header, first = (tmp_path / "p.csv").read_text().splitlines()[:2]
    assert "hypothesis,hypothesis_beam_lm,has_text" in header
    assert "THE COT,THE CAT,True" in first


def test_the_setting_counts_the_lm_bytes_not_its_path(tmp_path, char_lm):
    from mtl_ser.settings import IGNORED_KEYS, data_values

    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.json").write_text("{}")
    hparams = {f"{s}_annotation": str(tmp_path / f"{s}.json") for s in ("train", "valid", "test")}
    assert "lm_digest" not in data_values(hparams)
    moved = tmp_path / "elsewhere.arpa"
    moved.write_bytes(char_lm.read_bytes())
    first = data_values({**hparams, "lm_path": str(char_lm)})["lm_digest"]
    assert data_values({**hparams, "lm_path": str(moved)})["lm_digest"] == first
    moved.write_text(moved.read_text().replace("\\end\\", "\\end\\\n"))
    assert data_values({**hparams, "lm_path": str(moved)})["lm_digest"] != first
    assert "lm_path" in IGNORED_KEYS
