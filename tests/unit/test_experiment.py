"""Recipe arguments: override files, `extends`, command-line precedence."""

import json
import logging

import pytest
from hyperpyyaml import load_hyperpyyaml

from mtl_ser.data.text import CHARACTERS, CharVocabulary
from mtl_ser.experiment import experiment_vocabulary, parse_arguments, resolve_extends
from mtl_ser.models.heads import CTCHead

# Key names avoid prefixes of SpeechBrain's own options (argparse accepts abbreviations).
BASE = """
width: 1
height: 2
opts:
  x: 1
  y: 2
ref: !ref <width>
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nheight: 20\nopts:\n  y: 20\n")
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\nwidth: 100\n")
    (tmp_path / "over.yaml").write_text("height: 30\nopts:\n  x: 30\n")
    return tmp_path


def load(files, argv):
    hparams_file, _, overrides = parse_arguments(argv)
    with open(hparams_file) as f:
        return hparams_file, load_hyperpyyaml(f, overrides)


def test_plain_file_and_cli(files):
    path, h = load(files, [str(files / "base.yaml"), "--height=5"])
    assert path == str(files / "base.yaml")
    assert (h["width"], h["height"], h["opts"], h["ref"]) == (1, 5, {"x": 1, "y": 2}, 1)


def test_extends_chain_and_precedence(files):
    argv = [str(files / "grandchild.yaml"), str(files / "over.yaml"), "--width=7"]
    path, h = load(files, argv)
    assert path == str(files / "base.yaml")
    # grandchild width=100 < command line 7; child height=20 < override file 30;
    # nested keys merge: x from the override file, y from child.
    assert (h["width"], h["height"], h["opts"], h["ref"]) == (7, 30, {"x": 30, "y": 20}, 7)


def test_extends_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="extend each other in a loop"):
        resolve_extends(tmp_path / "a.yaml")


def test_unknown_override_key_is_refused(files):
    (files / "typo.yaml").write_text("bb: 3\n")
    with pytest.raises(KeyError, match="Override 'bb' not found"):
        load(files, [str(files / "base.yaml"), str(files / "typo.yaml")])


def test_override_file_can_swap_an_objects_class(files):
    """HyperPyYAML merges override mappings into the base's key by key and keeps the base's
    class: a logger swapped by an override file got the new arguments on the old class
    (TypeError). A mapping tagged with another class now replaces the old one whole."""
    (files / "objects.yaml").write_text(
        "delay: !new:datetime.timedelta\n  days: 1\nkeep: !new:datetime.timedelta\n  days: 2\n"
    )
    (files / "swap.yaml").write_text(
        "delay: !new:fractions.Fraction\n  numerator: 1\n  denominator: 3\n"
        "keep: !new:datetime.timedelta\n  hours: 5\n"
    )
    _, h = load(files, [str(files / "objects.yaml"), str(files / "swap.yaml")])
    from datetime import timedelta
    from fractions import Fraction

    assert h["delay"] == Fraction(1, 3)
    # The same class still merges argument by argument.
    assert h["keep"] == timedelta(days=2, hours=5)


def _manifest(path, *texts):
    path.write_text(json.dumps({f"u{i}": {"wrd": t} for i, t in enumerate(texts)}))
    return path


def test_experiment_vocabulary_from_training_transcripts(tmp_path, caplog):
    english = _manifest(tmp_path / "en.json", "HELLO THERE", "")
    (tmp_path / "en_run").mkdir()
    assert experiment_vocabulary(tmp_path / "en_run", english) == CharVocabulary()
    (tmp_path / "run").mkdir()
    train = _manifest(tmp_path / "train.json", "GRÜßE", "ÜBER")
    test = _manifest(tmp_path / "test.json", "ØL ÜBER", "Ø", "OK")
    with caplog.at_level(logging.WARNING):
        vocab = experiment_vocabulary(tmp_path / "run", train, (test,))
    assert vocab.characters == CHARACTERS + ("Ü", "ß")
    assert CharVocabulary.load(tmp_path / "run/vocab.json") == vocab
    assert "left out of their CTC targets: 2: 'Ø' 2; in 2 utterance(s), e.g. u0, u1" in caplog.text
    # A run folder made with another set is refused: its checkpoints would not fit.
    with pytest.raises(ValueError, match="another character vocabulary .*'Üß'"):
        experiment_vocabulary(tmp_path / "run", english)


def test_ctc_head_is_sized_to_the_vocabulary():
    head = CTCHead(8, 29)
    head.set_num_tokens(33)
    assert head.linear.out_features == 33 and head.export_kwargs()["n_tokens"] == 33
    linear = head.linear
    head.set_num_tokens(33)
    assert head.linear is linear  # unchanged size: the layer is kept
