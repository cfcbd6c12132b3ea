"""Scratch: a folder of a measuring child's own for files that nothing needs after the child
ends, removed by its parent once the child has ended, however it ended.

The child leaves without running destructors (os._exit, a crash, a kill), so whatever it
unpacks and would have removed on the way out (an AOTInductor package's files: the aot_package
backend's build.load) goes there rather than into /tmp for good. runner.run.workers makes the
folder, names it in the child's environment under ENV and removes it; `folder()` is that folder
in the child, or None in a process that no worker started.
"""

from __future__ import annotations

import os

ENV = "D2BENCH_SCRATCH"


def folder() -> str | None:
    """This process's scratch folder, where a worker started it; else None."""
    return os.environ.get(ENV) or None
