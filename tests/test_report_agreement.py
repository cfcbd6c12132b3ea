"""Agreement mode (`python -m runner.report --agreement A B ...`): each sweep's reported median
of one configuration, how far apart they are, the fast-host medians where rows carry the host
probe, and the worst figure for eager rows and for the others."""

from __future__ import annotations

import pytest

from runner.report.agreement import agreement, spread_percent
from runner.report.cli import main
from runner.run import record
from tests.test_pairing import repeats


def sweep(session: str, eager: list[float], graph: list[float], probes: list[float]):
    rows = repeats("eager", eager, session=session) + repeats(
        "static_graph", graph, session=session
    )
    return [record.replace(row, host_probe_ms=probes[row.repeat]) for row in rows]


SLOW_HOST = [0.40, 0.80, 0.40, 0.80, 0.40]
A = sweep("s-a", [15.0, 25.0, 15.2, 25.0, 15.1], [2.60, 2.80, 2.60, 2.80, 2.60], SLOW_HOST)
B = sweep(
    "s-b", [25.0, 25.5, 15.0, 25.2, 15.3], [2.80, 2.80, 2.61, 2.80, 2.60], [0.8, 0.8, 0.4, 0.8, 0.4]
)


def test_spread_is_max_over_min_less_one_in_percent():
    assert spread_percent([10.0, 10.3, 10.1]) == pytest.approx(3.0)
    assert spread_percent([4.0]) == 0.0
    with pytest.raises(ValueError, match="positive"):
        spread_percent([0.0, 1.0])


def test_each_configuration_shows_every_sweep_and_its_agreement():
    text = agreement([A, B], ["a.csv", "b.csv"])
    eager = next(line for line in text.splitlines() if "| eager |" in line)
    cells = [c.strip() for c in eager.strip("|").split("|")]
    # reported medians 15.2 and 25.0: 64.5% apart; fast-host medians 15.1 and 15.15
    assert cells[3:6] == ["15.20", "25.00", "64.5%"]
    assert cells[6:9] == ["15.10", "15.15", "0.3%"]
    assert "- **A:** `a.csv`" in text and "- **B:** `b.csv`" in text
    assert "Worst agreement of eager rows: 64.5% (fast-host: 0.3%)" in text
    assert "of the other backends' rows: 7.7% (fast-host: 0.2%)" in text


def test_rows_without_a_probe_have_no_fast_host_figure():
    plain = [[record.replace(r, host_probe_ms=None) for r in side] for side in (A, B)]
    text = agreement(plain, ["a", "b"])
    assert "(fast-host: —)" in text


def test_a_configuration_missing_from_one_sweep_is_left_out():
    only_eager = [r for r in B if r.backend == "eager"]
    text = agreement([A, only_eager], ["a", "b"])
    assert "static_graph" not in text and "Configurations in every sweep: 1" in text


def test_agreement_needs_two_sweeps():
    with pytest.raises(ValueError, match="two or more"):
        agreement([A], ["a"])


def test_the_command_line_writes_the_agreement(tmp_path):
    paths = []
    for name, rows in (("a", A), ("b", B)):
        paths.append(tmp_path / f"{name}.csv")
        record.write_rows(paths[-1], rows)
    out = tmp_path / "agreement.md"
    assert main(["--agreement", *map(str, paths), "--out-md", str(out)]) == 0
    assert "64.5%" in out.read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["--agreement", "a.csv"],
        ["--agreement", "a.csv", "b.csv", "--compare", "a.csv", "b.csv"],
        ["--agreement", "a.csv", "b.csv", "--out", "x.csv"],
    ],
)
def test_bad_agreement_arguments_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_a_missing_sweep_is_an_error(tmp_path):
    record.write_rows(tmp_path / "a.csv", A)
    assert main(["--agreement", str(tmp_path / "a.csv"), str(tmp_path / "none.csv")]) == 2
