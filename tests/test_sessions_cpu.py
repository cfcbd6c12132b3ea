"""Sessions on the CPU with the small real detector: repeats are rows, the backends of a sweep's
session share one session id and take turns block by block, the report pairs them, and a
resumed sweep re-measures only the missing repeats, for every member, keeping one row per
repeat. Real `python -m runner` processes; nothing is mocked."""

from __future__ import annotations

import csv
import datetime

import pytest

from runner.report.identity import identity_of
from runner.report.repeats import speed_ups
from runner.run import record
from runner.run.record import read_rows
from tests.helpers import run_runner

pytestmark = pytest.mark.slow

REPEATS = (
    "model=tv_fasterrcnn_mobilenet",
    "device=cpu",
    "bench.warmup=1",
    "bench.iters=2",
    "bench.rewarm=1",
    "bench.repeats=3",
    "inputs.height=160",
    "inputs.width=224",
)


def sweep_rows(sweep) -> dict[str, list[record.Row]]:
    return {read_rows(p)[0].backend: read_rows(p) for p in sorted(sweep.rglob("result.csv"))}


def test_a_single_run_writes_one_row_per_repeat_and_its_samples(tmp_path):
    out = tmp_path / "single"
    done = run_runner(*REPEATS, f"hydra.run.dir={out}", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_rows(out / "result.csv")
    assert [r.repeat for r in rows] == [0, 1, 2]
    assert {r.repeats for r in rows} == {3} and len({r.session for r in rows}) == 1
    assert {(r.rewarm, r.timing_options) for r in rows} == {(1, "gc=collect pin_cpus=false")}
    assert all(r.status == "ok" and r.parity_pass for r in rows)
    with open(out / "samples.csv", newline="") as f:
        samples = list(csv.DictReader(f))
    assert sorted({(s["repeat"], s["call"]) for s in samples}) == [
        (str(r), str(c)) for r in range(3) for c in range(2)
    ]
    for row in rows:
        mine = [float(s["latency_ms"]) for s in samples if s["repeat"] == str(row.repeat)]
        assert min(mine) == pytest.approx(row.latency_ms_min)


def test_a_sweep_session_pairs_its_backends_and_a_resume_keeps_one_row_per_repeat(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("--multirun", *REPEATS, "backend=eager,torchscript", f"hydra.sweep.dir={sweep}")
    done = run_runner(*args, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "sweep: 2 runs in 1 sessions" in log and "sweep done: 2 runs: 2 ok" in log
    rows = sweep_rows(sweep)
    eager, ts = rows["eager"], rows["torchscript"]
    assert [r.repeat for r in eager] == [r.repeat for r in ts] == [0, 1, 2]
    (session,) = {r.session for r in eager + ts}  # one parent timed both
    # turns: each round's blocks run one after the other, rounds in order
    times = sorted((datetime.datetime.fromisoformat(r.timestamp), r.repeat) for r in eager + ts)
    assert [repeat for _, repeat in times] == [0, 0, 1, 1, 2, 2]
    found = speed_ups(eager + ts)[identity_of(ts[0])]
    assert found.pairs == 3 and found.low is not None and found.low <= found.ratio <= found.high

    # repeat 1 of eager is lost (a sweep stopped mid-round): the resume measures repeat 1 for
    # both backends in a new session and keeps repeats 0 and 2 as they were
    eager_csv = next(p for p in sweep.rglob("result.csv") if read_rows(p)[0].backend == "eager")
    record.write_rows(eager_csv, [eager[0], eager[2]])
    again = run_runner(*args, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = sweep_rows(sweep)
    for backend, before in (("eager", eager), ("torchscript", ts)):
        after = resumed[backend]
        assert [r.repeat for r in after] == [0, 1, 2], backend
        assert after[0] == before[0] and after[2] == before[2]
        assert after[1].session != session
    assert resumed["eager"][1].session == resumed["torchscript"][1].session

    # complete now: a third run keeps everything
    third = run_runner(*args, timeout=900)
    assert third.returncode == 0
    assert (third.stdout + third.stderr).count("run: kept") == 2
    assert sweep_rows(sweep) == resumed
