"""Outputs written whole, and never over files the command did not create.

Every command that writes a folder (``export``, ``evaluate``) builds it in a temporary
sibling (``.<name>.partial-<pid>``) and only then puts it in place, so a killed command
leaves the previous folder or the new one, never a mix; single files (``predict``,
``embed``) are written to a temporary name and renamed. A folder the command writes
carries `OWNER_FILE`, which says what made it (the command and its inputs): writing into
an existing folder that another command or other inputs made, or that holds a user's
files, is refused with one line naming what would be replaced, unless ``--overwrite``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mtl_ser.processes import process_alive

OWNER_FILE = ".mtl_ser_output.json"
# A folder holding one of these is a training run: no command replaces it whole, even with
# --overwrite (its checkpoints would go).
RUN_FOLDER_ENTRIES = ("model_spec.json", "save")
_PARTIAL = ".partial-"


class OutputExistsError(FileExistsError):
    """Writing would replace files this command did not create (one-line message)."""


def _shown(names: Sequence[str], limit: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def read_owner(folder: str | Path) -> dict | None:
    """What made ``folder`` (its `OWNER_FILE`), or None without a readable one."""
    try:
        owner = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def check_folder(folder: str | Path, owner: dict, overwrite: bool, flag: str = "--overwrite"):
    """Refuses, before any work, a folder that a whole-folder write would replace.

    Args:
        folder: the output folder (may not exist).
        owner: what the command writes into `OWNER_FILE` (command and inputs).
        overwrite: the user's ``--overwrite``.

    Raises: OutputExistsError naming the entries that would be replaced, when ``folder``
    holds anything and was not made by the same command from the same inputs.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file, not a folder: choose another output")
    entries = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    made_by = read_owner(folder)
    if not entries or made_by == owner:
        return
    if any(name in entries for name in RUN_FOLDER_ENTRIES) and made_by is None:
        raise OutputExistsError(
            f"{folder} is a training run folder ({_shown(entries)}); writing this output "
            "there would replace the run's own files: choose another folder"
        )
    if overwrite:
        return
    what = (
        f"an output of `mtl-ser {made_by.get('command')}` from other inputs"
        if made_by
        else "files this command did not write"
    )
    raise OutputExistsError(
        f"{folder} holds {what} ({_shown(e for e in entries if e != OWNER_FILE)}); "
        f"give {flag} to replace the whole folder, or choose another one"
    )


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def _remove_stale_partials(target: Path) -> None:
    """Removes temporary siblings left by killed commands (their process is gone)."""
    prefix = f".{target.name}{_PARTIAL}"
    if not target.parent.is_dir():
        return
    for sibling in target.parent.iterdir():
        if not sibling.name.startswith(prefix):
            continue
        pid = sibling.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | Path, owner: dict, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling of ``target`` to write the whole output into; on
    success it becomes ``target`` in one step (the previous folder is removed), on an
    exception it is removed and ``target`` is untouched.

    Args:
        target: the output folder.
        owner: the command and its inputs, saved as `OWNER_FILE` (see `check_folder`).
        overwrite: replace a folder that another command, other inputs or the user made.

    Raises: OutputExistsError (see `check_folder`), before anything is written.
    """
    target = Path(target).absolute()
    check_folder(target, owner, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    tmp = target.parent / f".{target.name}{_PARTIAL}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / OWNER_FILE).write_text(json.dumps(owner, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdir's default mode; a model folder is shared
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the previous folder
        else:  # two renames: killed in between, the previous folder is kept beside
            old = target.parent / f".{target.name}{_PARTIAL}{os.getpid()}.old"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(temporary path)`` beside ``path``, then renames it to ``path`` (a reader
    or a killed writer never leaves half a file). Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_PARTIAL}{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` whole (see `atomic_write`). Returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_file(path: str | Path, ours: Callable[[Path], bool], overwrite: bool) -> None:
    """Refuses to replace an existing file that ``ours(path)`` does not recognise as this
    command's output, unless ``overwrite``. Raises OutputExistsError (one line)."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder: give a file name")
    if path.exists() and not overwrite and not ours(path):
        raise OutputExistsError(
            f"{path} exists and was not written by this command; give --overwrite to "
            "replace it, or choose another name"
        )
