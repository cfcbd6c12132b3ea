"""Keypoint models, for real on the CPU: torchvision's Keypoint R-CNN (random init, calibrated) in
a whole run whose row compares every field (keypoints with a distance, the per-keypoint scores
named as unchecked), and its outputs moved by a known amount; detectron2's Keypoint R-CNN traced
and scripted (TracingAdapter / scripting_with_instances flatten its keypoints) against eager.
static_graph's keypoint head is tested in test_static_keypoints.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from runner import backends
from runner.run import fidelity, measurement, parity
from runner.run.bench import run

CPU = torch.device("cpu")
# 20 detections keep the keypoint head (one 14x14 -> 56x56 map per detection) to seconds
SMALL_KEYPOINTS = (
    "model=tv_keypointrcnn",
    "device=cpu",
    "inputs.height=160",
    "inputs.width=224",
    "model.detections_per_image=20",
)


@pytest.mark.slow
def test_a_whole_keypoint_run_checks_every_field(make_run, tmp_path):
    cfg, job = make_run(
        *SMALL_KEYPOINTS,
        "backend=torchscript",
        "precision=fp32_strict",
        "bench.warmup=1",
        "bench.iters=2",
        "bench.repeats=1",
        "bench.rewarm=0",
        f"output_dir={tmp_path / 'run'}",
    )
    row = run(cfg, job)
    assert row.status == "ok", row.error
    assert row.num_detections_ref > 0, "no detections: parity would prove nothing"
    assert row.parity_pass is True and row.parity_match_f1 == 1.0
    assert row.parity_keypoint_max_dist is not None and row.parity_keypoint_max_dist < 1e-4
    assert row.parity_mask_iou is None  # no masks: nothing to compare, not a pass by default
    assert row.parity_unchecked == "keypoint_scores"  # compared by no figure, and said so
    assert row.parity_reference == fidelity.REFERENCE
    assert row.precision == "fp32_strict" and row.parity_floor_match_f1 is None  # no floor


def test_keypoints_moved_by_a_known_amount_are_measured(make_config):
    cfg = make_config(*SMALL_KEYPOINTS)
    exported, images, _ = measurement.build(cfg, CPU)
    reference, floor = fidelity.reference_and_floor(
        exported, images, cfg.batch, cfg.precision, CPU, cfg.bench.match_iou
    )
    assert floor is None  # fp32 on the CPU: the floor would be the reference
    (ref,) = reference["opt"]
    assert len(ref) > 0 and ref.keypoints.shape == (len(ref), 17, 2)
    assert set(ref.extra) == {"keypoint_scores"}
    boxes = ref.boxes
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    moved = ref.keypoints.clone()
    moved[:, 0, 0] += 0.1 * size  # the first keypoint of every detection, 10 % of its box
    figures = parity.compare([ref], [dataclasses.replace(ref, keypoints=moved)], 0.7)
    assert figures.match_f1 == 1.0
    assert figures.keypoint_max_dist == pytest.approx(0.1, rel=1e-4)
    assert parity.verdict(figures, cfg.precision) == [
        f"keypoint_max_dist 0.1 > {cfg.precision.max_keypoint_dist:.4g}"
    ]


# ---- detectron2 -----------------------------------------------------------------------------

D2_KEYPOINTS = ("model=keypoint_rcnn_fpn", "device=cpu", "inputs.height=192", "inputs.width=256")


def _d2_keypoint_config(make_config, *overrides):
    cfg = make_config(*D2_KEYPOINTS, *overrides)
    cfg.model.arch_options = {"MODEL.RPN.POST_NMS_TOPK_TEST": 200}
    return cfg


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("export", ["trace", "script"])
def test_detectron2_keypoints_survive_export(make_config, export):
    cfg = _d2_keypoint_config(make_config, f"export={export}")
    exported, images, _ = measurement.build(cfg, CPU)
    reference, _ = fidelity.reference_and_floor(
        exported, images, cfg.batch, cfg.precision, CPU, cfg.bench.match_iou
    )
    (ref,) = reference["opt"]
    assert len(ref) > 0 and ref.keypoints.shape == (len(ref), 17, 2)
    assert set(ref.extra) == {"keypoint_heatmaps", "keypoint_scores"}
    fn = backends.get("torchscript")(exported, images, cfg.precision, {"freeze": False})
    with torch.no_grad():
        output = exported.decode(fn(*images.images["opt"]), cfg.batch)
    figures = parity.compare(reference["opt"], output, cfg.bench.match_iou)
    assert figures.match_f1 == 1.0 and figures.keypoint_max_dist < 1e-3, figures
    assert figures.unchecked == ("keypoint_heatmaps", "keypoint_scores")
