"""Every output kind detectron2's meta-architectures return, through the run's own build, export
and decode on the CPU: Panoptic FPN (instances, sem_seg and the panoptic segments combined after
the call), the SemanticSegmentor (sem_seg only) and the ProposalNetwork (proposals). Each is
traced and run by the TorchScript backend and compared with the eager module; a part that cannot
run says `unsupported` and names itself, never an error. Skipped where detectron2 is missing."""

from __future__ import annotations

import pytest
import torch

from runner import backends
from runner.run import measurement, parity
from tests.helpers import backend_and_eager

pytestmark = pytest.mark.detectron2

CPU = torch.device("cpu")
SMALL = ("device=cpu", "inputs.height=128", "inputs.width=160")
PANOPTIC = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
SEMANTIC = "Misc/semantic_R_50_FPN_1x.yaml"
PROPOSALS = "COCO-Detection/rpn_R_50_FPN_1x.yaml"


def against_eager(make_config, arch: str, *overrides: str):
    """(eager answer, TorchScript's answer, figures) of `arch`, small, fp32, traced."""
    cfg = make_config(f"model.arch={arch}", *SMALL, "backend=torchscript", *overrides)
    exported, images, _ = measurement.build(cfg, CPU)
    reference, output, _ = backend_and_eager(cfg, exported, images)
    return reference, output, parity.compare(reference, output, cfg.bench.match_iou)


def test_panoptic_fpn_answers_instances_sem_seg_and_panoptic_segments(make_config):
    """The regression of issue 22: Panoptic FPN failed in eager while flattening its answer."""
    reference, _, figures = against_eager(make_config, PANOPTIC, "postprocess=true")
    (image,) = reference
    assert image.instances and len(image) > 0 and image.masks is not None
    assert image.sem_seg is not None and image.sem_seg.shape[-2:] == (128, 160)
    assert image.panoptic is not None and image.panoptic.segments.shape == (128, 160)
    assert figures.match_f1 == 1.0 and figures.mask_iou > 0.99
    assert figures.sem_seg_agreement > 0.999 and figures.sem_seg_prob_max_diff < 1e-4
    assert figures.panoptic_match_f1 == 1.0 and figures.panoptic_class_agreement == 1.0
    assert figures.unchecked == ()


@pytest.mark.slow
def test_panoptic_fpn_without_post_processing_has_no_panoptic_segments(make_config):
    reference, _, figures = against_eager(make_config, PANOPTIC, "postprocess=false")
    assert reference[0].panoptic is None and reference[0].sem_seg is not None
    assert figures.panoptic_match_f1 is None and figures.sem_seg_agreement > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("postprocess", ["true", "false"])
def test_semantic_segmentor_answers_sem_seg_only(make_config, postprocess):
    reference, _, figures = against_eager(make_config, SEMANTIC, f"postprocess={postprocess}")
    assert not reference[0].instances and reference[0].sem_seg is not None
    assert figures.match_f1 is None and figures.sem_seg_agreement > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("export", ["trace", "script"])
def test_proposal_network_answers_proposals_as_one_class_detections(make_config, export):
    reference, _, figures = against_eager(make_config, PROPOSALS, f"export={export}")
    assert len(reference[0]) > 0 and set(reference[0].classes.tolist()) == {0}
    assert figures.match_f1 == 1.0 and figures.score_max_diff < 1e-4


@pytest.mark.parametrize("arch", [SEMANTIC, PANOPTIC])
def test_scripting_a_semantic_head_is_unsupported_and_says_why(make_config, arch):
    from runner.run import export, models

    cfg = make_config(f"model.arch={arch}", *SMALL, "export=script")
    model, _ = models.build(cfg.model, CPU, cfg.seed)
    image = (torch.zeros(3, 64, 64),)
    with pytest.raises(backends.Unsupported, match="export=script: .*SemSegFPNHead.*trace"):
        export.wrap(model, cfg.model, "script", cfg.postprocess, image)
