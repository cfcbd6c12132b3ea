"""Whole runs on the CPU with a small real detector (torchvision Faster R-CNN MobileNetV3 320):
through runner.run.bench.run, and through `python -m runner` in real subprocesses (single runs,
exit codes, --multirun sweeps)."""

from __future__ import annotations

import csv
import importlib.util
import re
import time

import pytest
import torch

from runner.run.bench import run
from runner.run.record import read_rows
from tests.helpers import SMALL_CPU_RUN, run_runner

pytestmark = pytest.mark.slow


def samples_of(folder) -> list[dict]:
    with open(folder / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_whole_run(make_run, tmp_path):
    out = tmp_path / "run"
    row = run(*make_run(*SMALL_CPU_RUN, f"output_dir={out}"))
    assert row.status == "ok", row.error
    assert row.error == ""
    assert row.parity_pass is True
    assert row.parity_match_f1 == 1.0 and row.parity_score_max_diff == 0.0
    # identity
    assert (row.model, row.backend, row.precision, row.export) == (
        "tv_fasterrcnn_mobilenet",
        "eager",
        "fp32",
        "trace",
    )
    assert (row.image_hw, row.device, row.batch, row.shapes) == ("160x224", "cpu", 1, "static")
    assert (row.warmup, row.iters, row.command, row.output_dir) == (1, 3, "pytest", str(out))
    # metrics
    assert 0 < row.latency_ms_min <= row.latency_ms_median <= row.latency_ms_p99
    assert row.fps_median == pytest.approx(1000.0 / row.latency_ms_median)
    assert row.optimize_s is not None and row.optimize_s >= 0
    assert row.num_detections >= 0 and row.num_detections == row.num_detections_ref
    assert row.gpu_busy_ms is None and row.peak_mem_mb is None  # CUDA only
    assert row.accuracy_dataset == "" and row.accuracy_box_ap is None  # no dataset, no pass
    # the stage pass (host time per stage on the CPU) and the FLOP count (issue 21)
    assert row.stage_backbone_ms > 0 and row.stage_preprocess_ms is not None
    assert row.stage_mask_head_ms is None  # no mask head: its range never ran
    assert row.gflop_per_call > 0
    assert row.tflop_per_s == pytest.approx(row.gflop_per_call / row.latency_ms_median)
    assert row.peak_tflop_per_s is None and row.peak_share is None  # no GPU, no peak
    # environment
    assert row.weights.startswith("random(seed=0)") and "calibrated" in row.weights
    assert row.torch_version == torch.__version__
    assert row.backend_version == f"torch {torch.__version__}"
    assert row.timestamp and row.git_sha and row.hostname
    assert re.fullmatch(r"[0-9a-f]{12}", row.fingerprint)
    # files
    assert read_rows(out / "result.csv") == [row]
    samples = samples_of(out)
    assert len(samples) == 3
    assert {s["shape"] for s in samples} == {"opt"} and samples[0]["image_hw"] == "160x224"
    assert min(float(s["latency_ms"]) for s in samples) == pytest.approx(row.latency_ms_min)
    assert (out / "child.log").exists()


@pytest.mark.parametrize("export", ["trace", "script"])
def test_torchscript_backend(make_run, tmp_path, export):
    out = tmp_path / "run"
    row = run(
        *make_run(*SMALL_CPU_RUN, "backend=torchscript", f"export={export}", f"output_dir={out}")
    )
    assert row.status == "ok", row.error
    assert (row.backend, row.export) == ("torchscript", export)
    assert row.parity_pass is True and row.parity_match_f1 == 1.0
    assert row.latency_ms_median > 0
    assert (out / "result.csv").exists() and (out / "samples.csv").exists()


def test_dynamic_shapes_time_every_size(make_run, tmp_path):
    out = tmp_path / "run"
    row = run(*make_run(*SMALL_CPU_RUN, "shapes=dynamic", f"output_dir={out}"))
    assert row.status == "ok", row.error
    # shapes=dynamic: min_scale 0.6 and max_scale 2.5 of 160x224
    assert (row.image_hw, row.image_hw_min, row.image_hw_max) == ("160x224", "96x134", "400x560")
    assert row.latency_ms_median_min_shape > 0 and row.latency_ms_median_max_shape > 0
    assert row.parity_pass is True
    samples = samples_of(out)
    assert [s["shape"] for s in samples].count("min") == 3
    assert {(s["shape"], s["image_hw"]) for s in samples} == {
        ("opt", "160x224"),
        ("min", "96x134"),
        ("max", "400x560"),
    }


def test_a_finished_run_is_kept_and_redo_measures_again(make_run, tmp_path):
    out = tmp_path / "run"
    first = run(*make_run(*SMALL_CPU_RUN, f"output_dir={out}"))
    assert first.status == "ok", first.error
    samples_written = (out / "samples.csv").stat().st_mtime_ns

    kept = run(*make_run(*SMALL_CPU_RUN, f"output_dir={out}", "command=another command"))
    assert kept == first, "the finished run was measured again"  # timestamp included
    assert (out / "samples.csv").stat().st_mtime_ns == samples_written

    again = run(*make_run(*SMALL_CPU_RUN, f"output_dir={out}", "redo=true"))
    assert again.status == "ok", again.error
    assert (out / "samples.csv").stat().st_mtime_ns != samples_written
    assert again.fingerprint == first.fingerprint
    assert again.latency_ms_median != first.latency_ms_median
    assert read_rows(out / "result.csv") == [again]


def test_a_run_of_another_config_in_the_same_folder_is_measured(make_run, tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "result.csv").write_text("not a result file\n")
    row = run(*make_run(*SMALL_CPU_RUN, f"output_dir={out}", "bench.iters=2"))
    assert row.status == "ok" and row.iters == 2
    assert len(samples_of(out)) == 2


def test_a_timeout_is_an_error_row(make_run, tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    row = run(*make_run(*SMALL_CPU_RUN, "bench.timeout_s=2", f"output_dir={out}"))
    assert time.monotonic() - started < 2 + 10
    assert row.status == "error"
    assert row.error.startswith("timeout:"), row.error
    assert row.latency_ms_median is None and row.parity_pass is None
    assert row.torch_version == torch.__version__  # the parent states the environment
    assert read_rows(out / "result.csv") == [row]


def test_inline_mode_gives_the_same_kind_of_row(make_run, tmp_path, restore_logging):
    out = tmp_path / "run"
    row = run(*make_run(*SMALL_CPU_RUN, "bench.isolate=false", f"output_dir={out}"))
    assert row.status == "ok", row.error
    assert row.parity_pass is True and row.latency_ms_median > 0
    assert read_rows(out / "result.csv") == [row]


# ---- python -m runner ------------------------------------------------------------------------


def test_python_m_runner_single_run(tmp_path):
    out = tmp_path / "single"
    done = run_runner(*SMALL_CPU_RUN, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = read_rows(out / "result.csv")
    assert row.status == "ok" and row.output_dir == str(out)
    assert (
        row.command.startswith("python -m runner ")
        and "model=tv_fasterrcnn_mobilenet" in row.command
    )
    assert (out / ".hydra" / "config.yaml").exists()


def test_python_m_runner_exit_code_for_invalid_input_is_2(tmp_path):
    done = run_runner(*SMALL_CPU_RUN, "batch=0", f"hydra.run.dir={tmp_path / 'bad'}")
    assert done.returncode == 2
    assert "batch=0" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "bad").exists(), "bad input left its run folder behind"


def test_python_m_runner_unsupported_is_exit_0(tmp_path):
    out = tmp_path / "unsupported"
    done = run_runner(
        *SMALL_CPU_RUN,
        "export=script",
        "model.scriptable=false",
        "model.not_scriptable_reason=scripting is off for this test",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = read_rows(out / "result.csv")
    assert row.status == "unsupported"
    assert row.error == "export=script: scripting is off for this test"
    assert row.latency_ms_median is None


def test_absent_backend_package_is_unsupported_without_a_child(tmp_path):
    """torch_blade is on no registry: the parent records why at once, building no model."""
    if importlib.util.find_spec("torch_blade") is not None:
        pytest.skip("torch_blade is installed here")
    out = tmp_path / "blade"
    done = run_runner(*SMALL_CPU_RUN, "backend=torch_blade", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = read_rows(out / "result.csv")
    assert row.status == "unsupported"
    assert "module torch_blade not found" in row.error and "BladeDISC" in row.error
    assert row.torch_version  # the row still says what it ran on
    assert not (out / "child.log").exists(), "a child was started for a backend that is absent"


def test_python_m_runner_error_is_exit_1(tmp_path):
    out = tmp_path / "error"
    done = run_runner(*SMALL_CPU_RUN, "model.arch=no_such_builder", f"hydra.run.dir={out}")
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = read_rows(out / "result.csv")
    assert row.status == "error"
    assert row.error.startswith("exception: ValueError"), row.error
    assert "no_such_builder" in row.error
    assert "Traceback" in (out / "error.txt").read_text()


def test_a_run_that_errored_before_timing_logs_no_timed_rounds(tmp_path):
    """It logged "5 timed rounds 0.0 s" for a run whose child failed while building."""
    out = tmp_path / "error"
    done = run_runner(
        *SMALL_CPU_RUN, "bench.repeats=5", "model.arch=no_such_builder", f"hydra.run.dir={out}"
    )
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    assert "timed rounds" not in log, log
    assert "nothing timed: every backend ended before its blocks" in log, log


def test_an_error_in_the_child_is_an_error_row_with_its_traceback(make_run, tmp_path):
    out = tmp_path / "run"
    row = run(
        *make_run(
            *SMALL_CPU_RUN, "backend=torchscript", "backend.options.freeze=1", f"output_dir={out}"
        )
    )
    assert row.status == "error"
    assert row.error.startswith("exception: ValueError"), row.error
    assert "options.freeze=1" in row.error
    assert row.torch_version == torch.__version__ and row.weights == ""
    assert "Traceback" in (out / "error.txt").read_text()
    assert read_rows(out / "result.csv") == [row]


def test_multirun_sweeps_backends(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner(
        "--multirun", *SMALL_CPU_RUN, "backend=eager,torchscript", f"hydra.sweep.dir={sweep}"
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "sweep done: 2 runs" in log
    results = sorted(sweep.rglob("result.csv"))
    assert len(results) == 2
    rows = [read_rows(path)[0] for path in results]
    assert {r.backend for r in rows} == {"eager", "torchscript"}
    assert all(r.status == "ok" for r in rows)
    assert all("--multirun" in r.command for r in rows)
    assert (sweep / "multirun.yaml").exists()

    # the same sweep again resumes: both runs are finished, so both rows are kept as they are
    again = run_runner(
        "--multirun", *SMALL_CPU_RUN, "backend=eager,torchscript", f"hydra.sweep.dir={sweep}"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("run: kept") == 2
    assert [read_rows(path)[0] for path in results] == rows


def test_multirun_goes_on_after_an_invalid_job_and_fails_at_the_end(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner("--multirun", *SMALL_CPU_RUN, "bench.iters=-1,2", f"hydra.sweep.dir={sweep}")
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "bench.iters=-1" in log
    assert "sweep done: 2 runs" in log and "1 invalid" in log and "1 ok" in log
    (result,) = sweep.rglob("result.csv")
    assert read_rows(result)[0].iters == 2


def test_multirun_goes_on_after_a_job_with_a_wrongly_typed_value(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner("--multirun", *SMALL_CPU_RUN, "batch=abc,1", f"hydra.sweep.dir={sweep}")
    assert done.returncode != 0
    assert len(list(sweep.rglob("result.csv"))) == 1
