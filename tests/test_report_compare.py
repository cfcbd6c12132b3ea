"""runner.report --compare: two results files side by side, rows paired by identity without the
machine. Fixture rows are built here (as tests/test_report.py builds its own); goldens in
tests/golden/report/compare*.md, rewritten by D2BENCH_UPDATE_GOLDEN=1 (read the diff after)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from runner.report.cli import main
from runner.report.compare import comparison, latency_ratio, pair_rows
from runner.report.identity import compare_fields, pair_key
from runner.report.markdown import DASH, ratio_text
from runner.report.rows import sort_rows, write
from runner.run import record
from runner.run.record import Row
from tests.helpers import run_module
from tests.report_fixtures import A100, H200, H200_ENVIRONMENT, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "report"
A_NAME, B_NAME = "results/h200_seed.csv", "results/a100_seed.csv"
A100_ENVIRONMENT = dict(
    H200_ENVIRONMENT,
    gpu_name=A100,
    gpu_driver="535.104.05",
    cuda_version="12.1",
    torch_version="2.4.1+cu121",
    backend_version="torch 2.4.1+cu121",
    cpu_model="AMD EPYC 7763 64-Core Processor",
    hostname="bench-02",
    timestamp="2026-11-29T08:00:00+00:00",
    warmup=50,
    iters=100,
)


def run_row(machine: dict, variant: str, precision: str, backend: str, **fields) -> Row:
    """A row as bench.run writes it, on the machine given by its environment."""
    values = {**machine, **VARIANTS[variant], "weights": f"detectron2://{variant}.pkl"}
    values["output_dir"] = f"outputs/{machine['hostname']}/{variant}_{precision}_{backend}"
    values.update(fields)
    return Row(variant=variant, precision=precision, backend=backend, **values)


def measured(
    machine: dict, variant: str, precision: str, backend: str, median_ms: float, **fields
) -> Row:
    """An ok row: GPU busy 80% of the median, parity passed with F1 1.00 unless given."""
    figures = dict(
        status="ok",
        latency_ms_median=median_ms,
        latency_ms_mean=median_ms * 1.03,
        latency_ms_p99=median_ms * 1.1,
        latency_ms_std=median_ms * 0.02,
        fps_median=1000.0 / median_ms,
        gpu_busy_ms=median_ms * 0.8,
        parity_pass=True,
        parity_match_f1=1.0,
        num_detections=37,
        num_detections_ref=37,
    )
    return run_row(machine, variant, precision, backend, **{**figures, **fields})


def unsupported(machine: dict, variant: str, precision: str, backend: str) -> Row:
    return run_row(
        machine,
        variant,
        precision,
        backend,
        status="unsupported",
        error="torchscript: RetinaNet | scripting needs the scriptable head\nsecond line hidden",
    )


def a_rows() -> list[Row]:
    """H200: one row only here (MaskRCNNFPN fp16 torchscript), one unsupported, out of order."""
    h = H200_ENVIRONMENT
    return [
        measured(
            h,
            "MaskRCNNFPN",
            "fp16",
            "torchscript",
            16.0,
            status="parity_fail",
            parity_pass=False,
            parity_match_f1=0.85,
            error="parity: match_f1 0.850 < 0.95",
        ),
        measured(h, "RetinaNet", "fp32", "torchscript", 8.66),
        measured(h, "RetinaNet", "fp32", "eager", 20.0),
        measured(h, "RetinaNet", "fp16", "eager", 12.0, parity_match_f1=0.99),
        unsupported(h, "RetinaNet_scripted", "fp32", "torchscript"),
        measured(h, "RetinaNet_scripted", "fp32", "eager", 21.0),
        measured(h, "MaskRCNNFPN", "fp32", "eager", 40.0),
        measured(h, "MaskRCNNFPN", "fp32", "eager", 42.0, shapes="dynamic"),
    ]


def b_rows() -> list[Row]:
    """A100: one row only here (CascadeRCNN fp32 eager); its RetinaNet_scripted torchscript ran."""
    a = A100_ENVIRONMENT
    return [
        measured(a, "CascadeRCNN", "fp32", "eager", 50.0),
        measured(a, "RetinaNet", "fp32", "eager", 30.0),
        measured(a, "RetinaNet", "fp32", "torchscript", 13.0),
        measured(a, "RetinaNet", "fp16", "eager", 15.0, parity_match_f1=0.97),
        measured(a, "RetinaNet_scripted", "fp32", "torchscript", 25.0),
        measured(a, "RetinaNet_scripted", "fp32", "eager", 33.6),
        measured(a, "MaskRCNNFPN", "fp32", "eager", 60.0),
        measured(a, "MaskRCNNFPN", "fp32", "eager", 63.0, shapes="dynamic"),
    ]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("D2BENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with D2BENCH_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden (D2BENCH_UPDATE_GOLDEN=1)"


def write_pair(folder: Path) -> tuple[Path, Path]:
    """Both fixture sides as results CSVs, at A_NAME and B_NAME under `folder`."""
    a_path, b_path = folder / A_NAME, folder / B_NAME
    write(a_rows(), a_path)
    write(b_rows(), b_path)
    return a_path, b_path


def table_line(text: str, heading: str, backend: str, precision: str) -> list[str]:
    """The cells of one row of the comparison table under `### heading`."""
    section = text.split(f"### {heading}\n")[1].split("\n### ")[0]
    line = next(x for x in section.splitlines() if x.startswith(f"| {backend} | {precision} |"))
    return [c.strip() for c in line.strip(" |").split(" | ")]


# ---- pairing ------------------------------------------------------------------------------


def test_pairs_match_identity_without_the_machine():
    pairs, only_a, only_b = pair_rows(a_rows(), b_rows())
    assert len(pairs) == 7
    for a, b in pairs:
        assert pair_key(a) == pair_key(b)
        assert (a.gpu_name, b.gpu_name) == (H200, A100)
    assert [(r.variant, r.precision, r.backend) for r in only_a] == [
        ("MaskRCNNFPN", "fp16", "torchscript")
    ]
    assert [(r.variant, r.precision, r.backend) for r in only_b] == [
        ("CascadeRCNN", "fp32", "eager")
    ]
    assert [a for a, _ in pairs] == sort_rows(a for a, _ in pairs)  # seed order


def test_no_row_is_lost_and_pairing_is_symmetric():
    pairs, only_a, only_b = pair_rows(a_rows(), b_rows())
    assert len(pairs) + len(only_a) == len(a_rows())
    assert len(pairs) + len(only_b) == len(b_rows())
    back, only_b_first, only_a_second = pair_rows(b_rows(), a_rows())
    assert sorted(map(pair_key, (b for b, _ in back))) == sorted(
        map(pair_key, (b for _, b in pairs))
    )
    assert (only_b_first, only_a_second) == (only_b, only_a)


def test_each_identity_field_separates_pairs():
    base = measured(H200_ENVIRONMENT, "RetinaNet", "fp32", "eager", 20.0)
    changes = dict(
        model="other",
        variant="RetinaNet_b2",
        export="script",
        batch=2,
        postprocess=False,
        precision="fp16",
        backend="inductor",
        backend_options="mode=max-autotune",
        shapes="dynamic",
        image_hw="512x512",
        image="street.jpg",
        arch_options="MODEL.RPN.POST_NMS_TOPK_TEST=50",
        thresholds="score=0.3 nms=0.5 detections=100",
        seed=1,
    )
    assert set(changes) == set(compare_fields())
    for field, value in changes.items():
        other = record.replace(base, gpu_name=A100, **{field: value})
        assert pair_rows([base], [other]) == ([], [base], [other]), field
    same = record.replace(base, gpu_name=A100, hostname="x", timestamp="", warmup=1, git_sha="y")
    assert pair_rows([base], [same]) == ([(base, same)], [], [])


def test_a_side_with_several_machines_pairs_each_of_them():
    a_h200 = measured(H200_ENVIRONMENT, "RetinaNet", "fp32", "eager", 20.0)
    a_a100 = measured(A100_ENVIRONMENT, "RetinaNet", "fp32", "eager", 30.0)
    b = measured(dict(H200_ENVIRONMENT, gpu_name="NVIDIA L4"), "RetinaNet", "fp32", "eager", 60.0)
    pairs, only_a, only_b = pair_rows([a_h200, a_a100], [b])
    assert {(x.gpu_name, y.gpu_name) for x, y in pairs} == {
        (H200, "NVIDIA L4"),
        (A100, "NVIDIA L4"),
    }
    assert only_a == only_b == []
    text = comparison([a_h200, a_a100], [b], "a.csv", "b.csv")
    assert f"### {A100} (A) against NVIDIA L4 (B)" in text
    assert f"### {H200} (A) against NVIDIA L4 (B)" in text
    assert "| eager | fp32 | 30.00 | 60.00 | 2.00x |" in text
    assert "| eager | fp32 | 20.00 | 60.00 | 3.00x |" in text


# ---- ratio --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_ms", "b_ms", "ratio", "text"),
    [
        (20.0, 30.0, 1.5, "1.50x"),
        (8.66, 13.0, 13.0 / 8.66, "1.50x"),  # 1.5011...
        (30.0, 10.0, 1 / 3, "0.33x"),
        (12.0, 15.0, 1.25, "1.25x"),
        (3.0, 3.0, 1.0, "1.00x"),
        (7.0, 14.07, 2.01, "2.01x"),
    ],
)
def test_ratio_is_b_median_over_a_median_with_two_decimals(a_ms, b_ms, ratio, text):
    a = measured(H200_ENVIRONMENT, "RetinaNet", "fp32", "eager", a_ms)
    b = measured(A100_ENVIRONMENT, "RetinaNet", "fp32", "eager", b_ms)
    assert latency_ratio(a, b) == pytest.approx(ratio)
    assert ratio_text(latency_ratio(a, b)) == text


def test_ratio_is_a_dash_where_a_side_has_no_measurement():
    ok = measured(H200_ENVIRONMENT, "RetinaNet", "fp32", "eager", 20.0)
    failed = unsupported(A100_ENVIRONMENT, "RetinaNet", "fp32", "eager")
    zero = record.replace(ok, latency_ms_median=0.0)
    assert latency_ratio(ok, failed) is None
    assert latency_ratio(failed, ok) is None
    assert latency_ratio(zero, ok) is None
    assert ratio_text(None) == DASH
    parity_fail = record.replace(
        ok, status="parity_fail", parity_pass=False, latency_ms_median=30.0
    )
    assert latency_ratio(ok, parity_fail) == pytest.approx(1.5)  # measured: compared


def test_ratios_and_cells_in_the_fixture_tables():
    text = comparison(a_rows(), b_rows(), A_NAME, B_NAME)
    assert table_line(text, "RetinaNet", "torchscript", "fp32") == [
        "torchscript",
        "fp32",
        "8.66",
        "13.00",
        "1.50x",
        "6.93",  # 8.66 * 0.8
        "10.40",
        "pass (F1 1.00)",
        "pass (F1 1.00)",
    ]
    assert table_line(text, "RetinaNet", "eager", "fp16")[2:5] == ["12.00", "15.00", "1.25x"]
    assert table_line(text, "RetinaNet_scripted", "eager", "fp32")[4] == "1.60x"
    scripted = table_line(text, "RetinaNet_scripted", "torchscript", "fp32")
    assert scripted == [
        "torchscript",
        "fp32",
        "unsupported",
        "25.00",
        DASH,
        DASH,
        "20.00",
        DASH,
        "pass (F1 1.00)",
    ]
    static = table_line(text, "MaskRCNNFPN (static shapes, 800x1333)", "eager", "fp32")
    dynamic = table_line(text, "MaskRCNNFPN (dynamic shapes, 800x1333)", "eager", "fp32")
    assert (static[4], dynamic[4]) == ("1.50x", "1.50x")


# ---- Markdown -----------------------------------------------------------------------------


def test_comparison_matches_golden():
    check_golden("compare.md", comparison(a_rows(), b_rows(), A_NAME, B_NAME))


def test_comparison_header_names_files_machines_software_and_protocol():
    text = comparison(a_rows(), b_rows(), A_NAME, B_NAME)
    header = text.split("\n### ")[0]
    a_part, b_part = header.split("- **B:**")
    assert f"`{A_NAME}`: {H200} (8 rows)" in a_part
    assert "driver 570.86.15" in a_part and "torch 2.5.1+cu124" in a_part
    assert "100 warm-up + 200 timed calls" in a_part
    assert f"`{B_NAME}`: {A100} (8 rows)" in b_part
    assert "driver 535.104.05" in b_part and "torch 2.4.1+cu121" in b_part
    assert "AMD EPYC 7763" in b_part and "50 warm-up + 100 timed calls" in b_part


def test_rows_only_in_one_file_are_listed_with_the_reasons_of_failures():
    text = comparison(a_rows(), b_rows(), A_NAME, B_NAME)
    only_a = text.split("### Only in A\n")[1].split("\n### ")[0]
    only_b = text.split("### Only in B\n")[1].split("\n### ")[0]
    assert "| MaskRCNNFPN | static | 800x1333 | torchscript | fp16 | 16.00 | 12.80 |" in only_a
    assert "FAIL (F1 0.85)" in only_a
    assert "| CascadeRCNN | static | 800x1333 | eager | fp32 | 50.00 | 40.00 |" in only_b
    assert "CascadeRCNN" not in only_a and "MaskRCNNFPN" not in only_b
    note = "- A torchscript fp32: unsupported: torchscript: RetinaNet | scripting needs"
    assert note in text
    assert "second line hidden" not in text


def test_empty_only_sections_say_so():
    rows = a_rows()
    text = comparison(rows, rows, "a.csv", "a.csv")
    assert "None: every row of A has a partner in B." in text
    assert "None: every row of B has a partner in A." in text
    assert "| eager | fp32 | 20.00 | 20.00 | 1.00x |" in text


def test_no_pairs_at_all_still_lists_both_sides():
    a = [measured(H200_ENVIRONMENT, "RetinaNet", "fp32", "eager", 20.0)]
    b = [measured(A100_ENVIRONMENT, "CascadeRCNN", "fp32", "eager", 50.0)]
    text = comparison(a, b, "a.csv", "b.csv")
    assert "No row of A has a row of the same identity in B." in text
    assert "| RetinaNet | static |" in text.split("### Only in A")[1].split("### Only in B")[0]
    assert "| CascadeRCNN | static |" in text.split("### Only in B")[1]


# ---- command line -------------------------------------------------------------------------


def run_cli(cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return run_module("runner.report", *arguments, cwd=cwd, timeout=60)


def test_cli_prints_the_comparison(tmp_path):
    write_pair(tmp_path)
    done = run_cli(tmp_path, "--compare", A_NAME, B_NAME)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "compare.md").read_text()
    assert "7 pairs, 1 only in A, 1 only in B" in done.stderr


def test_cli_writes_out_md(tmp_path):
    write_pair(tmp_path)
    out = tmp_path / "results" / "h200_vs_a100.md"
    done = run_cli(tmp_path, "--compare", A_NAME, B_NAME, "--out-md", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert out.read_text() == (GOLDEN / "compare.md").read_text()


def test_cli_reports_skips_and_copies_of_each_side(tmp_path, caplog):
    a_path, b_path = write_pair(tmp_path)
    copy = b_rows()[1]  # the same row read twice (a results CSV next to its run folder)
    folder = tmp_path / "b_runs"
    record.write_rows(folder / "new" / "result.csv", b_rows())
    record.write_rows(folder / "copy" / "result.csv", [copy])
    (folder / "broken").mkdir()
    (folder / "broken" / "result.csv").write_text("not,a,result\n")
    out = tmp_path / "compare.md"
    with caplog.at_level(logging.INFO, logger="runner.report"):
        assert main(["--compare", str(a_path), str(folder), "--out-md", str(out)]) == 0
    assert "broken/result.csv" in caplog.text
    assert "dropped 1 identical copy; skipped 1 file" in caplog.text
    assert out.read_text() == comparison(a_rows(), b_rows(), str(a_path), str(folder))


def test_cli_mixed_gpus_across_files_are_fine_but_not_within_one(tmp_path):
    a_path, b_path = write_pair(tmp_path)
    mixed = tmp_path / "mixed.csv"
    write(a_rows() + [measured(A100_ENVIRONMENT, "CascadeRCNN", "fp32", "eager", 5.0)], mixed)
    refused = run_cli(tmp_path, "--compare", str(mixed), str(b_path))
    assert refused.returncode == 2
    assert str(mixed) in refused.stderr and H200 in refused.stderr and A100 in refused.stderr
    assert refused.stdout == ""
    allowed = run_cli(tmp_path, "--compare", str(mixed), str(b_path), "--allow-mixed-gpus")
    assert allowed.returncode == 0, allowed.stderr
    assert f"### {A100} (A) against {A100} (B)" in allowed.stdout
    assert f"### {H200} (A) against {A100} (B)" in allowed.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--compare", "a.csv", "b.csv", "runs/"], "--compare cannot be mixed with merge mode"),
        (["--compare", "a.csv", "b.csv", "--out", "x.csv"], "--out"),
        (["--compare", "a.csv", "b.csv", "--readme", "README.md"], "--readme"),
        (
            ["runs/", "--out", "x.csv", "--out-md", "x.md"],
            "--out-md belongs to compare and agreement modes",
        ),
        (["--compare", "a.csv"], "expected 2 arguments"),
        (["--out-md", "x.md"], "--out-md belongs to compare and agreement modes"),
        ([], "required: inputs"),
        (["runs/", "--readme", "README.md"], "--readme needs --out"),
    ],
)
def test_usage_errors_exit_two_with_a_clear_message(arguments, message, capsys):
    with pytest.raises(SystemExit) as usage:
        main(arguments)
    assert usage.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_usage_error_mixing_modes_exits_two(tmp_path):
    a_path, b_path = write_pair(tmp_path)
    done = run_cli(tmp_path, "--compare", A_NAME, B_NAME, A_NAME, "--out", "x.csv")
    assert done.returncode == 2
    assert "--compare cannot be mixed with merge mode's inputs (results/h200_seed.csv), --out" in (
        done.stderr
    )
    assert not (tmp_path / "x.csv").exists()


def test_cli_exit_two_when_either_file_has_no_rows(tmp_path):
    a_path, b_path = write_pair(tmp_path)
    empty = tmp_path / "empty.csv"
    record.write_rows(empty, [])
    broken = tmp_path / "broken.csv"
    broken.write_text("not a results file\n")
    out = tmp_path / "out.md"
    for a, b in [(a_path, empty), (empty, b_path), (broken, b_path), (a_path, tmp_path / "no.csv")]:
        assert main(["--compare", str(a), str(b), "--out-md", str(out)]) == 2, (a, b)
    assert not out.exists()
    done = run_cli(tmp_path, "--compare", str(empty), str(broken))
    assert done.returncode == 2
    assert f"{empty}: no rows to compare" in done.stderr
    assert f"{broken}: no rows to compare (1 file skipped)" in done.stderr
