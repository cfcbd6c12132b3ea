"""Ctrl-C, for real: a terminal sends SIGINT to its foreground process group, which holds the
runner but not its measuring child (that leads its own session). The child must be killed at
once with its workers (on a GPU: its memory freed with it), the run's row must say it was
interrupted, the sweep must stop with one line and exit code 130, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.run.record import read_rows
from tests.helpers import REPO, SMALL_CPU_RUN, clean_environment, process_gone
from tests.test_faults import wait_for

pytestmark = pytest.mark.slow

# the isolation layer alone: a parent that runs a sleeping child with a worker, as a sweep would
PARENT = """
import sys
from runner.run import workers
from tests import isolation_helpers as helpers
try:
    workers.call(helpers.start_worker_and_sleep, sys.argv[1], 600, timeout_s=1800)
except workers.Interrupted as stop:
    print("CAUGHT", stop.cause, stop)
"""


STARTED: list[subprocess.Popen] = []  # what a failing test leaves running is killed after it


@pytest.fixture(autouse=True)
def kill_leftovers():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            for child in own_session_children(process.pid):  # measuring children first
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def own_session_children(pid: int) -> list[int]:
    """Children of `pid` that lead their own session (the runner's measuring children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            child = int(stat.parent.name)
            if parent == pid and os.getsid(child) == child:
                found.append(child)
        except (OSError, ValueError, IndexError):
            continue
    return found


def as_a_foreground_job() -> None:
    """SIGINT at its default, as a terminal's foreground job has it: a test suite started in the
    background of a non-interactive shell (`make test &`) inherits SIGINT ignored, and passes
    that on to every process it starts, which then would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """A process in its own process group (as a shell's foreground job), output to `log`."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=clean_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=as_a_foreground_job,
        )
    STARTED.append(process)
    return process


def measuring_child(runner: subprocess.Popen) -> int:
    """The runner's measuring child: the child process that leads its own session."""
    return wait_for(lambda: next(iter(own_session_children(runner.pid)), None), 60, "the child")


def ctrl_c(process: subprocess.Popen, child: int) -> float:
    """SIGINT to the process's group, as a terminal's Ctrl-C; seconds until `child` was gone.
    The process itself then has a while (loaded CI machines) to write the row and exit."""
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    assert process_gone(child, wait_s=10), "the measuring child outlived Ctrl-C"
    took = time.monotonic() - started
    process.wait(timeout=60)
    return took


def test_ctrl_c_kills_the_child_and_its_workers_at_once(tmp_path):
    pid_file, log = tmp_path / "pids", tmp_path / "log"
    parent = start([sys.executable, "-c", PARENT, str(pid_file)], log)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the child and its worker")
    child, worker = (int(p) for p in pid_file.read_text().split())
    took = ctrl_c(parent, child)
    assert took < 2, f"the child took {took:.1f} s to stop"
    assert process_gone(worker, wait_s=1), "the child's worker outlived Ctrl-C"
    output = log.read_text()
    assert "CAUGHT interrupted Ctrl-C (SIGINT)" in output, output
    assert "Traceback" not in output and "BrokenPipeError" not in output, output


def runner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


def measuring(folder: Path, times: int = 1) -> bool:
    """The run in `folder` has reached its timed calls (`times` times: child.log is appended)."""
    log = folder / "child.log"
    return log.exists() and log.read_text().count("optimize:") >= times


def test_ctrl_c_stops_a_run_with_one_line_and_its_row_says_interrupted(tmp_path):
    folder, log = tmp_path / "run", tmp_path / "log"
    runner = start(
        runner_command(*SMALL_CPU_RUN, "bench.iters=100000", f"hydra.run.dir={folder}"), log
    )
    wait_for(lambda: measuring(folder), 120, "the timed calls")
    took = ctrl_c(runner, measuring_child(runner))
    assert took < 2, f"the child took {took:.1f} s to stop"
    assert runner.returncode == 130
    output = log.read_text()
    assert "Traceback" not in output and "BrokenPipeError" not in output, output
    lines = [line for line in output.splitlines() if "interrupted (Ctrl-C)" in line]
    assert len(lines) == 1 and "the same command resumes" in lines[0], output
    (row,) = read_rows(folder / "result.csv")
    assert row.status == "error" and row.error.startswith("interrupted: Ctrl-C (SIGINT)"), row


def test_ctrl_c_stops_a_sweep_and_the_same_command_resumes_it(tmp_path):
    sweep = tmp_path / "sweep"
    # two jobs: a short one, then one that would time for hours
    args = runner_command(
        "--multirun", *SMALL_CPU_RUN, "bench.iters=3,100000", f"hydra.sweep.dir={sweep}"
    )
    first_log = tmp_path / "first.log"
    first = start(args, first_log)
    long_run = wait_for(
        lambda: next((p.parent for p in sweep.glob("*/child.log") if "100000" in str(p)), None),
        300,
        "the second job",
    )
    wait_for(lambda: measuring(long_run), 120, "the second job's timed calls")
    assert ctrl_c(first, measuring_child(first)) < 2
    assert first.returncode == 130
    output = first_log.read_text()
    assert "Traceback" not in output and "sweep done" not in output, output
    assert output.count("interrupted (Ctrl-C)") == 1, output
    (short,) = read_rows(next(p for p in sweep.glob("*/result.csv") if p.parent != long_run))
    (stopped,) = read_rows(long_run / "result.csv")
    assert short.status == "ok" and stopped.error.startswith("interrupted:")

    # the same command again: the finished run is kept, the interrupted one measured again
    again_log = tmp_path / "again.log"
    again = start(args, again_log)
    wait_for(lambda: "run: kept" in again_log.read_text(), 120, "the finished run to be kept")
    wait_for(lambda: measuring(long_run, times=2), 120, "the second job measured again")
    assert ctrl_c(again, measuring_child(again)) < 2
    assert again.returncode == 130
    assert read_rows(long_run / "result.csv")[0].timestamp != stopped.timestamp


def test_ctrl_c_then_the_same_single_run_command_keeps_the_measured_repeats(tmp_path):
    """Issue 24: after Ctrl-C the same single-run command made a new time-named folder and
    measured every repeat again. The run's folder is now named by its overrides, so the same
    command finds it, keeps the repeats measured there and measures the rest; the interrupt
    line says which."""
    args = runner_command(*SMALL_CPU_RUN, "bench.repeats=3", "bench.iters=50")
    first_log = tmp_path / "first.log"
    first = start(args, first_log, cwd=tmp_path)  # no hydra.run.dir: the default folder
    result = wait_for(
        lambda: next(iter((tmp_path / "outputs" / "runs").glob("*/result.csv")), None),
        300,
        "repeat 0's row",
    )
    assert ctrl_c(first, measuring_child(first)) < 2
    assert first.returncode == 130
    (line,) = [line for line in first_log.read_text().splitlines() if "interrupted" in line]
    assert "the same command resumes: it keeps repeat 0 of 3" in line, line
    assert line.endswith("and measures repeats 1, 2"), line
    (measured,) = read_rows(result)
    assert measured.repeat == 0 and measured.status == "ok"

    again_log = tmp_path / "again.log"
    again = start(args, again_log, cwd=tmp_path)
    assert again.wait(timeout=600) == 0, again_log.read_text()
    assert "repeats [1, 2]" in again_log.read_text()
    assert [p.parent for p in (tmp_path / "outputs" / "runs").glob("*/result.csv")] == [
        result.parent
    ]
    rows = read_rows(result)
    assert [row.repeat for row in rows] == [0, 1, 2]
    assert rows[0] == measured  # kept as it was
    assert rows[1].session == rows[2].session != measured.session
