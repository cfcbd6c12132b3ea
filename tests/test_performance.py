"""Performance summary: best parity-passing backend per variant and precision, where one call's
time goes, and the targets file."""

from __future__ import annotations

import pytest

from runner.report import performance
from runner.report.identity import title_of
from tests.test_report import measured


def section_rows():
    return [
        measured("RetinaNet", "fp16", "eager", 20.0, gpu_busy_ms=4.0, gpu_ops=1000, optimize_s=0),
        measured("RetinaNet", "fp16", "torchscript", 10.0, gpu_busy_ms=4.0, gpu_ops=900),
        # faster, but its answers differ: never the best
        measured("RetinaNet", "fp16", "inductor", 2.0, status="parity_fail", parity_pass=False),
        measured(
            "RetinaNet", "fp16", "cg", 8.0, gpu_busy_ms=2.5, gpu_ops=600, backend_options="x=1"
        ),
        measured("RetinaNet", "fp32", "eager", 12.0, gpu_busy_ms=6.0),
        measured("RetinaNet", "fp32", "torchscript", 13.0, parity_pass=False, status="ok"),
        measured("MaskRCNNFPN", "fp16", "eager", 30.0, gpu_busy_ms=6.0, optimize_s=0.0),
        measured("MaskRCNNFPN", "fp16", "cg", 6.0, gpu_busy_ms=5.0, optimize_s=130.0),
    ]


def bests(rows):
    return {(title_of(b.eager), p): b for _, p, b in performance.best_by_table(rows)}


def test_best_is_the_fastest_row_that_passes_parity():
    found = bests(section_rows())
    retina16 = found["RetinaNet", "fp16"]
    assert retina16.best.backend == "cg" and retina16.best.backend_options == "x=1"
    assert retina16.speed_up == pytest.approx(20.0 / 8.0)
    assert retina16.ceiling == pytest.approx(20.0 / 2.5)
    assert found["RetinaNet", "fp32"].best is None  # the only other row failed parity
    assert found["RetinaNet", "fp32"].speed_up is None


def test_time_table_rows_and_figures():
    text = performance.time_table(section_rows())
    lines = [line for line in text.splitlines() if line.startswith("| RetinaNet | fp16")]
    assert lines[0].split(" | ")[2:] == [
        "eager", "20.00", "4.00", "16.00", "1000", "1.00x", "5.00x", "0.0 |"
    ]  # fmt: skip
    assert lines[1].split(" | ")[2:9] == [
        "cg [x=1]",
        "8.00",
        "2.50",
        "5.50",
        "600",
        "2.50x",
        "8.00x",
    ]
    assert "| RetinaNet | fp32 | no other backend passed parity |" in text


def test_time_table_says_why_a_table_has_no_best_backend():
    """The words "no other backend passed parity" only where that happened: not for eager alone
    (a single run, `make demo`), nor for a backend that passed but was timed in another session
    than eager (a paired speed-up needs both in one session)."""
    from runner.report.repeats import merged_rows, speed_ups
    from tests.test_pairing import repeats

    alone = performance.time_table([measured("RetinaNet", "fp32", "eager", 12.0)])
    assert "| RetinaNet | fp32 | no other backend |" in alone
    assert "passed parity" not in alone

    apart = repeats("eager", [20.0, 20.0, 20.0]) + repeats(
        "ts", [10.0, 10.0, 10.0], session="20261129T110000Z-2-ffff"
    )
    text = performance.time_table(merged_rows(apart), speed_ups(apart))
    assert (
        "| RetinaNet | fp16 | another backend passed parity, measured in another session: "
        "no paired speed-up |" in text
    ), text
    # with a failing backend beside it, the one that passed still says why it has no pair
    failing = repeats("cg", [5.0] * 3, status="parity_fail", parity_pass=False)
    text = performance.time_table(merged_rows(failing + apart), speed_ups(failing + apart))
    assert "measured in another session" in text and "no other backend passed parity" not in text
    # one that failed parity alone is what the old words say
    text = performance.time_table(merged_rows(apart[:3] + failing), speed_ups(apart[:3] + failing))
    assert "| RetinaNet | fp16 | no other backend passed parity |" in text


def write_targets(tmp_path, text):
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_targets_table_says_met_and_missed(tmp_path):
    path = write_targets(
        tmp_path,
        "source: test\nspeed_up: {fp16: 3.0}\n"
        "latency:\n"
        "  - {variant: MaskRCNNFPN, precision: fp16, max_ms: 5.0, max_over_gpu_busy: 1.5}\n"
        "optimize_s_max: 120\n",
    )
    targets = performance.load_targets(path)
    text = performance.targets_table(section_rows(), targets)
    assert (
        "| speed-up over eager | RetinaNet | fp16 | 3.00x | 2.50x (cg [x=1]) | **missed** |" in text
    )
    assert "| speed-up over eager | MaskRCNNFPN | fp16 | 3.00x | 5.00x (cg) | met |" in text
    assert "| median latency | MaskRCNNFPN | fp16 | ≤ 5.00 ms | 6.00 ms (cg) | **missed** |" in text
    assert "| median / GPU busy | MaskRCNNFPN | fp16 | ≤ 1.50x | 1.20x (cg) | met |" in text
    assert "| optimize time, slowest run | MaskRCNNFPN | fp16 | ≤ 120 s | 130.0 s (cg) |" in text
    assert "fp32" not in text  # no fp32 target was asked for
    assert text.startswith("Targets (test)")


def test_targets_per_variant_and_for_every_variant(tmp_path):
    """A variant can have its own speed-up target; "*" applies a latency target to all."""
    path = write_targets(
        tmp_path,
        "speed_up: {fp16: {default: 3.0, RetinaNet: 2.0}}\n"
        "latency:\n  - {variant: '*', precision: '*', max_over_gpu_busy: 1.5}\n",
    )
    targets = performance.load_targets(path)
    text = performance.targets_table(section_rows(), targets)
    assert "| speed-up over eager | RetinaNet | fp16 | 2.00x | 2.50x (cg [x=1]) | met |" in text
    assert "| speed-up over eager | MaskRCNNFPN | fp16 | 3.00x | 5.00x (cg) | met |" in text
    busy_lines = [line for line in text.splitlines() if "median / GPU busy" in line]
    assert len(busy_lines) == len(
        performance.best_by_table(section_rows())
    )  # one per variant and precision


def test_a_target_at_a_precision_without_rows_says_not_measured(tmp_path):
    path = write_targets(tmp_path, "speed_up: {fp16: 3.0, bf16: {default: 4.0, RetinaNet: 2.0}}\n")
    text = performance.targets_table(section_rows(), performance.load_targets(path))
    assert (
        "| speed-up over eager | every variant | bf16 | 4.00x / 2.00x (RetinaNet) "
        "| no bf16 rows in this file | not measured |" in text
    )
    assert "| speed-up over eager | RetinaNet | fp16 |" in text


@pytest.mark.parametrize(
    "text, says",
    [
        ("speed_up: {fp16: 5}\nsped_up: 1\n", "unknown key(s) ['sped_up']"),
        ("speed_up: {fp16: [5]}\n", "is a number or"),
        ("latency:\n  - {variant: A, max: 5}\n", "latency entries take"),
        ("speed_up: [\n", "targets.yaml"),
    ],
)
def test_bad_targets_files_are_refused_naming_the_problem(tmp_path, text, says):
    with pytest.raises(performance.TargetsError) as error:
        performance.load_targets(write_targets(tmp_path, text))
    assert says in str(error.value)


def test_the_committed_targets_file_loads():
    from pathlib import Path

    targets = performance.load_targets(Path(__file__).parents[1] / "results" / "targets.yaml")
    assert targets.needed("fp16", "MaskRCNNFPN") == 5.0
    assert targets.needed("fp16", "MaskRCNNC4") == 3.0
    assert targets.needed("fp32", "MaskRCNNC4") == 2.0
    assert targets.optimize_s_max == 120


def test_report_cli_refuses_a_bad_targets_file_before_writing(tmp_path):
    from tests.test_report import run_cli, write_result_files

    folder = write_result_files(tmp_path / "runs", section_rows())
    bad = write_targets(tmp_path, "nonsense: 1\n")
    done = run_cli(str(folder), "--out", str(tmp_path / "all.csv"), "--targets", str(bad))
    assert done.returncode == 2
    assert "unknown key(s) ['nonsense']" in done.stderr
    assert not (tmp_path / "all.csv").exists()
