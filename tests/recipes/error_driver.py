"""Runs command lines of `mtl-ser` and of the recipes as ``__main__``, each in its own forked
process, after importing the heavy libraries once (a fresh interpreter per case would cost
seconds of imports each). Reads ``[{"argv": [...], "out": "folder"}, ...]`` as JSON on
stdin; each case's exit status, stdout and stderr go to ``out/{status,stdout,stderr}``.

``argv[0]`` is ``-m mtl_ser.cli`` (given as "mtl_ser.cli") or a recipe script path, exactly
what ``python argv...`` would run; an uncaught exception prints its traceback and exits 1,
as Python does.
"""

import json
import os
import runpy
import sys
import traceback
from pathlib import Path

# The imports a recipe and the CLI pay for, done once before forking.
import speechbrain  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import mtl_ser.brain  # noqa: F401
import mtl_ser.cli  # noqa: F401
import mtl_ser.experiment  # noqa: F401
import mtl_ser.hparams_check  # noqa: F401


def run_case(argv: list[str], out: Path) -> None:
    """In the forked child: runs ``argv`` as ``python argv`` would, then exits."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        handle = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
    status = 0
    try:
        if argv[0] == "mtl_ser.cli":
            sys.argv = ["mtl-ser", *argv[1:]]
            runpy.run_module("mtl_ser.cli", run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, str(Path(argv[0]).parent))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as done:
        code = done.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    for case in json.load(sys.stdin):
        out = Path(case["out"])
        out.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            run_case(case["argv"], out)
        _, wait_status = os.waitpid(pid, 0)
        (out / "status").write_text(str(os.waitstatus_to_exitcode(wait_status)))


if __name__ == "__main__":
    main()
