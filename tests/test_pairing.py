"""Repeats and paired speed-ups: the bootstrap interval's maths, pairing only within one session
and host and by repeat, "within noise", no speed-up for a parity failure anywhere (tables, the
performance section, targets, plots), identity fields that keep runs apart, old rows."""

from __future__ import annotations

import numpy as np
import pytest

from runner.report import performance
from runner.report.identity import identity_of
from runner.report.markdown import ratio_text
from runner.report.repeats import merge_repeats, merged_rows, speed_ups
from runner.report.speedup_plot import draw_speedup
from runner.report.tables import tables
from runner.run import record, timing
from tests.report_fixtures import H200_ENVIRONMENT
from tests.test_report import check_golden, measured

SESSION = "20261129T100000Z-1-abcd"


def repeats(
    backend: str, medians: list[float], session: str = SESSION, precision: str = "fp16", **fields
) -> list[record.Row]:
    """One row per repeat of `backend` in `session` (RetinaNet, H200 fixture environment)."""
    return [
        measured(
            "RetinaNet",
            precision,
            backend,
            ms,
            session=session,
            repeat=i,
            repeats=len(medians),
            rewarm=10,
            **fields,
        )
        for i, ms in enumerate(medians)
    ]


# ---- the interval -----------------------------------------------------------------------


def test_a_constant_paired_ratio_has_a_zero_width_interval_even_when_both_drift():
    eager = [20.0, 30.0, 16.0, 25.0, 18.0]  # the host drifts from round to round
    fast = [ms / 2.5 for ms in eager]  # the backend drifts with it: pairs say 2.5x each
    assert timing.ratio_of_medians(eager, fast) == pytest.approx(2.5)
    low, high = timing.paired_interval(eager, fast)
    assert low == pytest.approx(2.5) and high == pytest.approx(2.5)


def test_the_interval_is_reproducible_contains_the_ratio_and_narrows_with_less_noise():
    rng = np.random.default_rng(1)
    eager = 20.0 * (1 + 0.05 * rng.standard_normal(9))
    noisy = 10.0 * (1 + 0.20 * rng.standard_normal(9))
    quiet = 10.0 * (1 + 0.01 * rng.standard_normal(9))
    first = timing.paired_interval(eager, noisy)
    assert timing.paired_interval(eager, noisy) == first  # fixed seed
    low, high = first
    assert low <= timing.ratio_of_medians(eager, noisy) <= high
    q_low, q_high = timing.paired_interval(eager, quiet)
    assert q_high - q_low < high - low


def test_the_interval_matches_a_direct_percentile_bootstrap():
    eager, other = [10.0, 12.0, 11.0, 15.0], [5.0, 7.0, 5.5, 6.0]
    index = np.random.default_rng(timing.BOOTSTRAP_SEED).integers(0, 4, size=(4000, 4))
    ratios = np.median(np.array(eager)[index], axis=1) / np.median(np.array(other)[index], axis=1)
    assert timing.paired_interval(eager, other) == pytest.approx(
        tuple(np.percentile(ratios, [2.5, 97.5]))
    )


@pytest.mark.parametrize("eager, other", [([1.0, 2.0], [1.0]), ([], []), ([1.0, -1.0], [1.0, 1.0])])
def test_the_interval_refuses_unpaired_or_bad_latencies(eager, other):
    with pytest.raises(ValueError):
        timing.paired_interval(eager, other)


# ---- pairing ------------------------------------------------------------------------------


def test_rows_pair_by_session_and_repeat_into_a_speed_up_with_its_interval():
    rows = repeats("eager", [20.0, 30.0, 16.0, 25.0, 18.0]) + repeats(
        "ts", [10.0, 15.0, 8.0, 12.5, 9.0]
    )
    found = speed_ups(rows)[identity_of(rows[-1])]
    assert (found.ratio, found.low, found.high, found.pairs) == pytest.approx((2.0, 2.0, 2.0, 5))
    assert found.text() == "2.00x [2.00, 2.00]"
    line = tables(rows).split("| ts | fp16 |")[1].splitlines()[0]
    cells = [c.strip() for c in line.strip(" |").split("|")]
    assert cells[:3] == ["5", "10.00", "8.00–15.00"]
    assert cells[6] == "2.00x [2.00, 2.00]"


def test_rows_of_other_sessions_or_hosts_never_pair():
    eager = repeats("eager", [20.0, 20.0, 20.0])
    other_session = repeats("ts", [10.0, 10.0, 10.0], session="20261129T110000Z-2-ffff")
    other_host = repeats("ts", [10.0, 10.0, 10.0], hostname="bench-99")
    assert speed_ups(eager + other_session) == {}
    assert speed_ups(eager + other_host) == {}
    # a table still shows the rows, with no speed-up
    line = tables(eager + other_host).split("| ts | fp16 |")[1].splitlines()[0]
    assert [c.strip() for c in line.strip(" |").split("|")][6] == "—"


def test_pairs_from_several_sessions_pool_and_unpaired_repeats_are_left_out():
    first = repeats("eager", [20.0, 22.0]) + repeats("ts", [10.0, 11.0])
    later = "20261129T120000Z-3-0001"
    second = repeats("eager", [30.0, 30.0, 30.0], session=later) + repeats(
        "ts", [15.0, 15.0], session=later
    )  # the third eager repeat has no partner
    found = speed_ups(first + second)[identity_of(first[-1])]
    assert found.pairs == 4 and found.ratio == pytest.approx(2.0)


def test_an_interval_that_spans_one_is_within_noise():
    rows = repeats("eager", [10.0, 10.5, 9.8, 10.2, 10.0]) + repeats(
        "cg", [9.6, 10.9, 10.1, 9.9, 10.3]
    )
    found = speed_ups(rows)[identity_of(rows[-1])]
    assert found.low < 1.0 < found.high and found.within_noise
    assert found.text().endswith("within noise")


def test_a_slowdown_never_reads_as_a_tie_in_the_tables():
    """Issue 24: a torchscript row at 0.97x [0.85, 0.997] read "[0.85, 1.00]": its interval's
    upper end, a real slowdown, looked like a tie. A ratio other than 1 gets the digits it
    needs."""
    eager = [10.0, 10.4, 9.8, 10.1, 10.2]
    pair_ratios = [0.997, 0.996, 0.97, 0.85, 0.96]
    rows = repeats("eager", eager) + repeats(
        "ts", [e / r for e, r in zip(eager, pair_ratios, strict=True)]
    )
    found = speed_ups(rows)[identity_of(rows[-1])]
    assert found.high == pytest.approx(0.997) and not found.within_noise
    assert found.text() == "0.97x [0.85, 0.997]"
    line = tables(rows).split("| ts | fp16 |")[1].splitlines()[0]
    assert [c.strip() for c in line.strip(" |").split("|")][6] == "0.97x [0.85, 0.997]"
    # the time table's speed-up and ceiling cells, and every ratio cell, alike
    assert [ratio_text(x) for x in (0.997, 1.004, 0.9996, 1.0, 0.97, 2.5)] == [
        "0.997x", "1.004x", "0.9996x", "1.00x", "0.97x", "2.50x"
    ]  # fmt: skip


def test_fewer_than_three_pairs_give_a_ratio_without_an_interval():
    rows = repeats("eager", [20.0, 20.0]) + repeats("ts", [10.0, 10.0])
    found = speed_ups(rows)[identity_of(rows[-1])]
    assert found.low is None and found.text() == "2.00x (2 pairs)"


def test_old_rows_without_a_session_render_as_one_run_without_an_interval():
    rows = [measured("RetinaNet", "fp16", "eager", 20.0), measured("RetinaNet", "fp16", "ts", 8.0)]
    found = speed_ups(rows)[identity_of(rows[1])]
    assert found.ratio == pytest.approx(2.5) and found.low is None
    assert found.text() == "2.50x (1 run)"
    other_host = [rows[0], record.replace(rows[1], hostname="bench-99")]
    assert speed_ups(other_host) == {}


# ---- parity failures get no speed-up anywhere ------------------------------------------


def failing_session() -> list[record.Row]:
    fail = dict(status="parity_fail", parity_pass=False, parity_match_f1=0.8)
    rows = repeats("eager", [20.0] * 4) + repeats("fast", [2.0] * 4)
    rows += repeats("ts", [10.0] * 4)
    # one repeat of `fast` (another session's child) failed parity: the whole row fails
    return rows + repeats("fast", [2.0], session="20261129T130000Z-4-0002", **fail)


def test_a_parity_failure_in_any_repeat_takes_the_speed_up_away_everywhere(tmp_path):
    rows = failing_session()
    fast = rows[4]
    assert identity_of(fast) not in speed_ups(rows)
    text = tables(rows)
    fast_line = text.split("| fast | fp16 |")[1].splitlines()[0]
    assert "FAIL (F1 0.80)" in fast_line and "x" not in fast_line.split("|")[7]
    merged = merged_rows(rows)
    found = speed_ups(rows)
    bests = performance.best_by_table(merged, found)
    assert [b.best.backend for _, _, b in bests] == ["ts"]
    targets = performance.Targets({"fp16": 1.5}, [], None, "test")
    table = performance.targets_table(merged, targets, found)
    assert "(fast)" not in table and "(ts)" in table and "| met |" in table
    bars = draw_speedup(rows).drawn
    assert [(bar.backend, bar.precision) for bar in bars] == [("ts", "fp16")]


# ---- identity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("arch_options", "MODEL.RPN.POST_NMS_TOPK_TEST=50"),
        ("image", "street.jpg"),
        ("thresholds", "score=0.3 nms=0.5 detections=100"),
        ("seed", 1),
        ("weights", "model_final.pth"),
        ("warmup", 10),
        ("iters", 50),
        ("rewarm", 0),
        ("timing_options", "gc=pause pin_cpus=true"),
    ],
)
def test_rows_that_differ_in_what_is_measured_are_never_merged(field, value):
    base = repeats("eager", [20.0, 20.0, 20.0])
    changed = [record.replace(r, **{field: value}, latency_ms_median=30.0) for r in base]
    merged = merge_repeats(base + changed)
    assert len(merged) == 2
    assert sorted(e.row.latency_ms_median for e in merged.values()) == [20.0, 30.0]
    assert all(e.count == 3 for e in merged.values())


def test_arch_options_give_their_own_table_named_by_them():
    plain = repeats("eager", [20.0, 21.0, 22.0])
    topk = [
        record.replace(r, arch_options="MODEL.RPN.POST_NMS_TOPK_TEST=50", latency_ms_median=15.0)
        for r in plain
    ]
    text = tables(plain + topk)
    assert "### RetinaNet (static shapes, 800x1333, arch_options —)" in text
    assert (
        "### RetinaNet (static shapes, 800x1333, arch_options MODEL.RPN.POST_NMS_TOPK_TEST=50)"
        in (text)
    )


def test_tables_with_repeats_match_golden():
    rows = (
        repeats("eager", [20.0, 30.0, 16.0, 25.0, 18.0])
        + repeats("torchscript", [10.0, 15.0, 8.0, 12.5, 9.0], gpu_busy_ms=6.0)
        + repeats("cudagraphs", [19.0, 31.0, 16.5, 24.0, 18.5], gpu_busy_ms=6.0)
        + repeats(
            "inductor",
            [5.0] * 5,
            status="parity_fail",
            parity_pass=False,
            parity_match_f1=0.9,
            error="parity: match F1 0.9 < 0.99",
        )
    )
    rows = [record.replace(r, **{k: H200_ENVIRONMENT[k] for k in ("gpu_name",)}) for r in rows]
    check_golden("tables_repeats.md", tables(rows, results_csv="results/h200_seed.csv"))
