"""Isolation: takes a picklable function and its arguments, runs it in a fresh spawned process
with a timeout, and returns its result or raises `ChildFailed` saying how the child ended.

A fresh process per run keeps compile caches, CUDA state and crashes of one run out of the next
(TorchScript re-specialises a module that already ran at another precision, so a shared process
measures the wrong thing). The child leads its own process group, so a timeout kills it together
with any workers it started (compiler pools), and the driver frees its GPU memory.

Ctrl-C: the child leads its own session, so a terminal's SIGINT reaches only the parent. The
parent then kills the child's process group at once (its GPU memory goes with it) and raises
`Interrupted`, a ChildFailed with cause `interrupted`, for the caller to record before it stops.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any


class ChildFailed(RuntimeError):
    """The child did not return a result. `cause` is exception | timeout | signal | exit."""

    def __init__(self, cause: str, message: str, detail: str = ""):
        super().__init__(message)
        self.cause = cause
        self.detail = detail


class Interrupted(ChildFailed):
    """The parent was interrupted (SIGINT, Ctrl-C) while the child worked; the child is dead."""

    def __init__(self, elapsed_s: float):
        super().__init__(
            "interrupted", f"Ctrl-C (SIGINT) after {elapsed_s:.0f} s; child and its workers killed"
        )


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent dies, so that a killed sweep
    leaves no orphan measuring on the GPU. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def send_outcome(conn, call: Callable[[], Any]) -> None:
    """Run `call` and send ("ok", result) or ("raised", type, message, traceback) on `conn`;
    everything, a result that cannot be pickled too, reaches the parent."""
    try:
        result = ("ok", call())
    except BaseException as error:  # noqa: BLE001 - everything must reach the parent
        result = ("raised", type(error).__name__, str(error).strip(), traceback.format_exc())
    try:
        conn.send(result)
    except Exception as error:  # the result itself could not be pickled
        conn.send(("raised", type(error).__name__, f"result not transferable: {error}", ""))


def exit_without_teardown() -> None:
    """The result is in the pipe and the run's files are written: skip the interpreter's
    teardown (CUDA context, compiler worker pools, atexit hooks), which takes seconds per run
    and can hang; the parent kills whatever the child started with its process group."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def _child_main(fn: Callable, args: tuple, conn) -> None:
    os.setsid()  # own process group: the parent can kill it with everything it started
    _die_with_parent()
    send_outcome(conn, lambda: fn(*args))
    conn.close()
    exit_without_teardown()


def _kill_group(process) -> None:
    """Kill the child and everything in its process group. Before the child has made its own
    group (it is still starting), only the child itself exists to be killed."""
    if process.pid is None:  # never started
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.is_alive():
        process.kill()
    process.join(10)


def call(fn: Callable, *args: Any, timeout_s: float, env: dict[str, str] | None = None) -> Any:
    """fn(*args) in a spawned child whose environment adds `env`; its return value, or
    ChildFailed."""
    current = multiprocessing.get_start_method(allow_none=True)
    if current is not None and current not in multiprocessing.get_all_start_methods():
        # A loky worker (joblib launcher) sets its own start method, which a spawned child
        # cannot resolve when it prepares itself; the child only needs plain spawn.
        multiprocessing.set_start_method("spawn", force=True)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(fn, args, send), daemon=False)
    started = time.monotonic()
    try:
        _start(process, env or {})
        send.close()
        message = _wait(process, receive, started + timeout_s, timeout_s)
    except KeyboardInterrupt:
        # Ctrl-C reached this process, not the child (its own session): kill it now rather than
        # wait for its timed calls to end, and let the caller record the run as interrupted.
        _kill_group(process)
        raise Interrupted(time.monotonic() - started) from None
    if message[0] == "ok":
        return message[1]
    _, kind, text, trace = message
    raise ChildFailed("exception", f"{kind}: {text}", trace)


def _start(process, env: dict[str, str]) -> None:
    """Start the child with this process's environment plus `env` (this process keeps its own)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        process.start()  # the child copies this process's environment now
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait(process, receive, deadline: float, timeout_s: float) -> tuple:
    """The child's message; ChildFailed when it times out or ends without one."""
    message = None
    try:
        while message is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(process)
                raise ChildFailed("timeout", f"timed out after {timeout_s:g} s; child killed")
            if receive.poll(min(remaining, 1.0)):
                try:
                    message = receive.recv()
                except EOFError:  # the child died without sending
                    break
            elif not process.is_alive() and not receive.poll(0):
                break
    finally:
        receive.close()
    process.join(30)
    # Whatever the child left behind (compiler workers of a crashed child, a child that sent
    # its result but hangs on exit) goes with its process group.
    _kill_group(process)
    if message is None:
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            raise ChildFailed("signal", f"child killed by {name} (signal {-code})")
        raise ChildFailed("exit", f"child exited with code {code} without a result")
    return message
