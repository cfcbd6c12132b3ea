"""Record: Row <-> CSV round trips with types, malformed files refused, atomic writes, the folder
lock, the environment, and the config fingerprint that decides whether a run is kept."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from runner.config import to_config
from runner.identity import fingerprint
from runner.run import record
from runner.run.record import COLUMNS, STATUSES, Row, read_rows, write_atomic, write_rows


def full_row(**changes) -> Row:
    """A row with every kind of value a column can hold."""
    row = Row(
        model="mask_rcnn_fpn",
        variant="MaskRCNNFPN",
        export="trace",
        batch=2,
        postprocess=True,
        precision="fp16",
        backend="torchscript",
        shapes="dynamic",
        image_hw="480x640",
        device="cuda:0",
        gpu_index="3",
        status="ok",
        error="",
        latency_ms_median=0.1 + 0.2,  # not exactly representable in short decimal
        latency_ms_mean=13.5,
        latency_ms_p99=1e-300,
        latency_ms_std=0.0,
        latency_ms_min=1 / 3,
        fps_median=123456.789012345,
        fps_mean=None,
        image_hw_min="288x384",
        latency_ms_median_min_shape=2.5e-7,
        parity_pass=False,
        parity_match_f1=1.0,
        parity_mask_iou=None,
        num_detections=0,
        num_detections_ref=100,
        weights="random(seed=0) calibrated(53 norms, 16 residual branches, 3 logit layers)",
        warmup=100,
        iters=200,
        command="python -m runner \"a,b\" x='1'",
        output_dir="/tmp/a folder, with commas",
        fingerprint="0123456789ab",
    )
    return dataclasses.replace(row, **changes)


def test_round_trip_keeps_values_and_types(tmp_path):
    rows = [
        full_row(),
        full_row(status="error", error='line one, "quoted"\nline two\r\nline three', batch=1),
        Row(model="minimal"),
    ]
    path = tmp_path / "result.csv"
    write_rows(path, rows)
    back = read_rows(path)
    assert back == rows
    first = back[0]
    assert type(first.batch) is int and type(first.postprocess) is bool
    assert first.parity_pass is False and first.fps_mean is None
    assert first.latency_ms_median == 0.1 + 0.2  # exact, not rounded
    assert first.num_detections == 0 and type(first.num_detections) is int
    assert back[1].error == 'line one, "quoted"\nline two\r\nline three'
    assert back[2].parity_pass is None and back[2].warmup is None


def test_header_is_the_row_fields_in_order(tmp_path):
    path = tmp_path / "result.csv"
    write_rows(path, [Row(model="m")])
    header = path.read_text().splitlines()[0].split(",")
    assert header == COLUMNS == [f.name for f in dataclasses.fields(Row)]
    assert COLUMNS[0] == "model" and "latency_ms_median" in COLUMNS and "status" in COLUMNS


def test_units_are_in_the_names():
    assert {"optimize_s", "peak_mem_mb", "gpu_busy_ms", "fps_median"} <= set(COLUMNS)
    latencies = [c for c in COLUMNS if c.startswith("latency")]
    assert len(latencies) >= 5 and all(c.startswith("latency_ms_") for c in latencies)


def test_empty_list_writes_only_the_header(tmp_path):
    path = tmp_path / "result.csv"
    write_rows(path, [])
    assert read_rows(path) == []


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "result.csv"
    write_rows(path, [full_row()])
    return path


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9], ids=["30%", "50%", "90%"])
def test_read_rejects_a_truncated_file(written, keep):
    text = written.read_text()
    written.write_text(text[: int(len(text) * keep)])
    with pytest.raises(ValueError):
        read_rows(written)


def test_read_rejects_a_file_cut_in_its_last_field(written):
    text = written.read_text()
    written.write_text(text[:-5])
    with pytest.raises(ValueError):
        read_rows(written)


def test_read_rejects_an_empty_file(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_rows(path)


def test_read_rejects_an_unknown_column(written):
    lines = written.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("latency_ms_median,", "latency_median,", 1)
    written.write_text("".join(lines))
    with pytest.raises(ValueError, match="latency_median"):
        read_rows(written)


def test_read_rejects_a_missing_column(tmp_path):
    path = tmp_path / "result.csv"
    text = record.to_csv_text([Row(model="m", status="ok")])
    header, body = text.splitlines()
    index = COLUMNS.index("peak_mem_mb")
    header = ",".join(c for i, c in enumerate(header.split(",")) if i != index)
    body = ",".join(c for i, c in enumerate(body.split(",")) if i != index)
    path.write_text(f"{header}\n{body}\n")
    with pytest.raises(ValueError, match="peak_mem_mb"):
        read_rows(path)


def test_read_rejects_a_bad_status(tmp_path):
    path = tmp_path / "result.csv"
    write_rows(path, [Row(model="m", status="fine")])
    with pytest.raises(ValueError, match="fine"):
        read_rows(path)
    assert set(STATUSES) == {"ok", "parity_fail", "unsupported", "error"}


def test_read_rejects_a_wrong_field_count(written):
    written.write_text(written.read_text().rstrip("\n") + ",extra\n")
    with pytest.raises(ValueError, match="fields"):
        read_rows(written)


@pytest.mark.parametrize(
    "column, text", [("parity_pass", "yes"), ("batch", "two"), ("latency_ms_median", "fast")]
)
def test_read_rejects_a_value_of_the_wrong_type(tmp_path, column, text):
    path = tmp_path / "result.csv"
    values = record.to_csv_text([Row(model="m", status="ok")]).splitlines()[1].split(",")
    values[COLUMNS.index(column)] = text
    path.write_text(",".join(COLUMNS) + "\n" + ",".join(values) + "\n")
    with pytest.raises(ValueError):
        read_rows(path)


def test_numpy_numbers_round_trip(tmp_path):
    path = tmp_path / "result.csv"
    write_rows(path, [Row(model="m", status="ok", latency_ms_median=np.float64(1.5))])
    assert read_rows(path)[0].latency_ms_median == 1.5


# ---- atomic writes and the lock --------------------------------------------------------------


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "samples.csv"
    write_atomic(path, "a\n")
    write_atomic(path, "b\n")
    assert path.read_text() == "b\n"
    assert os.listdir(path.parent) == ["samples.csv"]


def test_write_atomic_replaces_the_file_whole(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("old contents\n")
    with open(path) as reader:  # a reader that opened the old file keeps seeing all of it
        old_inode = os.fstat(reader.fileno()).st_ino
        write_atomic(path, "new contents\n")
        assert reader.read() == "old contents\n"
    assert path.read_text() == "new contents\n"
    assert os.stat(path).st_ino != old_inode  # renamed over, not rewritten in place


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "a lone surrogate \ud800 cannot be encoded")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["result.csv"]


def test_write_atomic_takes_bytes_and_creates_files_as_open_would(tmp_path):
    path = tmp_path / "plot.png"
    write_atomic(path, b"\x89PNG\x00")
    assert path.read_bytes() == b"\x89PNG\x00"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def _try_lock(path) -> int:
    """Exit status of another process asking for the lock without waiting: 0 got it, 1 not."""
    code = (
        "import fcntl, sys\n"
        "handle = open(sys.argv[1], 'a')\n"
        "try:\n"
        "    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], timeout=30).returncode


def test_locked_excludes_other_processes_until_released(tmp_path):
    lock = tmp_path / ".lock"
    with record.locked(lock):
        assert lock.exists()
        assert _try_lock(lock) == 1
    assert _try_lock(lock) == 0


# ---- environment -----------------------------------------------------------------------------


def test_environment_on_the_cpu():
    import torch

    env = record.environment("cpu")
    assert env["torch_version"] == torch.__version__
    assert env["python_version"] and env["hostname"] and env["git_sha"]
    assert env["timestamp"].endswith("+00:00")
    assert env["gpu_name"] == ""
    assert set(env) <= set(COLUMNS)


def test_git_sha_prefers_the_commit_the_caller_names(monkeypatch):
    """On a lent GPU machine the copy's .git is not the code's: the batch script names it."""
    monkeypatch.setenv("D2BENCH_GIT_SHA", "f782c453a639a95dfa2a0bba6fd542ab8ffbc23b")
    assert record.git_sha() == "f782c453a639a95dfa2a0bba6fd542ab8ffbc23b"
    monkeypatch.delenv("D2BENCH_GIT_SHA")
    assert record.git_sha() != "f782c453a639a95dfa2a0bba6fd542ab8ffbc23b"


def test_physical_gpu_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert record.physical_gpu(0) == "4"
    assert record.physical_gpu(1) == "6"
    assert record.physical_gpu(None) == "4"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert record.physical_gpu(2) == "2"


# ---- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_follows_what_is_measured_not_where_it_is_written(compose, tmp_path):
    base = to_config(compose(f"output_dir={tmp_path / 'a'}", "command=one"))
    moved = to_config(
        compose(
            f"output_dir={tmp_path / 'b'}",
            "command=two",
            "redo=true",
            "members=['backend=eager']",
            "sweep_jobs=3",
            "sweep_started=12.5",
        )
    )
    changed = to_config(compose(f"output_dir={tmp_path / 'a'}", "command=one", "bench.iters=7"))
    other_model = to_config(compose("model=retinanet"))
    code = "abc123"
    assert len(fingerprint(base, code)) == 12
    assert fingerprint(base, code) == fingerprint(base, code)
    assert fingerprint(moved, code) == fingerprint(base, code)
    assert fingerprint(changed, code) != fingerprint(base, code)
    assert fingerprint(other_model, code) != fingerprint(base, code)
    assert fingerprint(base, "abc124") != fingerprint(base, code)


def test_a_file_of_the_previous_version_reads_with_defaults_for_added_columns(tmp_path):
    """results/ holds files written before backend_options and gpu_ops existed."""
    path = tmp_path / "result.csv"
    text = record.to_csv_text([full_row(backend_options="x=1", gpu_ops=7)])
    header, body = csv.reader(io.StringIO(text))
    keep = [i for i, c in enumerate(header) if c not in record.ADDED_COLUMNS]
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [[header[i] for i in keep], [body[i] for i in keep]]
        )
    (row,) = read_rows(path)
    assert row == full_row(backend_options="", gpu_ops=None)


@pytest.mark.parametrize(
    "status, parity_pass, median, measured, passing",
    [
        ("ok", True, 10.0, True, True),
        ("parity_fail", False, 10.0, True, False),
        ("error", None, None, False, False),
        ("unsupported", None, None, False, False),
        ("ok", True, None, False, False),
    ],
)
def test_measured_and_passed(status, parity_pass, median, measured, passing):
    row = Row(model="m", status=status, parity_pass=parity_pass, latency_ms_median=median)
    assert record.is_measured(row) is measured
    assert record.passed(row) is passing


def test_a_cpu_row_names_no_cuda_version():
    """torch's CUDA build runs CPU rows too: its CUDA version is not what measured them."""
    import torch

    env = record.environment("cpu")
    assert env["cuda_version"] == ""
    assert env["torch_version"] == torch.__version__
    assert record.environment("cuda")["cuda_version"] == (torch.version.cuda or "")
