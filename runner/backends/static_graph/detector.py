"""Detector: takes a detectron2 detector (GeneralizedRCNN with standard, Cascade or Res5 ROI
heads, or RetinaNet) and the run's post-processing choice, returns its inference forward
rewritten as fixed-shape, sync-free tensor code: images -> `Slots`.

Preprocessing and backbone are detectron2's own modules; proposals, ROI pooling, heads, NMS and
post-processing are the rewritten parts (proposals.py, pooling.py, heads.py, nms.py). A model
part this rewrite does not cover (keypoints, rotated boxes, other meta-architectures) raises
`Unsupported` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from runner.backends import Unsupported
from runner.backends.static_graph import heads as H  # noqa: N812
from runner.backends.static_graph.proposals import Anchors, common_size, rpn_proposals


@dataclass(frozen=True)
class Budgets:
    max_candidates: int = 2048  # detection candidates entering the final NMS (see heads.py)
    half_roi_align: bool = False  # ROIAlign on fp16 features in fp16 (pooling.py)


def _box_slots(roi_heads):
    """The box stage of these ROI heads, or Unsupported."""
    from detectron2.modeling.roi_heads import CascadeROIHeads, Res5ROIHeads, StandardROIHeads

    if getattr(roi_heads, "keypoint_on", False):
        raise Unsupported("backend=static_graph: the keypoint head is not rewritten")
    if isinstance(roi_heads, CascadeROIHeads):
        return H.cascade_boxes
    if isinstance(roi_heads, Res5ROIHeads):
        return H.res5_boxes
    if type(roi_heads) is StandardROIHeads:
        return H.standard_boxes
    raise Unsupported(
        f"backend=static_graph: ROI heads {type(roi_heads).__name__} are not rewritten "
        "(covered: StandardROIHeads, CascadeROIHeads, Res5ROIHeads)"
    )


def _check_rpn(model) -> None:
    from detectron2.modeling.proposal_generator import RPN

    if type(model.proposal_generator) is not RPN:
        raise Unsupported(
            f"backend=static_graph: proposal generator {type(model.proposal_generator).__name__}"
            " is not rewritten (covered: RPN)"
        )


def preprocess(model, images: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list]:
    """detectron2's `preprocess_image` (normalise, pad to the backbone's divisibility and square
    size, batch) for images of one size, with the padded size computed from the shapes in
    Python: `ImageList.from_tensors` computes it with tensors and `.item()`, which Inductor
    cannot compile (it left that graph eager inside the CUDA graph). The same values.
    Returns the batch [N, C, H, W] and the images' (height, width)."""
    height, width = common_size([im.shape[-2:] for im in images])
    normalised = [
        (im.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std for im in images
    ]
    padded_h, padded_w = height, width
    constraints = getattr(model.backbone, "padding_constraints", None) or {}
    stride = constraints.get("size_divisibility", model.backbone.size_divisibility)
    square = constraints.get("square_size", 0)
    if square > 0:
        padded_h = padded_w = square
    if stride > 1:
        padded_h = -(-padded_h // stride) * stride
        padded_w = -(-padded_w // stride) * stride
    batch = torch.stack(normalised)
    if (padded_h, padded_w) != (height, width):
        batch = F.pad(batch, (0, padded_w - width, 0, padded_h - height), value=0.0)
    return batch, [(height, width)] * len(images)


class StaticDetector(nn.Module):
    """images (CHW, one per image, all the same size) -> Slots, with no host sync."""

    def __init__(self, model: nn.Module, postprocess: bool, budgets: Budgets):
        super().__init__()
        from detectron2.modeling import GeneralizedRCNN
        from detectron2.modeling.meta_arch.retinanet import RetinaNet

        self.model = model
        self.postprocess = postprocess
        self.budgets = budgets
        self.anchors = Anchors()
        if isinstance(model, RetinaNet):
            self.kind = "retinanet"
        elif isinstance(model, GeneralizedRCNN):
            self.kind = "rcnn"
            _check_rpn(model)
            self.box_slots = _box_slots(model.roi_heads)
            self.mask_on = bool(getattr(model.roi_heads, "mask_on", False))
        else:
            raise Unsupported(
                f"backend=static_graph: meta-architecture {type(model).__name__} is not "
                "rewritten (covered: GeneralizedRCNN, RetinaNet)"
            )

    def forward(self, *images: torch.Tensor) -> H.Slots:
        model = self.model
        batch, image_sizes = preprocess(model, images)
        features = model.backbone(batch)
        size = common_size(image_sizes)
        if self.kind == "retinanet":
            slots = H.retinanet_slots(
                model, [features[f] for f in model.head_in_features], self.anchors, self.budgets
            )
        else:
            proposals = rpn_proposals(model.proposal_generator, size, features, self.anchors)
            slots = self.box_slots(model.roi_heads, features, proposals, size, self.budgets)
            slots = replace(slots, exact=slots.exact & proposals.exact)
            if self.mask_on:
                slots = replace(
                    slots, masks=H.masks(model.roi_heads, features, slots, self.budgets)
                )
        if self.postprocess:  # output size = input size (the detectron2 family asks for it)
            height, width = images[0].shape[-2:]
            slots = H.postprocess(slots, int(height), int(width))
        return H.compact(slots)


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that follows a detectron2 Conv2d into the convolution's
    weight and bias (conv(x, w * s) + b * s + t instead of conv(x, w) * s + t). Returns how
    many were folded."""
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    folded = 0
    for module in model.modules():
        if isinstance(module, Conv2d) and isinstance(module.norm, FrozenBatchNorm2d):
            norm = module.norm
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
            with torch.no_grad():
                module.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = shift if module.bias is None else module.bias * scale + shift
                module.bias = nn.Parameter(bias, requires_grad=False)
            module.norm = None
            folded += 1
    return folded


def cast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights of every convolution and linear layer in `dtype`, so that autocast
    finds them already cast (inside a CUDA graph autocast has no weight cache and would cast
    every weight on every replay). Norms, anchors and pixel statistics stay fp32. Returns how
    many layers were cast."""
    layers = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    cast = 0
    for module in model.modules():
        if isinstance(module, layers):
            module.to(dtype)
            cast += 1
    return cast
