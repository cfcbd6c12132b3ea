"""The torchvision family: torchvision.models.detection builders (model.arch names one) with
their own initialisers, RGB pixels in 0..1, and torch.jit.trace of a flattening wrapper or
torch.jit.script of the model."""

from __future__ import annotations

import torch
from torch import nn

from runner.exported import Exported, Layout, flatten, traced

PIXELS = ("RGB", 1.0)
# boxes, scores, masks and keypoints are named as Detections names them already
RENAMES = {"labels": "classes", "keypoints_scores": "keypoint_scores"}
KEYPOINT_SCORES = False  # the third keypoint column is a visibility flag, always 1
FIRST_CLASS = 1  # labels: 0 is the background, objects from 1
STATIC_HEADS = [("rpn", "head"), ("", "head")]  # R-CNN RPN; RetinaNet, FCOS
REWRITABLE = False  # runner.backends.static_graph rewrites only detectron2 detectors


def check(cfg) -> None:
    """Nothing to ask before a child starts: torchvision comes with torch's install."""


def build(cfg, device: torch.device) -> nn.Module:
    """The builder's model with the run's thresholds, set where the model keeps them (the ROI
    heads of an R-CNN, the detector itself for dense ones), so no keyword name is guessed."""
    import torchvision.models.detection as detection

    builder = getattr(detection, cfg.arch, None)
    if builder is None or not callable(builder):
        raise ValueError(f"model.arch={cfg.arch!r} is not a torchvision.models.detection builder")
    model = builder(
        weights=None, weights_backbone=None, num_classes=cfg.num_classes, **cfg.arch_options
    )
    holder = getattr(model, "roi_heads", model)
    for name, value in (
        ("score_thresh", cfg.score_thresh),
        ("nms_thresh", cfg.nms_thresh),
        ("detections_per_img", cfg.detections_per_image),
    ):
        if not hasattr(holder, name):
            raise ValueError(f"model.arch={cfg.arch}: {type(holder).__name__} has no {name}")
        setattr(holder, name, value)
    return model


def load_state(model: nn.Module, state: dict, cfg) -> dict:
    return state  # torchvision checkpoints use the model's own names


class _Flat(nn.Module):
    """images -> flat detections for a torchvision detector (eager, traced or scripted)."""

    def __init__(self, model: nn.Module, layout: Layout):
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(list(images))
        if isinstance(output, tuple):  # scripted torchvision models return (losses, detections)
            output = output[1]
        return flatten(self.layout, output)


def wrap(model: nn.Module, method: str, postprocess: bool, example) -> Exported:
    """forward() always post-processes in torchvision (`postprocess` changes nothing)."""
    layout = Layout("torchvision")
    eager = _Flat(model, layout).eval()
    if method == "trace":
        return traced(eager, model, example, layout)

    def script():
        return _Flat(torch.jit.script(model), layout).eval()

    return Exported(eager, model, method, example, script, layout)
