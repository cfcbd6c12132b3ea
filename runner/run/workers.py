"""Workers, the one child-process mechanism: a fresh spawned process that builds a handler
object and answers requests on it, so that one parent can build several backends at once and
then hand out timing blocks to them in turn.

`Worker(factory, args, env, cpus)` spawns the child; `send(method, *args)` asks it to call that
method of `factory(*args)` (built at the first request), `receive(timeout_s)` waits for the
answer, `request(...)` is both. `call(fn, *args, timeout_s)` is one request on a worker whose
handler is `fn`: its value, with the worker gone afterwards. Every answer that is not a value
comes back as `ChildFailed`, whose cause says how: exception (the method raised, or its value
could not be sent back), signal, exit (the child ended without an answer) or timeout (the child
is killed). `InlineWorker` answers the same requests in this process (bench.isolate=false).

A fresh process per run keeps compile caches, CUDA state and crashes of one run out of the next
(TorchScript re-specialises a module that already ran at another precision, so a shared process
measures the wrong thing). The child leads its own process group and session, and the kernel
kills it when its parent dies: a timeout or a crash takes it down with any workers it started
(compiler pools), and the driver frees its GPU memory.

Each child gets a scratch folder of its own (runner.scratch), which the parent removes once the
child has ended, however it ended.

Ctrl-C: a terminal's SIGINT reaches only the parent (the child has its own session). The parent
kills the child's process group at once (its GPU memory goes with it); `Worker.receive` then
lets the KeyboardInterrupt go on, and `call` raises `Interrupted`, a ChildFailed with cause
`interrupted`, for the caller to record before it stops.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from runner import scratch

# ---- how a child ends ---------------------------------------------------------------------


class ChildFailed(RuntimeError):
    """The child gave no value. `cause` is exception | timeout | signal | exit | interrupted;
    `detail` the child's traceback, where it raised."""

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


def outcome(call: Callable[[], Any], catching: type[BaseException] = Exception) -> tuple:
    """("ok", value) or ("raised", type name, message, traceback): what a request answers. The
    child answers everything it meets (catching=BaseException); in this process Ctrl-C and
    SystemExit go on."""
    try:
        return ("ok", call())
    except catching as error:  # noqa: BLE001 - every failure is the request's answer
        return ("raised", type(error).__name__, str(error).strip(), traceback.format_exc())


def unpacked(answer: tuple) -> Any:
    """The value of an answer made by `outcome`; ChildFailed (cause exception) for a raise."""
    if answer[0] == "ok":
        return answer[1]
    _, kind, text, trace = answer
    raise ChildFailed("exception", f"{kind}: {text}", trace)


# ---- the child ----------------------------------------------------------------------------


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


def _exit_without_teardown() -> None:
    """The last answer is in the pipe and the run's files are written: skip the interpreter's
    teardown (CUDA context, compiler worker pools, atexit hooks), which takes seconds per run
    and can hang; the parent kills whatever the child started with its process group."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def _send(conn, answer: tuple) -> None:
    """Send `answer`; a value that cannot be pickled is sent as the exception it raised."""
    try:
        conn.send(answer)
    except Exception as error:  # noqa: BLE001 - the value itself could not be sent
        conn.send(("raised", type(error).__name__, f"result not transferable: {error}", ""))


def _serve(factory: Callable, args: tuple, conn, cpus: Sequence[int]) -> None:
    """The child: own process group and session, then one answer per request until the parent
    says None or goes away."""
    os.setsid()  # the parent kills its group with everything it started; SIGINT stays outside
    _die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)
    built: list = []  # the handler, made at the first request (its failure is that answer)

    def answer(method: str, payload: tuple) -> Any:
        if not built:
            built.append(factory(*args))
        return getattr(built[0], method)(*payload)

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone or closed the pipe
            break
        if request is None:
            break
        method, payload = request
        answered = outcome(lambda m=method, p=payload: answer(m, p), catching=BaseException)
        _send(conn, answered)
    conn.close()
    _exit_without_teardown()


# ---- the parent's side --------------------------------------------------------------------


def _spawn_context():
    current = multiprocessing.get_start_method(allow_none=True)
    if current is not None and current not in multiprocessing.get_all_start_methods():
        # A loky worker (joblib launcher) sets its own start method, which a spawned child
        # cannot resolve when it prepares itself; the child only needs plain spawn.
        multiprocessing.set_start_method("spawn", force=True)
    return multiprocessing.get_context("spawn")


def _start(process, env: dict[str, str]) -> None:
    """Start the child with this process's environment plus `env` (this process keeps its own)."""
    with scratch.environment(env):
        process.start()  # the child copies this process's environment now


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


class Worker:
    """A spawned child serving one handler object; see the module docstring."""

    def __init__(
        self,
        factory: Callable,
        args: tuple = (),
        env: dict[str, str] | None = None,
        cpus: Sequence[int] | None = None,
    ):
        context = _spawn_context()
        self._conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_serve, args=(factory, args, child_conn, list(cpus or [])), daemon=False
        )
        self.closed = False
        self.scratch = scratch.make()
        try:
            _start(self.process, {**(env or {}), scratch.ENV: self.scratch})
        except BaseException:  # Ctrl-C while starting: no child is left behind
            self._end(kill=True)
            raise
        finally:
            child_conn.close()

    def send(self, method: str, *args: Any) -> None:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            pass  # the child is gone; receive() says how it ended

    def receive(self, timeout_s: float) -> Any:
        """The answer to the last request; ChildFailed where there is none. Ctrl-C kills the
        child at once and goes on as KeyboardInterrupt."""
        try:
            return unpacked(self._wait(timeout_s))
        except KeyboardInterrupt:
            self.kill()
            raise

    def request(self, method: str, *args: Any, timeout_s: float) -> Any:
        self.send(method, *args)
        return self.receive(timeout_s)

    def _wait(self, timeout_s: float) -> tuple:
        """The child's next answer; ChildFailed when it times out (killed) or ends without one.
        The one wait loop of the project's child processes."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise ChildFailed("timeout", f"timed out after {timeout_s:g} s; child killed")
            if self._conn.poll(min(remaining, 1.0)):
                try:
                    return self._conn.recv()
                except EOFError:  # the child died without answering
                    break
            elif not self.process.is_alive() and not self._conn.poll(0):
                break
        self.process.join(5)
        code = self.process.exitcode
        # Whatever the child left behind (compiler workers of a crashed child) goes with it.
        self.kill()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            raise ChildFailed("signal", f"child killed by {name} (signal {-code})")
        raise ChildFailed("exit", f"child exited with code {code} without a result")

    def kill(self) -> None:
        """Kill the child's process group now (its GPU memory goes with it)."""
        if not self.closed:
            self._end(kill=True)

    def close(self) -> None:
        """Ask the child to leave, then kill whatever is left of its process group."""
        if not self.closed:
            self._end(kill=False)

    def _end(self, kill: bool) -> None:
        """The child gone (asked to leave first unless `kill`), then its scratch folder."""
        self.closed = True
        if not kill:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._conn.close()
        if not kill:
            self.process.join(2)
        _kill_group(self.process)
        scratch.remove(self.scratch)


def the_function(fn: Callable) -> Callable:
    """The handler of `call`'s worker: `fn` itself, whose __call__ the request names."""
    return fn


def call(fn: Callable, *args: Any, timeout_s: float, env: dict[str, str] | None = None) -> Any:
    """fn(*args) in a fresh spawned child whose environment adds `env`: one request on a Worker.
    Its value, or ChildFailed; Interrupted on Ctrl-C. The child is gone when this returns."""
    started = time.monotonic()
    worker = None
    try:
        worker = Worker(the_function, (fn,), env=env)
        return worker.request("__call__", *args, timeout_s=timeout_s)
    except KeyboardInterrupt:  # the child is dead already (receive and Worker kill it)
        raise Interrupted(time.monotonic() - started) from None
    finally:
        if worker is not None:
            worker.close()


class InlineWorker:
    """The same requests answered in this process (debugging: numbers can be wrong)."""

    def __init__(self, factory: Callable, args: tuple = (), **_ignored: Any):
        self._factory, self._args = factory, args
        self._handler = None
        self._answer: tuple = ("ok", None)
        self.closed = False

    def _answer_to(self, method: str, args: tuple) -> Any:
        if self._handler is None:
            self._handler = self._factory(*self._args)
        return getattr(self._handler, method)(*args)

    def send(self, method: str, *args: Any) -> None:
        self._answer = outcome(lambda: self._answer_to(method, args))

    def receive(self, timeout_s: float) -> Any:
        return unpacked(self._answer)

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
