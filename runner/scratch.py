"""Scratch: a folder of a measuring child's own for files that nothing needs after the child
ends, removed by its parent once the child has ended, however it ended.

The child leaves without running destructors (os._exit, a crash, a kill), so whatever it
unpacks and would have removed on the way out (an AOTInductor package's files: the aot_package
backend's build.load) goes there rather than into /tmp for good.

    make()                   in the parent (runner.run.workers), for each child: a new folder
                             named by the parent's pid; first removes the folders of parents
                             that are gone (one killed outright could not remove its child's)
    remove(folder)           in the parent, once the child has ended
    ENV                      the child's environment variable that names its folder
    folder()                 in the child: that folder, or None in a process no worker started
    as_tmpdir()              in the child: TMPDIR set to that folder while a block runs, for
                             C++ code that unpacks into TMPDIR (AOTInductor's package loader)
    environment(values)      this process's environment with `values` set while a block runs
                             (what a child started, or C++ called, inside the block sees)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "D2BENCH_SCRATCH"
PREFIX = "d2bench-child-"  # + the parent's pid + "-"


def make() -> str:
    """A new scratch folder for a child of this process (the folders of parents that are gone
    removed first)."""
    _remove_orphans()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans() -> None:
    for found in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = found.name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its parent is gone
            remove(str(found))
        except PermissionError:  # alive, another user's
            pass


def folder() -> str | None:
    """This process's scratch folder, where a worker started it; else None."""
    return os.environ.get(ENV) or None


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set while the block runs, then as it was."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def as_tmpdir() -> contextlib.AbstractContextManager:
    """TMPDIR set to this process's scratch folder while the block runs (nothing changed in a
    process no worker started)."""
    here = folder()
    return environment({"TMPDIR": here}) if here else contextlib.nullcontext()
