"""The typed values of a run's steps (runner.run.steps) and the always-a-row guarantee: a misspelt
field, a value the Row refuses or a parent that meets a value it cannot use still ends in a
row with status error and the reason, never in no row."""

from __future__ import annotations

import dataclasses

import pytest

from runner import backends
from runner.run import bench, record, steps
from runner.run.steps import Block, Environment, Finished, Parity, Prepared


@pytest.mark.parametrize("value", [Environment, Parity, Finished])
def test_every_field_of_a_step_value_is_a_row_column(value):
    # stages: seconds per step, logged; call_stages_ms: ms by stage name, each stage's column
    names = {f.name for f in dataclasses.fields(value)} - {"stages", "call_stages_ms"}
    assert names <= set(record.COLUMNS)
    from runner import stages

    assert set(stages.COLUMNS) <= set(record.COLUMNS)


def test_the_values_make_a_row():
    prepared = Prepared("ok", environment=Environment(torch_version="2"), weights="w")
    block = Block({"opt": [1.0, 3.0]}, {"opt": "32x32"}, peak_mem_mb=5.0, timestamp="t")
    row = steps.row(
        {"model": "m"}, prepared.fields(), block.fields(1), Finished(gpu_ops=3).fields()
    )
    assert (row.status, row.torch_version, row.latency_ms_median, row.gpu_ops) == (
        "ok",
        "2",
        2.0,
        3,
    )
    assert (row.peak_mem_mb, row.timestamp, row.weights) == (5.0, "t", "w")


def test_a_misspelt_field_is_an_error_row_that_names_it():
    row = steps.row({"model": "m", "backend": "eager", "repeat": 2}, {"latency_ms_medain": 1.0})
    assert (row.model, row.backend, row.repeat, row.status) == ("m", "eager", 2, "error")
    assert "latency_ms_medain" in row.error


def test_an_error_row_keeps_the_reason_it_already_had():
    row = steps.row({"model": "m", "status": "unsupported", "error": "no GPU", "oops": 1})
    assert row.status == "error" and "oops" in row.error and "no GPU" in row.error


class _BrokenChild:
    """A measuring side that answers prepare with something that is not a Prepared."""

    def __init__(self, cfg, out):
        pass

    def prepare(self):
        return {"status": "ok"}


def test_a_parent_that_cannot_use_the_childs_answer_still_writes_an_error_row(
    make_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench, "Measurement", _BrokenChild)
    cfg, job = make_run(
        "model=tv_fasterrcnn_mobilenet", "device=cpu", "bench.isolate=false", "backend=eager"
    )
    job = dataclasses.replace(job, output_dir=str(tmp_path / "run"))
    row = bench.run(cfg, job)
    assert row.status == "error" and row.error.startswith("parent: AttributeError")
    (written,) = record.read_rows(tmp_path / "run" / "result.csv")
    assert written.status == "error" and written.backend == "eager"


def test_backends_that_apply_the_dtype_themselves_say_so():
    assert backends.owns_precision("torchscript") and backends.owns_precision("torch_blade")
    assert not backends.owns_precision("eager") and not backends.owns_precision("inductor")
