"""Fault injection on the CPU with a small real detector, real processes and real signals (the
table of docs/failures.md): a child killed by a signal mid-run, answers outside the
parity bounds, a sweep killed half-way and started again, two sweeps sharing one folder, and the
parent killed while it works. Nothing of the runner is mocked; faults are made from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.run.record import read_rows
from tests.helpers import REPO, SMALL_CPU_RUN, clean_environment, process_gone

pytestmark = pytest.mark.slow


def start_runner(*args: str) -> subprocess.Popen:
    """`python -m runner ARGS` started in its own process group, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def measuring_child(runner: subprocess.Popen) -> int:
    """The spawned child that measures (it leads its own session, unlike the resource tracker),
    once it has started."""

    def find():
        for pid in children_of(runner.pid):
            try:
                if os.getsid(pid) == pid:
                    return pid
            except ProcessLookupError:
                continue
        return None

    return wait_for(find, 60, "the measuring child")


def result_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("result.csv"))


def test_a_child_killed_by_a_signal_mid_run_is_an_error_row(tmp_path):
    folder = tmp_path / "run"
    runner = start_runner(*SMALL_CPU_RUN, "bench.iters=100000", f"hydra.run.dir={folder}")
    child = measuring_child(runner)
    wait_for(lambda: (folder / "child.log").exists(), 60, "the child's log")
    os.kill(child, signal.SIGSEGV)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1, output
    (row,) = read_rows(folder / "result.csv")
    assert row.status == "error"
    assert row.error.startswith("signal: child killed by SIGSEGV"), row.error
    assert process_gone(child)


def test_answers_outside_the_parity_bounds_are_a_parity_fail_row_with_numbers(tmp_path):
    # an fp32 run cannot reach match F1 above 1: the bound is broken for real, by the comparison
    folder = tmp_path / "run"
    runner = start_runner(*SMALL_CPU_RUN, "precision.min_match=1.01", f"hydra.run.dir={folder}")
    output, _ = runner.communicate(timeout=300)
    assert runner.returncode == 1, output
    (row,) = read_rows(folder / "result.csv")
    assert row.status == "parity_fail"
    assert row.parity_pass is False
    assert "match_f1 1.0000 < 1.0100" in row.error
    assert row.latency_ms_median > 0 and row.num_detections is not None


def test_a_sweep_killed_half_way_and_started_again_ends_with_one_row_per_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = (
        "--multirun",
        *SMALL_CPU_RUN,
        "backend=eager,torchscript",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )
    first = start_runner(*args)
    wait_for(lambda: len(result_files(sweep)) >= 1, 300, "the first finished run")
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and whatever child it was running
    first.communicate(timeout=60)
    done_before = {p.parent.name: read_rows(p)[0].timestamp for p in result_files(sweep)}
    assert 1 <= len(done_before) < 4

    again = start_runner(*args)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    files = result_files(sweep)
    assert len(files) == 4
    rows = {path.parent.name: read_rows(path) for path in files}
    assert all(len(found) == 1 and found[0].status == "ok" for found in rows.values())
    # eager and torchscript of one seed are one session: a session both of whose runs had
    # finished is kept; one that was cut short is measured again as a whole, so that its
    # repeats stay paired (docs/running.md: Timing)
    kept = 0
    for seed in ("seed=0", "seed=1"):
        names = [name for name in rows if seed in name.split(",")]
        assert len({rows[name][0].session for name in names}) == 1
        if all(name in done_before for name in names):
            kept += 2
            assert all(rows[name][0].timestamp == done_before[name] for name in names)
    assert output.count("run: kept") == kept
    assert "sweep done: 4 runs: 4 ok" in output


def test_two_sweeps_sharing_one_folder_measure_each_run_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("--multirun", *SMALL_CPU_RUN, "backend=eager,torchscript", f"hydra.sweep.dir={sweep}")
    one, two = start_runner(*args), start_runner(*args)
    outputs = [p.communicate(timeout=600)[0] for p in (one, two)]
    assert one.returncode == 0 and two.returncode == 0, outputs
    files = result_files(sweep)
    assert len(files) == 2
    assert all(read_rows(p)[0].status == "ok" for p in files)
    log = "".join(outputs)
    # every run was measured by exactly one of the sweeps and kept by the other
    assert log.count("run: kept") == 2
    assert log.count("run: ok in") == 2


def test_a_parent_killed_while_it_works_leaves_no_partial_result_and_no_orphan(tmp_path):
    folder = tmp_path / "run"
    runner = start_runner(*SMALL_CPU_RUN, "bench.iters=100000", f"hydra.run.dir={folder}")
    child = measuring_child(runner)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.communicate(timeout=60)
    assert process_gone(child, wait_s=10), "the measuring child outlived its parent"
    assert not (folder / "result.csv").exists()
    assert not list(folder.glob(".result.csv.*"))
