"""Workers: a measuring process that stays alive between requests, so that one parent can build
several backends at once and then hand out timing blocks to them in turn.

`Worker(factory, args)` spawns a fresh child (its own process group, killed with its parent, as
runner.run.isolate does for one-shot calls) that builds `factory(*args)` and then answers requests:
`send(method, *args)` asks it to call that method, `receive(timeout_s)` waits for the answer.
A method that raises, a child that dies and a request that outlives its timeout all come back as
`isolate.ChildFailed` (exception | signal | exit | timeout); after a timeout the child is killed.
`InlineWorker` has the same interface and runs the handler in this process (bench.isolate=false).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from runner.run.isolate import (
    ChildFailed,
    _die_with_parent,
    _kill_group,
    _start,
    exit_without_teardown,
    send_outcome,
)


def _serve(factory: Callable, args: tuple, conn, cpus: Sequence[int] | None) -> None:
    os.setsid()  # own process group: the parent kills it with everything it started
    _die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)
    built: list = []  # the handler, made at the first request (its failure is that reply)

    def answer(method: str, payload: tuple) -> Any:
        if not built:
            built.append(factory(*args))
        return getattr(built[0], method)(*payload)

    while True:
        try:
            method, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone or closed the pipe
            break
        if method is None:
            break
        send_outcome(conn, lambda method=method, payload=payload: answer(method, payload))
    conn.close()
    exit_without_teardown()


def _unpack(message) -> Any:
    if message[0] == "ok":
        return message[1]
    _, kind, text, trace = message
    raise ChildFailed("exception", f"{kind}: {text}", trace)


class Worker:
    """A spawned child serving one handler object; see the module docstring."""

    def __init__(
        self,
        factory: Callable,
        args: tuple = (),
        env: dict[str, str] | None = None,
        cpus: Sequence[int] | None = None,
    ):
        current = multiprocessing.get_start_method(allow_none=True)
        if current is not None and current not in multiprocessing.get_all_start_methods():
            multiprocessing.set_start_method("spawn", force=True)  # see runner.run.isolate.call
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_serve, args=(factory, args, child_conn, list(cpus or [])), daemon=False
        )
        _start(self.process, env or {})
        child_conn.close()
        self.closed = False

    def send(self, method: str, *args: Any) -> None:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            pass  # the child is gone; receive() says how it ended

    def receive(self, timeout_s: float) -> Any:
        """The answer to the last request; ChildFailed where there is none. Ctrl-C reaches only
        this process (the child leads its own session): the child is killed at once."""
        try:
            return self._receive(timeout_s)
        except KeyboardInterrupt:
            self.kill()
            raise

    def kill(self) -> None:
        """Kill the child's process group now (its GPU memory goes with it)."""
        if not self.closed:
            self.closed = True
            self._conn.close()
            _kill_group(self.process)

    def _receive(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise ChildFailed("timeout", f"timed out after {timeout_s:g} s; child killed")
            if self._conn.poll(min(remaining, 1.0)):
                try:
                    return _unpack(self._conn.recv())
                except EOFError:
                    break
            elif not self.process.is_alive() and not self._conn.poll(0):
                break
        self.process.join(5)
        code = self.process.exitcode
        self.close()
        if code is not None and code < 0:
            import signal

            name = signal.Signals(-code).name
            raise ChildFailed("signal", f"child killed by {name} (signal {-code})")
        raise ChildFailed("exit", f"child exited with code {code} without a result")

    def request(self, method: str, *args: Any, timeout_s: float) -> Any:
        self.send(method, *args)
        return self.receive(timeout_s)

    def close(self) -> None:
        """Ask the child to leave, then kill whatever is left of its process group."""
        if self.closed:
            return
        self.closed = True
        self.send(None)
        self._conn.close()
        self.process.join(2)
        _kill_group(self.process)


class InlineWorker:
    """The same requests answered in this process (debugging: numbers can be wrong)."""

    def __init__(self, factory: Callable, args: tuple = (), **_ignored: Any):
        self._factory, self._args = factory, args
        self._handler = None
        self._answer: tuple = ("ok", None)
        self.closed = False

    def send(self, method: str, *args: Any) -> None:
        try:
            if self._handler is None:
                self._handler = self._factory(*self._args)
            self._answer = ("ok", getattr(self._handler, method)(*args))
        except Exception as error:  # noqa: BLE001 - the same outcome as a child that raised
            self._answer = ("raised", type(error).__name__, str(error).strip(), "")

    def receive(self, timeout_s: float) -> Any:
        return _unpack(self._answer)

    def request(self, method: str, *args: Any, timeout_s: float) -> Any:
        self.send(method, *args)
        return self.receive(timeout_s)

    def close(self) -> None:
        self.closed = True
        self._handler = None


def cpu_shares(count: int, cpus: Sequence[int] | None = None) -> list[list[int]]:
    """`count` disjoint, contiguous shares of the CPUs this process may use (each at least one
    core; shares repeat when there are more workers than cores)."""
    available = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if count <= 0:
        return []
    if count >= len(available):
        return [[available[i % len(available)]] for i in range(count)]
    size = len(available) // count
    return [available[i * size : (i + 1) * size] for i in range(count)]
