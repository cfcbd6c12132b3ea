"""The host probe (a fixed piece of pure-Python work timed around each block) and the report's
Host speed section, which sets block medians against it."""

from __future__ import annotations

import pytest

from runner.report import host
from runner.report.tables import tables
from runner.run import record, timing
from runner.run.steps import Block
from tests.test_pairing import repeats


def test_the_probe_times_its_fixed_work_once_per_run():
    probes = timing.host_probe(3)
    assert len(probes) == 3 and all(0 < ms < 1000 for ms in probes)


def test_the_probe_refuses_no_runs():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        timing.host_probe(0)


def test_a_block_carries_its_probe_into_the_row_and_the_csv(tmp_path):
    block = Block({"opt": [2.0, 4.0]}, {"opt": "32x32"}, host_probe_ms=0.43)
    assert block.fields(1)["host_probe_ms"] == 0.43
    row = repeats("eager", [3.0], host_probe_ms=0.43)[0]
    path = tmp_path / "result.csv"
    record.write_rows(path, [row])
    assert record.read_rows(path)[0].host_probe_ms == 0.43


def test_correlation_needs_enough_blocks_that_vary():
    assert host.correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert host.correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert host.correlation([1, 2, 3, 4], [1, 2, 3, 4]) is None  # too few blocks
    assert host.correlation([1, 2, 3, 4, 5], [7, 7, 7, 7, 7]) is None  # the probe never moved


def test_fast_host_median_keeps_the_blocks_at_or_below_the_cut():
    latency, probes = [18.0, 28.0, 19.0, 27.0, 17.0], [0.40, 0.62, 0.41, 0.60, 0.39]
    assert host.fast_host_median(latency, probes, 0.45) == 18.0
    assert host.fast_host_median(latency, probes, 0.10) == 19.0  # none below: every block


def test_the_section_shows_an_eager_row_following_the_host_and_a_graph_that_does_not():
    probes = [0.40, 0.62, 0.41, 0.60, 0.39, 0.61]
    eager = repeats("eager", [18.0, 28.0, 19.0, 27.0, 17.0, 28.5])
    graph = repeats("static_graph", [2.6, 2.7, 2.8, 2.6, 2.7, 2.8])
    rows = [
        record.replace(r, host_probe_ms=p)
        for pair in (zip(eager, probes, strict=True), zip(graph, probes, strict=True))
        for r, p in pair
    ]
    text = host.section(rows)
    lines = {line.split("|")[3].strip(): line for line in text.splitlines() if "RetinaNet" in line}
    assert "+1.00" in lines["eager"] or "+0.99" in lines["eager"]
    assert "| 18.00 |" in lines["eager"]  # the fast-host blocks: 18, 19, 17
    assert "0.390–0.620" in lines["eager"]
    graph_r = float(lines["static_graph"].split("|")[7])
    assert abs(graph_r) < 0.5
    assert "### Host speed" in tables(rows)


def test_rows_without_a_probe_have_no_section():
    rows = repeats("eager", [18.0, 28.0, 19.0])
    assert host.section(rows) == ""
    assert "Host speed" not in tables(rows)
