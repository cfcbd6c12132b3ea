"""runner.report: collect, merge, tables, the generated blocks (docs/results.md's full results, the
README's headline), plots and the command line, on fixture rows
written as result.csv files. Goldens in tests/golden/report/; D2BENCH_UPDATE_GOLDEN=1 rewrites
them (then read the diff before committing)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from runner.report.cli import main
from runner.report.identity import identity_of, machine_of, title_of
from runner.report.plots import FIGURES
from runner.report.readme import BEGIN_MARKER, END_MARKER, HEADLINE, update_readme
from runner.report.repeats import speed_ups
from runner.report.rows import (
    MixedMachines,
    SeedOrderError,
    collect,
    drop_duplicates,
    require_one_machine,
    seed_variant_order,
    sort_rows,
    write,
)
from runner.report.tables import ERROR_CHARS, headline, tables
from runner.run import record
from runner.run.record import Row
from tests.helpers import run_module
from tests.report_fixtures import A100, H200, VARIANTS
from tests.report_fixtures import H200_ENVIRONMENT as ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WEIGHTS = {
    "retinanet": "detectron2://COCO-Detection/retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl",
    "mask_rcnn_fpn": "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/"
    "137849600/model_final_f10217.pkl",
    "cascade_rcnn": "detectron2://Misc/cascade_mask_rcnn_R_50_FPN_3x/144998488/model_final_480dd8.pkl",
}


def run_row(variant: str, precision: str, backend: str, **fields) -> Row:
    """A row as bench.run writes it, with identity from VARIANTS and a fixed environment."""
    identity = VARIANTS[variant]
    values = {**ENVIRONMENT, **identity, "weights": WEIGHTS[identity["model"]]}
    values["output_dir"] = f"outputs/sweeps/seed/{variant or 'plain'}_{precision}_{backend}"
    values.update(fields)
    return Row(variant=variant, precision=precision, backend=backend, **values)


def measured(variant: str, precision: str, backend: str, median_ms: float, **fields) -> Row:
    """An ok row whose other figures follow from the median (mean +3%, p99 +10%, std 2%)."""
    batch = VARIANTS[variant]["batch"]
    figures = dict(
        status="ok",
        latency_ms_median=median_ms,
        latency_ms_mean=median_ms * 1.03,
        latency_ms_p99=median_ms * 1.1,
        latency_ms_std=median_ms * 0.02,
        latency_ms_min=median_ms * 0.97,
        fps_median=1000.0 * batch / median_ms,
        fps_mean=1000.0 * batch / (median_ms * 1.03),
        gpu_busy_ms=median_ms * 0.8,
        optimize_s=4.5,
        peak_mem_mb=1234.5,
        parity_pass=True,
        parity_match_f1=1.0,
        parity_box_iou=1.0,
        parity_score_max_diff=0.0,
        num_detections=batch * 37,
        num_detections_ref=batch * 37,
    )
    return run_row(variant, precision, backend, **{**figures, **fields})


def dynamic(variant: str, precision: str, backend: str, median_ms: float) -> Row:
    return measured(
        variant,
        precision,
        backend,
        median_ms,
        shapes="dynamic",
        image_hw_min="480x640",
        latency_ms_median_min_shape=median_ms * 0.5,
        image_hw_max="1024x1706",
        latency_ms_median_max_shape=median_ms * 1.6,
        output_dir=f"outputs/sweeps/dynamic/{variant}_{precision}_{backend}",
    )


def fixture_rows() -> list[Row]:
    """Seed-like rows, deliberately out of order: the report must sort them."""
    return [
        measured(
            "MaskRCNNFPN",
            "fp16",
            "torchscript",
            16.0,
            status="parity_fail",
            parity_pass=False,
            parity_match_f1=0.85,
            num_detections=35,
            error="parity: match_f1 0.850 < 0.95",
        ),
        measured("RetinaNet", "fp16", "torchscript", 9.0),
        measured("RetinaNet", "fp32", "torchscript", 8.66),
        measured("RetinaNet", "fp32", "eager", 20.0),
        measured("RetinaNet", "fp16", "eager", 12.0, parity_match_f1=0.99),
        measured("RetinaNet_scripted", "fp32", "eager", 21.0),
        run_row(
            "RetinaNet_scripted",
            "fp32",
            "torchscript",
            status="unsupported",
            error="torchscript: RetinaNet | scripting needs the scriptable head\n"
            "install the scripting extra and try again",
        ),
        measured("MaskRCNNFPN", "fp32", "eager", 40.0),
        measured("MaskRCNNFPN", "fp32", "torchscript", 25.0),
        measured("MaskRCNNFPN", "fp16", "eager", 30.0, parity_match_f1=0.98),
        dynamic("MaskRCNNFPN", "fp32", "eager", 42.0),
        dynamic("MaskRCNNFPN", "fp32", "torchscript", 28.0),
        measured("CascadeRCNN", "fp16", "torchscript", 50.0),
        run_row(
            "CascadeRCNN",
            "fp32",
            "torchscript",
            status="error",
            error="timeout: the child ran past 1800 s " + "x" * 150,
        ),
        measured("", "fp32", "eager", 70.0),
        measured("", "fp32", "torchscript", 56.0),
    ]


def write_result_files(folder: Path, rows: list[Row]) -> Path:
    """One result.csv per row, in its own subfolder, as a sweep leaves them."""
    for number, row in enumerate(rows):
        record.write_rows(folder / "sweep" / f"{number:02d}" / "result.csv", [row])
    return folder


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("D2BENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with D2BENCH_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden (D2BENCH_UPDATE_GOLDEN=1)"


def readme_text() -> str:
    return (
        "# d2bench\n\nIntro stays.\n\n## Results\n\n"
        f"{BEGIN_MARKER}\nstale table\n{END_MARKER}\n\n## Install\n\nTail stays.\n"
    )


# ---- collect and tables -------------------------------------------------------------------


def test_tables_match_golden(tmp_path):
    rows, skipped = collect([write_result_files(tmp_path, fixture_rows())])
    assert skipped == []
    assert len(rows) == len(fixture_rows())
    check_golden("tables.md", tables(rows, results_csv="results/h200_seed.csv"))


def test_readme_block_matches_golden(tmp_path):
    rows, _ = collect([write_result_files(tmp_path, fixture_rows())])
    plots = {name: f"results/plots/{name}.png" for name in ("speedup", "where_time_goes")}
    block = tables(rows, "results/h200_seed.csv", plots)
    check_golden("readme.md", update_readme(readme_text(), block, "python -m runner.report"))


def headline_text() -> str:
    begin, end = HEADLINE
    return f"# d2bench\n\n## Results\n\n{begin}\nstale headline\n{end}\n\n## Tests\n\nTail stays.\n"


def test_headline_block_matches_golden(tmp_path):
    rows, _ = collect([write_result_files(tmp_path, fixture_rows())])
    plots = {name: f"results/plots/{name}.png" for name in ("speedup", "where_time_goes")}
    block = headline(rows, "docs/results.md", plots)
    page = update_readme(headline_text(), block, "python -m runner.report", HEADLINE)
    check_golden("headline.md", page)


def test_the_headline_is_eager_against_the_time_tables_best_row(tmp_path):
    """Each headline line names the eager median, backend, median and speed-up that the full
    tables' "Where the time goes" shows for that variant and precision."""
    rows, _ = collect([write_result_files(tmp_path, fixture_rows())])
    full = tables(rows, "results/h200_seed.csv").split("### Where the time goes", 1)[1]
    lines = [x for x in headline(rows).splitlines() if x.startswith("| ") and "---" not in x]
    time_rows = [x.split(" | ") for x in full.splitlines() if x.startswith("| ")][1:]
    for line in lines[1:]:
        variant, precision, eager_ms, backend, median, speed_up = line.strip("| ").split(" | ")
        mine = [r for r in time_rows if r[0].strip("| ") == variant and r[1] == precision]
        assert mine[0][3] == eager_ms, line
        if backend.startswith("no "):
            continue
        assert mine[1][2] == backend and mine[1][3] == median and mine[1][7] == speed_up, line


def test_rows_sort_in_seed_variant_then_precision_then_backend_order():
    extra = [
        measured("RetinaNet", "bf16", "inductor", 7.0),
        measured("RetinaNet", "fp32", "a", 9.0),
    ]
    rows = sort_rows(extra + fixture_rows())
    order = [(r.variant, r.shapes, r.precision, r.backend) for r in rows]
    assert order[:7] == [
        ("RetinaNet", "static", "fp32", "eager"),  # eager first, then alphabetical
        ("RetinaNet", "static", "fp32", "a"),
        ("RetinaNet", "static", "fp32", "torchscript"),
        ("RetinaNet", "static", "fp16", "eager"),
        ("RetinaNet", "static", "fp16", "torchscript"),
        ("RetinaNet", "static", "bf16", "inductor"),
        ("RetinaNet_scripted", "static", "fp32", "eager"),
    ]
    variants = list(dict.fromkeys(r.variant for r in rows))
    assert variants == ["RetinaNet", "RetinaNet_scripted", "MaskRCNNFPN", "CascadeRCNN", ""]
    shapes = [r.shapes for r in rows if r.variant == "MaskRCNNFPN"]
    assert shapes == ["static"] * 4 + ["dynamic"] * 2


def test_seed_variant_order_is_read_from_the_sweep_file(tmp_path):
    assert seed_variant_order() == (  # conf/sweep/seed.yaml
        "RetinaNet",
        "RetinaNet_scripted",
        "MaskRCNNC4",
        "MaskRCNNFPN",
        "MaskRCNNFPN_b2",
        "MaskRCNNFPN_pproc",
        "CascadeRCNN",
    )
    sweep = tmp_path / "seed.yaml"
    sweep.write_text(
        "hydra:\n  sweeper:\n    variants:\n      B: {batch: 2}\n      A: {batch: 1}\n"
    )
    assert seed_variant_order(sweep) == ("B", "A")
    with pytest.raises(SeedOrderError, match="absent.yaml: cannot read the seed's variants"):
        seed_variant_order(tmp_path / "absent.yaml")
    reshaped = tmp_path / "reshaped.yaml"
    reshaped.write_text("hydra:\n  sweeper:\n    params: {}\n")
    with pytest.raises(SeedOrderError, match="hydra.sweeper.variants"):
        seed_variant_order(reshaped)


def test_variant_title_is_built_where_no_variant_is_set():
    assert title_of(measured("", "fp32", "eager", 1.0)) == (
        "mask_rcnn_fpn (trace, batch 2, postprocess)"
    )
    assert title_of(measured("RetinaNet", "fp32", "eager", 1.0)) == "RetinaNet"


# ---- speed-up -----------------------------------------------------------------------------


def speed_up(row: Row, rows: list[Row]) -> float | None:
    """The row's paired speed-up over eager (1.0 for an eager row), None where it has none."""
    if row.backend == "eager" and row.status == "ok":
        return 1.0
    found = speed_ups(rows).get(identity_of(row))
    return None if found is None else found.ratio


def test_speed_up_is_eager_median_over_this_median_at_the_same_precision():
    rows = fixture_rows()
    by_key = {(r.variant, r.shapes, r.precision, r.backend): r for r in rows}
    ts32 = by_key["RetinaNet", "static", "fp32", "torchscript"]
    ts16 = by_key["RetinaNet", "static", "fp16", "torchscript"]
    assert speed_up(ts32, rows) == pytest.approx(20.0 / 8.66)
    assert speed_up(ts16, rows) == pytest.approx(12.0 / 9.0)  # fp16 eager, not fp32
    assert speed_up(by_key["RetinaNet", "static", "fp32", "eager"], rows) == 1.0
    dynamic_ts = by_key["MaskRCNNFPN", "dynamic", "fp32", "torchscript"]
    assert speed_up(dynamic_ts, rows) == pytest.approx(42.0 / 28.0)  # not static eager
    assert speed_up(by_key["CascadeRCNN", "static", "fp16", "torchscript"], rows) is None
    unsupported = by_key["RetinaNet_scripted", "static", "fp32", "torchscript"]
    assert speed_up(unsupported, rows) is None


def test_speed_up_and_figures_are_formatted_in_the_table():
    rows = [measured("RetinaNet", "fp32", "eager", 20.0), measured("RetinaNet", "fp32", "ts", 8.0)]
    line = tables(rows).split("| ts | fp32 |")[1].splitlines()[0]
    cells = [c.strip() for c in line.strip(" |").split("|")]
    # 1 repeat (no spread); median 8 ms, FPS 1000/8, p99 8.8, busy 6.4; 20/8 from single runs
    assert cells == [
        "1",
        "8.00",
        "—",
        "125.0",
        "8.80",
        "6.40",
        "2.50x (1 run)",
        "pass (F1 1.00)",
        "37",
    ]


def test_backend_options_make_their_own_row_labelled_with_them():
    plain = measured("RetinaNet", "fp16", "cg", 8.0)
    tuned = measured("RetinaNet", "fp16", "cg", 4.0, backend_options="channels_last=true")
    eager = measured("RetinaNet", "fp16", "eager", 12.0)
    odd_eager = measured("RetinaNet", "fp16", "eager", 1.0, backend_options="x=1")
    rows = [plain, tuned, eager, odd_eager]
    assert identity_of(plain) != identity_of(tuned)
    kept, dropped = drop_duplicates(rows)
    assert len(kept) == 4 and not dropped
    assert speed_up(tuned, rows) == pytest.approx(3.0)  # against plain eager only
    text = tables(rows)
    assert "| cg [channels_last=true] | fp16 |" in text and "| cg | fp16 |" in text


def test_failed_rows_show_status_and_first_line_of_error():
    text = tables(fixture_rows())
    assert "| unsupported: torchscript: RetinaNet \\| scripting needs the scriptable head |" in text
    assert "install the scripting extra" not in text
    error_line = next(line for line in text.splitlines() if "| error: timeout" in line)
    shown = error_line.split("| error: ")[1].split(" |")[0]
    assert len(shown) == ERROR_CHARS and shown.endswith("…")


def test_rows_that_all_failed_still_make_tables():
    """A sweep where every run failed (each package load crashed, on the GPU) is still reported:
    its errors, no speed-up, instead of a pandas KeyError from pairing no timed rows."""
    rows = [
        run_row(variant, "fp16", backend, status="error", error="signal: child killed by SIGSEGV")
        for variant in ("RetinaNet", "MaskRCNNFPN")
        for backend in ("eager", "aot_package")
    ]
    assert speed_ups(rows) == {}
    text = tables(rows)
    assert text.count("| error: signal: child killed by SIGSEGV") == 4


# ---- skipped files ------------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, str]:
    """Broken result.csv files, each under its own folder: name -> what the reason must say."""
    good = record.to_csv_text([measured("RetinaNet", "fp32", "eager", 20.0)])
    header, body = good.splitlines()
    broken = {
        "truncated": (good[: len(header) + 1 + len(body) // 2], "truncated"),
        "unknown_column": (
            header + ",extra\n" + body + ",1\n",
            "unknown ['extra']",
        ),
        "missing_column": (
            header.replace(",gpu_busy_ms", "") + "\n" + body + "\n",
            "missing ['gpu_busy_ms']",
        ),
        "empty": ("", "empty file"),
        "bad_status": (good.replace(",ok,", ",finished,"), "status 'finished'"),
    }
    for name, (text, _) in broken.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "result.csv").write_text(text)
    return {name: reason for name, (_, reason) in broken.items()}


def test_broken_files_are_skipped_with_a_reason_and_good_rows_still_merge(tmp_path, caplog):
    good = write_result_files(tmp_path / "good", fixture_rows()[:3])
    expected = bad_files(tmp_path / "bad")
    with caplog.at_level(logging.WARNING, logger="runner.report"):
        rows, skipped = collect([good, tmp_path / "bad"])
    assert len(rows) == 3
    reasons = {Path(path).parent.name: reason for path, reason in skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]
        assert f"{name}/result.csv" in caplog.text


def test_a_merged_results_csv_is_a_valid_input(tmp_path):
    rows = fixture_rows()
    write(rows, tmp_path / "results" / "h200.csv")
    again, skipped = collect([tmp_path / "results" / "h200.csv"])
    assert skipped == []
    assert again == sort_rows(rows)


def test_missing_input_is_skipped_with_its_reason(tmp_path):
    rows, skipped = collect([tmp_path / "absent.csv"])
    assert rows == []
    assert skipped == [(str(tmp_path / "absent.csv"), "No such file or directory")]


# ---- duplicates ---------------------------------------------------------------------------


def test_rows_of_one_identity_are_all_kept_and_only_identical_copies_dropped(tmp_path, caplog):
    old = measured(
        "RetinaNet",
        "fp32",
        "eager",
        25.0,
        timestamp="2026-11-27T09:00:00+00:00",
        output_dir="outputs/old_run",
    )
    new = measured(
        "RetinaNet",
        "fp32",
        "eager",
        20.0,
        timestamp="2026-11-28T09:00:00+00:00",
        output_dir="outputs/new_run",
    )
    other = measured("RetinaNet", "fp16", "eager", 12.0)
    record.write_rows(tmp_path / "b" / "result.csv", [old])
    record.write_rows(tmp_path / "a" / "result.csv", [new, other])
    record.write_rows(tmp_path / "c" / "result.csv", [new])  # the same row read twice
    rows, _ = collect([tmp_path])
    with caplog.at_level(logging.INFO, logger="runner.report"):
        kept, dropped = drop_duplicates(rows)
    assert kept == [new, other, old] and dropped == [new]
    assert "outputs/new_run" in caplog.text
    # the two measurements of one identity are repeats: 2 of them, their spread shown
    line = tables(kept).split("| eager | fp32 |")[1].splitlines()[0]
    cells = [c.strip() for c in line.strip(" |").split("|")]
    assert cells[:3] == ["2 (2 sessions)", "22.50", "20.00–25.00"]


def test_rows_that_differ_only_in_gpu_are_not_duplicates():
    h200 = measured("RetinaNet", "fp32", "eager", 20.0)
    a100 = measured("RetinaNet", "fp32", "eager", 30.0, gpu_name=A100)
    assert drop_duplicates([h200, a100]) == ([h200, a100], [])


# ---- machines -----------------------------------------------------------------------------


def mixed_rows() -> list[Row]:
    return [
        measured("RetinaNet", "fp32", "eager", 20.0),
        measured("RetinaNet", "fp32", "torchscript", 10.0),
        measured("RetinaNet", "fp32", "eager", 30.0, gpu_name=A100, gpu_driver="535.104.05"),
        measured("RetinaNet", "fp32", "torchscript", 20.0, gpu_name=A100, gpu_driver="535.104.05"),
    ]


def test_mixed_gpus_are_refused_naming_both_machines():
    with pytest.raises(MixedMachines) as refused:
        require_one_machine(mixed_rows())
    assert H200 in str(refused.value) and A100 in str(refused.value)
    require_one_machine(mixed_rows()[:2])  # one machine: fine


def test_mixed_gpus_when_allowed_get_one_section_each():
    rows = mixed_rows()
    require_one_machine(rows, allow_mixed=True)
    text = tables(rows)
    assert text.count("\n### ") + text.startswith("### ") == 2
    a100_section, h200_section = text.split(f"### {A100}")[1].split(f"### {H200}")
    assert "driver 535.104.05" in a100_section and "| 1.50x (1 run) |" in a100_section
    assert "driver 570.86.15" in h200_section and "| 2.00x (1 run) |" in h200_section
    check_golden("tables_mixed.md", text)


def test_cpu_rows_are_named_by_their_cpu():
    row = measured("RetinaNet", "fp32", "eager", 20.0, gpu_name="", device="cpu")
    assert machine_of(row) == "CPU Intel(R) Xeon(R) Platinum 8468"
    with pytest.raises(MixedMachines, match="CPU Intel"):
        require_one_machine([row, measured("RetinaNet", "fp32", "eager", 20.0)])


# ---- README -------------------------------------------------------------------------------


def test_update_readme_replaces_only_between_the_markers():
    text = readme_text()
    updated = update_readme(text, "| new | table |\n", "python -m runner.report x")
    before, rest = text.split(BEGIN_MARKER + "\n")
    after = text.split(END_MARKER)[1]
    assert updated.startswith(before + BEGIN_MARKER + "\n")
    assert updated.endswith(END_MARKER + after)
    inside = updated.split(BEGIN_MARKER)[1].split(END_MARKER)[0]
    assert "stale table" not in inside
    assert "| new | table |" in inside
    assert "Generated by `python -m runner.report x`; do not edit by hand." in inside
    assert update_readme(updated, "| new | table |\n", "python -m runner.report x") == updated


@pytest.mark.parametrize(
    "text",
    [
        "# no markers\n",
        f"{BEGIN_MARKER}\nonly the beginning\n",
        f"{END_MARKER}\nreversed\n{BEGIN_MARKER}\n",
        f"{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
)
def test_update_readme_raises_without_one_pair_of_markers_in_order(text):
    with pytest.raises(ValueError, match="d2bench:results"):
        update_readme(text, "block")


# ---- command line -------------------------------------------------------------------------


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return run_module("runner.report", *arguments, timeout=60)


def test_cli_writes_csv_readme_and_plots(tmp_path):
    runs = write_result_files(tmp_path / "runs", fixture_rows())
    bad_files(tmp_path / "runs" / "broken")
    readme = tmp_path / "README.md"
    readme.write_text(readme_text())
    out, plots = tmp_path / "results" / "seed.csv", tmp_path / "plots"
    done = run_cli(str(runs), "--out", str(out), "--readme", str(readme), "--plots", str(plots))
    assert done.returncode == 0, done.stderr
    assert record.read_rows(out) == sort_rows(fixture_rows())
    text = readme.read_text()
    assert "stale table" not in text and "Tail stays." in text
    assert "Results CSV: `results/seed.csv`" in text
    for name in ("speedup", "where_time_goes", "latency_vs_size"):
        assert f"![{FIGURES[name]}](plots/{name}.png)" in text
        assert (plots / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    summary = done.stderr.strip().splitlines()[-1]
    assert f"merged {len(fixture_rows())} rows" in summary and "skipped 5 files" in summary


def test_cli_writes_the_headline_into_the_readme_linking_the_full_tables(tmp_path):
    runs = write_result_files(tmp_path / "runs", fixture_rows())
    page, readme = tmp_path / "docs" / "results.md", tmp_path / "README.md"
    page.parent.mkdir()
    page.write_text(readme_text())
    readme.write_text(headline_text())
    out, plots = tmp_path / "results" / "seed.csv", tmp_path / "results" / "plots"
    arguments = ["--out", str(out), "--readme", str(page), "--headline", str(readme)]
    done = run_cli(str(runs), *arguments, "--plots", str(plots))
    assert done.returncode == 0, done.stderr
    full, short = page.read_text(), readme.read_text()
    assert "Results CSV: `../results/seed.csv`" in full
    assert f"![{FIGURES['speedup']}](../results/plots/speedup.png)" in full
    assert "stale headline" not in short and "Tail stays." in short
    assert "[docs/results.md](docs/results.md)" in short
    assert f"![{FIGURES['speedup']}](results/plots/speedup.png)" in short
    assert "| Variant | Precision | Eager (ms) | Best backend |" in short
    assert "--headline" in short.split("Generated by", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--headline", "README.md"], "--headline needs --readme"),
        (["--readme", "README.md", "--headline", "README.md"], "name one file"),
    ],
)
def test_cli_refuses_a_headline_without_its_own_page_of_tables(tmp_path, extra, message, capsys):
    runs = write_result_files(tmp_path / "runs", fixture_rows()[:2])
    with pytest.raises(SystemExit) as usage:
        main([str(runs), "--out", str(tmp_path / "x.csv"), *extra])
    assert usage.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_cli_refuses_a_readme_without_headline_markers_before_writing(tmp_path):
    runs = write_result_files(tmp_path / "runs", fixture_rows()[:2])
    (tmp_path / "results.md").write_text(readme_text())
    (tmp_path / "README.md").write_text(readme_text())  # the results markers only
    out = tmp_path / "x.csv"
    arguments = ["--out", str(out), "--readme", str(tmp_path / "results.md")]
    assert main([str(runs), *arguments, "--headline", str(tmp_path / "README.md")]) == 2
    assert not out.exists() and "stale table" in (tmp_path / "results.md").read_text()


def test_cli_refuses_mixed_gpus_unless_allowed(tmp_path):
    runs = write_result_files(tmp_path / "runs", mixed_rows())
    out = tmp_path / "mixed.csv"
    refused = run_cli(str(runs), "--out", str(out))
    assert refused.returncode == 2
    assert H200 in refused.stderr and A100 in refused.stderr
    assert not out.exists()
    allowed = run_cli(str(runs), "--out", str(out), "--allow-mixed-gpus")
    assert allowed.returncode == 0, allowed.stderr
    assert f"### {A100}" in allowed.stdout and f"### {H200}" in allowed.stdout
    assert len(record.read_rows(out)) == 4


def test_cli_exit_code_two_for_no_rows_missing_markers_and_usage(tmp_path):
    bad_files(tmp_path / "bad")
    assert main([str(tmp_path / "bad"), "--out", str(tmp_path / "x.csv")]) == 2
    assert main([str(tmp_path / "absent"), "--out", str(tmp_path / "x.csv")]) == 2
    runs = write_result_files(tmp_path / "runs", fixture_rows()[:2])
    (tmp_path / "README.md").write_text("# no markers\n")
    arguments = [
        str(runs),
        "--out",
        str(tmp_path / "x.csv"),
        "--readme",
        str(tmp_path / "README.md"),
    ]
    assert main(arguments) == 2
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit) as usage:
        main([str(runs), "--readme", str(tmp_path / "README.md")])  # --readme needs --out
    assert usage.value.code == 2


def test_cli_without_out_prints_the_tables_and_writes_nothing(tmp_path):
    runs = write_result_files(tmp_path / "runs", fixture_rows())
    before = sorted(tmp_path.rglob("*"))
    done = run_cli(str(runs))
    assert done.returncode == 0, done.stderr
    assert "| Backend | Precision |" in done.stdout
    assert "Results CSV" not in done.stdout
    assert sorted(tmp_path.rglob("*")) == before
