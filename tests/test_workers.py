"""Isolation, through what production uses (runner.run.workers): a Worker's child builds its
handler once and answers request after request; `call` is one request on a Worker. A value comes
back, or ChildFailed says how the child ended (exception, signal, timeout, exit); a timed-out
child and its workers are gone. InlineWorker answers the same requests in this process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from runner import scratch
from runner.run import workers
from runner.run.workers import ChildFailed, InlineWorker, Worker
from tests import isolation_helpers as helpers
from tests.helpers import process_gone


def test_returns_the_childs_value():
    assert workers.call(helpers.add, 2, 3, timeout_s=60) == 5
    assert workers.call(helpers.add, [1], [2], timeout_s=60) == [1, 2]


def test_the_child_gets_extra_environment_and_the_parent_keeps_its_own(monkeypatch):
    monkeypatch.setenv("D2BENCH_TEST_KEPT", "parent")
    monkeypatch.delenv("D2BENCH_TEST_NEW", raising=False)
    env = {"D2BENCH_TEST_KEPT": "child", "D2BENCH_TEST_NEW": "new"}
    seen = workers.call(helpers.environment, list(env), timeout_s=60, env=env)
    assert seen == env
    assert os.environ["D2BENCH_TEST_KEPT"] == "parent"
    assert "D2BENCH_TEST_NEW" not in os.environ


@pytest.mark.parametrize("how", ["return", "raise", "signal", "sleep"])
def test_the_childs_scratch_folder_is_gone_however_the_child_ended(tmp_path, how):
    """The child leaves with os._exit (no destructors) or dies: what it put in its scratch
    folder (an AOTInductor package's unpacked files) is removed by the parent."""
    note = tmp_path / "scratch"
    ended = {"return": None, "raise": "exception", "signal": "signal", "sleep": "timeout"}[how]
    try:
        workers.call(helpers.fill_scratch_then, str(note), how, signal.SIGSEGV, timeout_s=10)
    except ChildFailed as failure:
        assert failure.cause == ended
    else:
        assert ended is None
    folder = note.read_text()
    assert os.path.basename(folder).startswith("d2bench-child-")
    assert not os.path.exists(folder), "the parent removed the child's scratch folder"


@pytest.mark.parametrize("end", ["close", "kill"])
def test_a_worker_removes_its_scratch_folder_when_closed_or_killed(end):
    worker = Worker(workers.the_function, (helpers.add,))
    assert worker.request("__call__", 1, 2, timeout_s=60) == 3
    assert os.path.isdir(worker.scratch)
    getattr(worker, end)()
    assert not os.path.exists(worker.scratch)


def test_scratch_folders_of_parents_that_are_gone_are_removed_by_the_next_worker(tmp_path):
    """A sweep killed outright (SIGKILL) cannot remove its child's scratch folder; the next
    Worker on the machine removes it, and leaves those of parents still alive."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    root = Path(tempfile.gettempdir())
    orphan = root / f"{scratch.PREFIX}{gone.pid}-test"
    alive = root / f"{scratch.PREFIX}{os.getppid()}-test"
    for folder in (orphan, alive):
        (folder / "aotinductor_x").mkdir(parents=True)
    try:
        assert workers.call(helpers.add, 1, 2, timeout_s=60) == 3
        assert not orphan.exists(), "the folder of a parent that is gone is removed"
        assert alive.exists(), "a living parent's folder stays"
    finally:
        shutil.rmtree(orphan, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def test_the_child_is_another_process(tmp_path):
    pid_file = tmp_path / "pid"
    assert workers.call(helpers.write_pid_and_sleep, str(pid_file), 0, timeout_s=60) == "woke up"
    child = int(pid_file.read_text())
    assert child != os.getpid()
    assert process_gone(child)


def test_an_exception_in_the_child():
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.raise_value_error, "bad input 42", timeout_s=60)
    assert failure.value.cause == "exception"
    assert "ValueError" in str(failure.value)
    assert "bad input 42" in str(failure.value)
    assert "Traceback" in failure.value.detail
    assert "raise_value_error" in failure.value.detail


def test_a_result_that_cannot_come_back_is_an_exception():
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.return_unpicklable, timeout_s=60)
    assert failure.value.cause == "exception"
    assert "not transferable" in str(failure.value)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_child_killed_by_a_signal(signum):
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.kill_self, int(signum), timeout_s=60)
    assert failure.value.cause == "signal"
    assert signal.Signals(signum).name in str(failure.value)


def test_a_child_that_exits_without_a_result():
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.exit_with, 3, timeout_s=60)
    assert failure.value.cause == "exit"
    assert "3" in str(failure.value)


def test_a_timeout_kills_the_child(tmp_path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.write_pid_and_sleep, str(pid_file), 60, timeout_s=3)
    took = time.monotonic() - started
    assert failure.value.cause == "timeout"
    assert "3 s" in str(failure.value)
    assert 3 <= took < 3 + 5, took
    assert process_gone(int(pid_file.read_text()), wait_s=0.5)


def test_a_timeout_kills_the_childs_workers_too(tmp_path):
    pid_file = tmp_path / "pids"
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.start_worker_and_sleep, str(pid_file), 60, timeout_s=4)
    assert failure.value.cause == "timeout"
    child, worker = (int(p) for p in pid_file.read_text().split())
    assert process_gone(child)
    assert process_gone(worker), "the child's worker outlived the timeout"


def test_a_crashed_childs_workers_do_not_survive_it(tmp_path):
    pid_file = tmp_path / "pids"
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.start_worker_and_die, str(pid_file), int(signal.SIGKILL), timeout_s=60)
    assert failure.value.cause == "signal"
    child, worker = (int(p) for p in pid_file.read_text().split())
    try:
        assert process_gone(child)
        assert process_gone(worker, wait_s=2), "the crashed child's worker is still running"
    finally:
        _kill_if_alive(worker)


def test_a_timeout_during_the_childs_start_up_still_kills_it(tmp_path):
    pid_file = tmp_path / "pid"
    slow_start = helpers.SlowToUnpickle(30, seconds=1.0)  # the child starts for 1 s
    with pytest.raises(ChildFailed) as failure:
        workers.call(helpers.write_pid_and_sleep, str(pid_file), slow_start, timeout_s=0.3)
    assert failure.value.cause == "timeout"
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pid_file.exists():
        return  # the child never reached the function: it was killed in time
    child = int(pid_file.read_text())
    try:
        assert process_gone(child, wait_s=1), "the timed-out child is still running"
    finally:
        _kill_if_alive(child)


def _kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_worker_builds_its_handler_once_and_answers_every_request_in_one_child():
    worker = Worker(helpers.Counter, (10,))
    try:
        first, pid = worker.request("add", 1, timeout_s=60)
        worker.send("add", 5)
        second, same_pid = worker.receive(timeout_s=60)
    finally:
        worker.close()
    assert (first, second) == (11, 16)
    assert pid == same_pid != os.getpid()
    assert process_gone(pid)


def test_a_request_that_outlives_its_timeout_kills_the_worker_and_its_workers(tmp_path):
    """The production path: a child that answered before (prepare) hangs in a later request
    (a timed block)."""
    pid_file = tmp_path / "pids"
    worker = Worker(helpers.Counter, (0,))
    try:
        _, pid = worker.request("add", 1, timeout_s=60)
        started = time.monotonic()
        with pytest.raises(ChildFailed) as failure:
            worker.request("start_worker_and_sleep", str(pid_file), 60, timeout_s=3)
        took = time.monotonic() - started
    finally:
        worker.close()
    assert failure.value.cause == "timeout"
    assert "3 s" in str(failure.value)
    assert 3 <= took < 3 + 5, took
    child, grandchild = (int(p) for p in pid_file.read_text().split())
    assert child == pid
    assert process_gone(child, wait_s=0.5)
    assert process_gone(grandchild), "the worker's own worker outlived the timeout"


def test_a_handler_that_cannot_be_built_is_the_first_requests_exception():
    worker = Worker(helpers.refuse_to_build, ("no such model",))
    try:
        with pytest.raises(ChildFailed) as failure:
            worker.request("add", 1, timeout_s=60)
    finally:
        worker.close()
    assert failure.value.cause == "exception"
    assert "ValueError: no such model" in str(failure.value)
    assert "refuse_to_build" in failure.value.detail


def test_the_inline_worker_answers_as_a_child_would():
    inline = InlineWorker(helpers.Counter, (10,))
    assert inline.request("add", 1, timeout_s=60) == (11, os.getpid())
    with pytest.raises(ChildFailed) as failure:
        inline.request("add", "one", timeout_s=60)
    assert failure.value.cause == "exception"
    assert "TypeError" in str(failure.value)
    with pytest.raises(ChildFailed) as failure:
        InlineWorker(helpers.refuse_to_build, ("no such model",)).request("add", 1, timeout_s=60)
    assert "ValueError: no such model" in str(failure.value)


def test_failures_are_runtime_errors_with_a_cause():
    failure = ChildFailed("timeout", "timed out", "detail")
    assert isinstance(failure, RuntimeError)
    assert (failure.cause, str(failure), failure.detail) == ("timeout", "timed out", "detail")
