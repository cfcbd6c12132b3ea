"""One owner of a run's identity (runner.identity): a column added there reaches the member's rows,
what an error row keeps and what the report merges and pairs rows by; the Job's keys (where and
why a run is made) are outside the fingerprint and the sweep's folder names, which both derive
from the Config / Job split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runner import identity
from runner.config import Composed, Config, Job, job_keys, not_in_dirname
from runner.identity import Column, describe, fingerprint, recorded
from runner.report.identity import compare_fields, identity_of, pair_fields, pair_key
from runner.report.repeats import place_of
from runner.run import record, steps
from runner.run.member import Member
from runner.run.record import Row
from runner.run.steps import Prepared
from tests.helpers import SMALL_CPU_RUN, compose_config

# a Row column that no consumer treats as identity today, with its value for a Config
ADDED = Column("backend_notes", lambda cfg: f"seed {cfg.seed}")


def test_a_column_added_to_the_identity_reaches_every_consumer(make_run, monkeypatch):
    cfg, job = make_run(*SMALL_CPU_RUN)
    plain = Row(model="m", backend="eager", backend_notes="one")
    other = dataclasses.replace(plain, backend_notes="two")
    assert identity_of(plain) == identity_of(other)  # before: the rows merge
    assert "backend_notes" not in recorded(cfg, job)

    monkeypatch.setattr(identity, "IDENTITY", (*identity.IDENTITY, ADDED))

    # the member's rows
    row = Member(cfg, job).end(Prepared("unsupported", "not on this machine"))
    assert row.backend_notes == "seed 0"
    (written,) = record.read_rows(Path(job.output_dir) / "result.csv")
    assert written.backend_notes == "seed 0"
    # an error row keeps it
    broken = steps.row(recorded(cfg, job), {"no_such_column": 1})
    assert broken.status == "error" and broken.backend_notes == "seed 0"
    # the report never merges rows that differ in it, and pairs by it
    assert identity_of(plain) != identity_of(other)
    assert "backend_notes" in compare_fields() and pair_key(plain) != pair_key(other)
    assert "backend_notes" in pair_fields() and place_of(plain) != place_of(other)


def test_the_config_gives_every_identity_column_but_the_ones_the_run_states(make_config):
    cfg = make_config(*SMALL_CPU_RUN, "batch=2", "+model.arch_options.box_score_thresh=0.1")
    values = identity.identity(cfg)
    stated = [c.name for c in identity.IDENTITY if c.of_config is None]
    assert stated == ["weights", "accuracy_dataset"]  # digests the child reads from the files
    assert list(values) == [name for name in identity.identity_columns() if name not in stated]
    assert values["batch"] == 2 and values["image_hw"] == "160x224"
    assert values["arch_options"] == "box_score_thresh=0.1"
    assert values["timing_options"] == "gc=collect pin_cpus=false"
    columns = set(record.COLUMNS)
    assert set(identity.kept_columns()) <= columns, set(identity.kept_columns()) - columns


def test_describe_names_the_run_or_the_sessions_backends(make_config):
    cfg = make_config(*SMALL_CPU_RUN, "backend=inductor", "backend.options.mode=max-autotune")
    assert describe(cfg) == (
        "tv_fasterrcnn_mobilenet export=trace batch=1 precision=fp32 "
        "backend=inductor[mode=max-autotune] shapes=static"
    )
    session = describe(cfg, ["backend=eager", "backend=torchscript backend.options.freeze=false"])
    assert "backends=eager,torchscript " in session


def test_the_measured_config_and_the_job_share_no_key_and_make_the_schema():
    measured = {f.name for f in dataclasses.fields(Config)}
    assert measured.isdisjoint(job_keys())
    assert {f.name for f in dataclasses.fields(Composed)} == measured | set(job_keys())
    plumbing = ("members", "sweep_jobs", "sweep_started", "command", "output_dir")
    assert set(plumbing) <= set(job_keys()) and not set(plumbing) & measured


def test_the_jobs_keys_change_no_fingerprint_and_name_no_folder(make_run, tmp_path):
    cfg, _ = make_run()
    given = {
        "output_dir": f"output_dir={tmp_path / 'elsewhere'}",
        "command": "command='python -m runner'",
        "redo": "redo=true",
        "members": "members=['backend=eager']",
        "sweep_jobs": "sweep_jobs=4",
        "sweep_started": "sweep_started=1.5",
    }
    assert set(given) == set(job_keys()), "a Job key this test does not set"
    composed = compose_config(*given.values(), "batch=2", return_hydra_config=True)
    assert composed.hydra.job.override_dirname == "batch=2"
    assert list(composed.hydra.job.config.override_dirname.exclude_keys) == not_in_dirname()
    assert not_in_dirname() == ["sweep", *job_keys()]
    moved, job = make_run(*given.values())
    assert job == Job(
        output_dir=str(tmp_path / "elsewhere"),
        command="python -m runner",
        redo=True,
        members=["backend=eager"],
        sweep_jobs=4,
        sweep_started=1.5,
    )
    assert fingerprint(moved, "code") == fingerprint(cfg, "code")


def test_a_failure_after_the_timed_blocks_keeps_the_measured_rows(make_run):
    """A run whose child dies in its finish step (the profiler pass), as a SLURM cancel caught
    one in CI, keeps the rows its timed blocks wrote: same status and figures, the failure
    written into them; had the accuracy pass been asked for and died, they would be errors."""
    from runner.run.steps import Block
    from runner.run.workers import ChildFailed

    cfg, job = make_run(*SMALL_CPU_RUN, "bench.repeats=2")
    member = Member(cfg, job)
    member.prepared = Prepared("ok", "")
    for repeat in range(2):
        ms = 10.0 + repeat
        block = Block(samples={"opt": [ms, ms, ms]}, image_hw={"opt": "160x224"})
        member.add_block(repeat, block, "session")
        member.write()
    killed = ChildFailed("signal", "child killed by SIGTERM (signal 15)")
    member.fail_after_timing("finish", killed)
    written = record.read_rows(Path(job.output_dir) / "result.csv")
    assert [r.repeat for r in written] == [0, 1]
    assert [r.latency_ms_median for r in written] == [10.0, 11.0]
    assert {r.status for r in written} == {"ok"}
    assert all(r.error.startswith("finish: signal: child killed by SIGTERM") for r in written)
    # what the next run of the same command finds: both repeats measured, nothing to redo
    again = Member(cfg, job)
    again.read_kept()
    assert again.missing() == set()
