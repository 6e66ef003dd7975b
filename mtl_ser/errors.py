"""The one place that decides which errors are the user's to fix.

An expected failure (a bad option, file, key or value) ends a command or a recipe with one
line on stderr, ``<program>: error: <what, where, and what to do>``, and exit status 2; any
other exception keeps its traceback, because it is a bug of ours.
"""

from __future__ import annotations

import sys


def expected_errors() -> tuple[type[BaseException], ...]:
    """The error classes whose message is the whole story (imported lazily: the CLI must
    not pay for torch to print a usage error)."""
    from mtl_ser.atomic import OutputExistsError
    from mtl_ser.data.manifest import ManifestError
    from mtl_ser.hparams_check import ConfigError
    from mtl_ser.models.backbones import ModelNotFoundError
    from mtl_ser.runlock import RunLockedError

    return (ConfigError, RunLockedError, ModelNotFoundError, ManifestError, OutputExistsError)


def report(program: str, err: BaseException) -> int:
    """Prints ``err`` as ``<program>: error: <message>`` on stderr. Returns exit status 2."""
    print(f"{program}: error: {err}", file=sys.stderr)
    return 2
