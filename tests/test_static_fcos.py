"""static_graph's FCOS (runner/backends/static_graph/dense.py: fcos_slots): detectron2's FCOS from
its model zoo's LazyConfig (COCO-Detection/fcos_R_50_FPN_1x.py), built here with LazyConfig and
instantiate (the detectron2 family reads zoo YAML files; LazyConfig files come to it
separately), random weights: the rewritten forward against the model's own inference at fp32 on
the CPU, the same detections in the same order; on a GPU, no host sync.
"""

from __future__ import annotations

import pytest
import torch

from runner.exported import Detections
from tests.helpers import CUDA_MISSING

ARCH = "COCO-Detection/fcos_R_50_FPN_1x.py"
# random weights score about sqrt(0.01 * 0.5) (the head's prior): under the zoo's 0.2, so the
# test lowers the threshold to keep some hundreds of candidates
SCORE_THRESH = 0.05


def _fcos(device: torch.device):
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    torch.manual_seed(0)
    model = instantiate(model_zoo.get_config(ARCH).model).to(device).eval()
    model.test_score_thresh = SCORE_THRESH
    return model


def _eager(model, images) -> list[Detections]:
    """FCOS's forward without detector_postprocess, as the detectron2 family wraps dense
    detectors (runner.families.detectron2._Inference)."""
    batched = model.preprocess_image([{"image": im} for im in images])
    features = model.backbone(batched.tensor)
    features = [features[f] for f in model.head_in_features]
    results = model.forward_inference(batched, features, model.head(features))
    return [
        Detections(r.pred_boxes.tensor.cpu(), r.scores.cpu(), r.pred_classes.cpu()) for r in results
    ]


def _static(detector, images) -> tuple[list[Detections], torch.Tensor]:
    slots = detector(*images)
    counts = slots.valid.sum(dim=1).tolist()
    return [
        Detections(slots.boxes[i, :c].cpu(), slots.scores[i, :c].cpu(), slots.classes[i, :c].cpu())
        for i, c in enumerate(counts)
    ], slots.exact


@pytest.mark.detectron2
@pytest.mark.slow
def test_rewritten_fcos_answers_as_eager_fp32():
    from runner.backends.static_graph.detector import (
        META_ARCHITECTURES,
        Budgets,
        StaticDetector,
        fcos_head,
        lookup,
    )

    model = _fcos(torch.device("cpu"))
    assert lookup(META_ARCHITECTURES, model) is fcos_head
    generator = torch.Generator().manual_seed(0)
    images = tuple(torch.rand(3, 160, 224, generator=generator) * 255 for _ in range(2))
    detector = StaticDetector(model, False, Budgets()).eval()
    with torch.no_grad():
        reference = _eager(model, images)
        output, exact = _static(detector, images)
    assert all(len(d) > 10 for d in reference), [len(d) for d in reference]
    assert exact.all()
    # random weights regress many boxes of no height, which IoU matching cannot pair (IoU 0):
    # compared slot by slot instead, the same detections in the same order (stronger than a set)
    for ref, out in zip(reference, output, strict=True):
        assert torch.equal(ref.classes, out.classes)
        torch.testing.assert_close(out.scores, ref.scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.boxes, ref.boxes, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
def test_gpu_fcos_has_no_host_sync_and_answers_as_eager():
    if not torch.cuda.is_available():
        pytest.skip(CUDA_MISSING)
    from runner.backends.static_graph.detector import Budgets, StaticDetector

    device = torch.device("cuda", 0)
    model = _fcos(device)
    images = tuple(torch.rand(3, 480, 640, device=device) * 255 for _ in range(1))
    detector = StaticDetector(model, False, Budgets()).eval()
    with torch.no_grad():
        reference = _eager(model, images)
        detector(*images)  # first call: cuDNN and allocator warm-up may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            slots = detector(*images)  # raises on any synchronising call
        finally:
            torch.cuda.set_sync_debug_mode("default")
        output, exact = _static(detector, images)
    assert slots.exact.all() and exact.all()
    # boxes of no height (random weights) defeat IoU matching: scores and classes slot by slot,
    # to the rounding of cuDNN's convolutions (which may reorder near-ties)
    for ref, out in zip(reference, output, strict=True):
        assert len(ref) == len(out) > 0
        torch.testing.assert_close(out.scores, ref.scores, rtol=1e-3, atol=1e-5)
        assert (ref.classes == out.classes).float().mean() > 0.95
