"""The fp16 verdict on real detections (CPU autocast fp16, torchvision's MobileNet detector with
calibrated random weights, whose near-tied scores make fp16 reorder detections at the cut-offs):
the floor is the worst of several draws, a computation that only rounds differently (the same
model in channels-last memory order) passes at every seed, and one whose boxes are all 5 px off
fails at every seed. The golden-figure cases are in test_parity.py."""

from __future__ import annotations

import copy

import pytest
import torch

from runner.precision import at_precision
from runner.run import fidelity, parity
from runner.run.measurement import build
from tests.helpers import SMALL_CPU_RUN

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


def shifted(found: list[parity.Detections], pixels: float) -> list[parity.Detections]:
    return [parity.Detections(d.boxes + pixels, d.scores, d.classes) for d in found]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp16_passes_a_rounding_change_and_fails_boxes_5_px_off_at_every_seed(make_config, seed):
    cfg = make_config(*SMALL_CPU_RUN, "precision=fp16", f"seed={seed}")
    built = build(cfg, CPU)
    reference, floor = fidelity.reference_and_floor(
        built.exported, built.images, 1, cfg.precision, CPU, cfg.bench.match_iou, seed
    )
    assert floor.draws == cfg.precision.floor_draws == 5
    assert floor.match_f1 < 1.0  # fp16 moves this model's answers: the case the floor is for
    channels_last = copy.deepcopy(built.exported.module).to(memory_format=torch.channels_last)
    with torch.no_grad(), at_precision(cfg.precision, CPU):
        found = built.exported.decode(channels_last(*built.images.images["opt"]), 1)
    rounding = parity.compare(reference["opt"], found, cfg.bench.match_iou)
    assert parity.verdict(rounding, cfg.precision, floor) == []
    off = parity.compare(reference["opt"], shifted(found, 5.0), cfg.bench.match_iou)
    broken = parity.verdict(off, cfg.precision, floor)
    assert any(sentence.startswith(("box_iou", "match_f1")) for sentence in broken), off
