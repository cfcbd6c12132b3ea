"""static_graph backend: the rewritten fixed-shape forward of each seed variant answers as the
eager detectron2 model does (CPU, fp32); the backend's options and refusals; and on a GPU, the
forward has no host synchronisation and replays as a CUDA graph with the same answers.

The detectron2 tests skip, with the reason, where detectron2 is missing (CI); the NMS at the
heart of the rewrite is tested against torchvision in test_static_nms.py, which runs in CI.
"""

from __future__ import annotations

import pytest
import torch

from runner import backends, bench, parity
from tests.helpers import CUDA_MISSING, SMALL_CPU_RUN, seed_variants
from tests.test_detectron2 import (
    SMALL,
    assert_same_detections,
    backend_against_eager,
    variant_overrides,
)

CPU = torch.device("cpu")


def _static(cfg, exported, images, **options):
    merged = backends.validate_options("static_graph", {**cfg.backend.options, **options})
    return backends.get("static_graph")(exported, images, cfg.precision, merged)


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("name", list(seed_variants()))
def test_rewritten_forward_answers_as_eager_fp32(make_config, name):
    reference, output, figures, fn = backend_against_eager(make_config, name, "static_graph")
    assert fn.notes().endswith("fallback_calls=0/1"), fn.notes()  # the rewrite answered itself
    assert_same_detections(reference, figures)
    for ref, out in zip(reference, output, strict=True):  # same detections in the same order
        assert torch.equal(ref.classes, out.classes)


@pytest.mark.detectron2
def test_a_budget_too_small_to_vouch_falls_back_to_eager(make_config):
    """One detection candidate cannot yield 100 detections: the flag says so and the call is
    answered by the eager module (counted), never by a truncated rewrite."""
    cfg = make_config("model=retinanet", *SMALL, "backend=static_graph")
    exported, images, _ = bench.prepare(cfg, CPU)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        fn = _static(cfg, exported, images, max_candidates=1)
        output = exported.decode(fn(*opt), cfg.batch)
    assert len(reference[0]) > 1
    assert fn.notes().endswith("fallback_calls=1/1"), fn.notes()
    assert parity.compare(reference, output, cfg.bench.match_iou).match_f1 == 1.0


@pytest.mark.detectron2
def test_half_weights_are_refused_at_fp32(make_config):
    cfg = make_config("model=retinanet", *SMALL, "backend=static_graph")
    exported, images, _ = bench.prepare(cfg, CPU)
    with pytest.raises(ValueError, match="half_weights=true needs a reduced precision"):
        _static(cfg, exported, images, half_weights=True)


def test_torchvision_models_are_unsupported_with_the_reason(make_config):
    cfg = make_config(*SMALL_CPU_RUN, "backend=static_graph")
    exported, images, _ = bench.prepare(cfg, CPU)
    options = backends.validate_options("static_graph", cfg.backend.options)
    with pytest.raises(backends.Unsupported, match="rewrites detectron2 detectors"):
        backends.get("static_graph")(exported, images, cfg.precision, options)


def test_options_are_validated_by_name_and_value():
    with pytest.raises(ValueError, match="max_candidates"):
        backends.validate_options("static_graph", {"max_candidates": "many"})
    with pytest.raises(ValueError, match="unknown option"):
        backends.validate_options("static_graph", {"fold_batchnorm": True})


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("name", list(seed_variants()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_forward_has_no_host_sync_and_replays_the_same(make_config, name, precision):
    if not torch.cuda.is_available():
        pytest.skip(CUDA_MISSING)
    from runner.backends.static_graph.detector import Budgets, StaticDetector
    from runner.precision import autocast

    cfg = make_config(*variant_overrides(name), "device=cuda", f"precision={precision}")
    device = torch.device("cuda", 0)
    exported, images, _ = bench.prepare(cfg, device)
    opt = images.images["opt"]
    postprocess = cfg.postprocess
    detector = StaticDetector(exported.model, postprocess, Budgets()).eval()
    with torch.no_grad(), autocast(cfg.precision, device):
        reference = exported.decode(exported.module(*opt), cfg.batch)
        detector(*opt)  # first call: cuDNN and allocator warm-up may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            detector(*opt)  # raises on any synchronising call
        finally:
            torch.cuda.set_sync_debug_mode("default")
        fn = _static(cfg, exported, images)
        first = exported.decode(fn(*opt), cfg.batch)  # captures
        replayed = exported.decode(fn(*opt), cfg.batch)
    assert "graphs=1" in fn.notes() and fn.notes().endswith("fallback_calls=0/2"), fn.notes()
    assert parity.compare(first, replayed, cfg.bench.match_iou).match_f1 == 1.0
    figures = parity.compare(reference, replayed, cfg.bench.match_iou)  # eager, same precision
    if precision == "fp32":
        assert parity.verdict(figures, cfg.precision) == [], figures
    else:  # fp16 rounding can reorder ties at the top-k and NMS cut-offs
        assert figures.match_f1 > 0.95, figures
