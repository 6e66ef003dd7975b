"""mtl_ser.atomic: whole folders and files, and the refusal to replace what others made."""

import os

import pytest

from mtl_ser import atomic
from mtl_ser.atomic import (
    OWNER_FILE,
    OutputExistsError,
    atomic_folder,
    atomic_write_text,
    check_file,
    read_owner,
)

OWNER = {"command": "test", "input": "a"}


def write(folder, **files):
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_failed_write_leaves_the_previous_folder_and_no_leftovers(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, OWNER) as tmp:
        write(tmp, a="1", b="1")
    with pytest.raises(RuntimeError), atomic_folder(out, OWNER) as tmp:
        write(tmp, a="2")
        raise RuntimeError("killed halfway")
    assert (out / "a").read_text() == "1" and (out / "b").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert read_owner(out) == OWNER


@pytest.mark.parametrize("exchange", [True, False])
def test_a_new_write_replaces_the_whole_folder(tmp_path, monkeypatch, exchange):
    if not exchange:  # systems without renameat2: two renames
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with atomic_folder(out, OWNER) as tmp:
        write(tmp, a="1", stale="1")
    with atomic_folder(out, OWNER) as tmp:
        write(tmp, a="2")
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE, "a"]
    assert (out / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / ".out.partial-999999999"  # no such process
    dead.mkdir()
    alive = tmp_path / f".out.partial-{os.getppid()}"  # a running process: kept
    alive.mkdir()
    with atomic_folder(out, OWNER) as tmp:
        write(tmp, a="1")
    assert not dead.exists() and alive.exists()


def test_refusals_name_what_would_be_replaced(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    write(user, notes="mine")
    with pytest.raises(OutputExistsError, match=r"user holds files this command did not write"):
        with atomic_folder(user, OWNER):
            pass
    assert (user / "notes").read_text() == "mine"
    with atomic_folder(user, OWNER, overwrite=True) as tmp:
        write(tmp, a="1")
    assert not (user / "notes").exists()
    # Same command, other inputs: refused; the same inputs: replaced.
    with pytest.raises(OutputExistsError, match="output of `mtl-ser test` from other inputs"):
        with atomic_folder(user, {**OWNER, "input": "b"}):
            pass
    with atomic_folder(user, OWNER) as tmp:
        write(tmp, a="2")
    # A training run folder: never, even with overwrite.
    run = tmp_path / "run"
    (run / "save").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="is a training run folder"):
        with atomic_folder(run, OWNER, overwrite=True):
            pass
    assert (run / "save").is_dir()


def test_files_are_written_whole_and_not_over_others(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "one")
    with pytest.raises(OutputExistsError, match="x.txt exists and was not written by this"):
        check_file(path, lambda p: False, overwrite=False)
    check_file(path, lambda p: True, overwrite=False)
    check_file(path, lambda p: False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
