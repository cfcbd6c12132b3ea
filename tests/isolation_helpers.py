"""Functions that runner.run.workers runs in spawned children: they must be importable by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def add(a, b):
    return a + b


def environment(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def raise_value_error(message: str):
    raise ValueError(message)


def return_unpicklable():
    return lambda: None  # a lambda cannot be pickled back to the parent


def kill_self(signum: int):
    os.kill(os.getpid(), signum)
    time.sleep(30)  # not reached


def exit_with(code: int):
    os._exit(code)


def fill_scratch_then(note: str, how: str, signum: int = 0):
    """Write a file into this child's scratch folder (runner.scratch) and the folder's path into
    `note`, then end `how`: return, raise, die by `signum` ("signal") or sleep until killed."""
    from runner import scratch

    Path(note).write_text(scratch.folder())
    left = Path(scratch.folder()) / "aotinductor_x" / "wrapper.so"
    left.parent.mkdir()
    left.write_bytes(b"\0" * 1024)
    if how == "raise":
        raise RuntimeError("failed after unpacking")
    if how == "signal":
        os.kill(os.getpid(), signum)
    if how == "sleep":
        time.sleep(60)
    return "returned"


def write_pid_and_sleep(pid_file: str, seconds: float):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "woke up"


def _restore_slowly(value, seconds: float):
    time.sleep(seconds)
    return value


class SlowToUnpickle:
    """An argument that takes `seconds` to unpickle in the child: a child start-up that takes
    that long (heavy imports), before the child runs any code of runner.run.workers."""

    def __init__(self, value, seconds: float):
        self.value, self.seconds = value, seconds

    def __reduce__(self):
        return _restore_slowly, (self.value, self.seconds)


def _start_grandchild() -> int:
    """A worker process of the child (as a compiler pool would start), in the child's group."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    return worker.pid


def start_worker_and_sleep(pid_file: str, seconds: float):
    worker = _start_grandchild()
    Path(pid_file).write_text(f"{os.getpid()} {worker}")
    time.sleep(seconds)


def start_worker_and_die(pid_file: str, signum: int):
    worker = _start_grandchild()
    Path(pid_file).write_text(f"{os.getpid()} {worker}")
    os.kill(os.getpid(), signum)
    time.sleep(30)  # not reached


class Counter:
    """A handler a Worker builds once and asks many times (as bench asks a Measurement)."""

    def __init__(self, start: int):
        self.value = start
        self.pid = os.getpid()

    def add(self, amount: int) -> tuple[int, int]:
        self.value += amount
        return self.value, self.pid

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "woke up"

    def start_worker_and_sleep(self, pid_file: str, seconds: float) -> None:
        start_worker_and_sleep(pid_file, seconds)


def refuse_to_build(reason: str):
    raise ValueError(reason)
