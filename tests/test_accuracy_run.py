"""The accuracy pass inside a run: `dataset=` is validated like every other key (one line, exit
code 2), and a whole `python -m runner` session on the CPU (torchvision's MobileNet detector,
two backends) writes the AP columns for each backend; a run without a dataset leaves them
empty (the existing runs' tests check the rest)."""

from __future__ import annotations

import pytest

from runner.accuracy import shapes
from runner.config import ConfigError
from runner.run.record import read_rows
from tests.helpers import SMALL_CPU_RUN, run_runner


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset.max_images=-1"], "dataset.max_images=-1; must be >= 0"),
        (["dataset.class_map=names"], "dataset.class_map='names'; allowed: ['contiguous'"),
        (["dataset=generated", "dataset.annotations="], "dataset.annotations is empty"),
    ],
)
def test_bad_dataset_keys_are_refused_naming_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_config("device=cpu", *overrides)


def test_a_dataset_that_is_not_there_is_refused_in_one_line(tmp_path):
    done = run_runner(*SMALL_CPU_RUN, "dataset=generated", f"dataset.root={tmp_path}", timeout=120)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    (line,) = [line for line in output.splitlines() if "invalid configuration" in line]
    assert f"dataset.annotations={tmp_path}/val.json: no such file" in line
    assert "python -m runner.accuracy.shapes" in line  # how to make it
    assert "Traceback" not in output


def test_an_annotation_file_that_is_not_coco_is_refused(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val.json").write_text('{"images": []}')
    done = run_runner(*SMALL_CPU_RUN, "dataset=generated", f"dataset.root={tmp_path}", timeout=120)
    assert done.returncode == 2
    assert "not COCO instances (no list annotations, categories)" in done.stdout + done.stderr


@pytest.mark.slow
def test_a_session_with_a_dataset_writes_the_ap_columns_for_each_backend(tmp_path):
    """Images of 240x320 letterboxed into the run's 160x224, three of them (batch 2: the last
    batch is filled), through eager and TorchScript, each scored against the reference."""
    data = tmp_path / "shapes"
    shapes.generate(data, {"val": 3}, seed=1, height=240, width=320, max_objects=4)
    sweep = tmp_path / "sweep"
    done = run_runner(
        "--multirun",
        *SMALL_CPU_RUN,
        "batch=2",
        "backend=eager,torchscript",
        "dataset=generated",
        f"dataset.root={data}",
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [read_rows(path)[-1] for path in sorted(sweep.rglob("result.csv"))]
    assert sorted(row.backend for row in rows) == ["eager", "torchscript"]
    for row in rows:
        assert row.status == "ok", row.error
        assert row.accuracy_dataset.startswith("generated:val.json@sha256:")
        assert row.accuracy_images == 3
        assert 0.0 <= row.accuracy_box_ap <= 1.0 and 0.0 <= row.accuracy_box_ap50 <= 1.0
        # fp32 on the CPU: the timed callable gives the reference's answers, so its AP
        assert row.accuracy_box_ap_vs_ref == pytest.approx(0.0, abs=1e-9)
        assert row.accuracy_mask_ap is None and row.accuracy_keypoint_ap is None  # boxes only
        assert row.accuracy_s > 0
        assert row.latency_ms_median > 0  # the timed blocks are the same as without a dataset
    logs = "".join((path.parent / "child.log").read_text() for path in sweep.rglob("result.csv"))
    assert "accuracy reference (eager fp32 strict): 3 images" in logs
    assert "COCOeval bbox on 3 images" in logs


def test_sweep_trained_loads_each_architectures_checkpoint_and_scores_the_val_split(tmp_path):
    """conf/sweep/trained.yaml: the seven variants x fp32_strict / fp16 x four backend points, each
    job with its architecture's checkpoint and dataset=generated (the plan only: every job is
    refused before it runs)."""
    from tests.test_sweeper import NO_RUN, REFUSED, launched_jobs, launched_sessions

    done = run_runner("sweep=trained", *NO_RUN, f"hydra.sweep.dir={tmp_path}", timeout=300)
    log = done.stdout + done.stderr
    jobs = launched_jobs(log)
    assert len(jobs) == 56 and launched_sessions(log) == 14
    assert {j["precision"] for j in jobs} == {"fp32_strict", "fp16"}
    for job in jobs:
        assert job["model.weights"] == f"checkpoints/{job['model']}.pth", job
        assert job["dataset"] == "generated"
    assert {(j["backend"], j.get("backend.options.compile", "")) for j in jobs} == {
        ("eager", ""),
        ("torchscript", ""),
        ("static_graph", ""),
        ("static_graph", "true"),
    }
    assert REFUSED.format(56) in log
