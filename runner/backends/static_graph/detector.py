"""Detector: takes a detectron2 detector and the run's post-processing choice, returns its
inference forward rewritten as fixed-shape, sync-free tensor code: images -> `Slots`.

Preprocessing and backbone are detectron2's own modules; proposals, ROI pooling, heads, NMS and
post-processing are the rewritten parts (proposals.py, pooling.py, roi_heads.py, dense.py,
semantic.py, postprocess.py, nms.py). What is rewritten is chosen by tables, as detectron2
registers its parts by name: `META_ARCHITECTURES` (meta-architecture -> the head that turns
features into Slots), roi_heads.BOX_STAGES (ROI heads -> their box stage),
keypoints.KEYPOINT_HEADS (keypoint head -> its decoding) and semantic.SEM_SEG_HEADS (semantic
head -> its logits). Adding a head is one function and one table entry. A part no table covers
(other keypoint or semantic heads, rotated boxes, other proposal generators or
meta-architectures) raises `Unsupported` naming it.

What each meta-architecture answers (`StaticDetector.fields`, outputs.Fields): GeneralizedRCNN,
RetinaNet and FCOS instances; ProposalNetwork its RPN's proposals (boxes, objectness logits as
scores, class 0); SemanticSegmentor no detections and `sem_seg` logits; PanopticFPN the R-CNN's
instances and `sem_seg` from the same features (its panoptic combination runs after the call,
for every backend alike: runner.families.detectron2._combine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from runner.backends import Unsupported
from runner.backends.static_graph import dense, keypoints, roi_heads, semantic
from runner.backends.static_graph.outputs import Fields
from runner.backends.static_graph.postprocess import postprocess
from runner.backends.static_graph.proposals import (
    Anchors,
    Proposals,
    common_size,
    rpn_proposals,
)
from runner.backends.static_graph.slots import Slots, compact, no_detections
from runner.stages import stage


@dataclass(frozen=True)
class Budgets:
    max_candidates: int = 2048  # detection candidates entering the final NMS (slots.select)
    # how a prefix of a score order is taken (candidates, the RPN's merge): sort | topk (order.py)
    select: str = "sort"
    compile_nms: bool = False  # whether compiled code compiles the NMS too (nms.nms_call)
    half_roi_align: bool = False  # ROIAlign on fp16 features in fp16 (pooling.py)
    roi_align: str = "torchvision"  # torchvision | op: d2bench::roi_align (pooling.py)
    # upsampled keypoint-heatmap pixels per image, in image areas (keypoints.py)
    keypoint_area: float = 8.0


def lookup(table: dict, obj):
    """`table`'s entry (class name -> (value, exact)) for `obj`: its class's own entry, else the
    nearest base class's whose entry serves subclasses (exact=False); None where none does."""
    for depth, cls in enumerate(type(obj).__mro__):
        entry = table.get(cls.__name__)
        if entry is not None and (depth == 0 or not entry[1]):
            return entry[0]
    return None


def covered(table: dict) -> str:
    return ", ".join(sorted(table))


def rpn_stage(model, features: dict, size, anchors, budgets) -> Proposals:
    """The RPN's proposals (proposals.rpn_proposals) as the budgets ask, in the proposals
    stage."""
    with stage("proposals"):
        return rpn_proposals(
            model.proposal_generator,
            size,
            features,
            anchors,
            select=budgets.select,
            compile_nms=budgets.compile_nms,
        )


def require_rpn(model) -> None:
    """Unsupported, naming it, for a proposal generator other than detectron2's RPN."""
    generator = type(model.proposal_generator).__name__
    if generator != "RPN":
        raise Unsupported(
            f"backend=static_graph: proposal generator {generator} is not rewritten (covered: RPN)"
        )


class RCNNHead:
    """GeneralizedRCNN: RPN proposals, the ROI heads' box stage, the mask and keypoint heads."""

    def __init__(self, model):
        self.keypoints = None
        if getattr(model.roi_heads, "keypoint_on", False):
            head = model.roi_heads.keypoint_head
            self.keypoints = lookup(keypoints.KEYPOINT_HEADS, head)
            if self.keypoints is None or model.roi_heads.keypoint_pooler is None:
                raise Unsupported(
                    f"backend=static_graph: keypoint head {type(head).__name__} is not "
                    f"rewritten (covered: {covered(keypoints.KEYPOINT_HEADS)}, pooled)"
                )
        self.box_stage = lookup(roi_heads.BOX_STAGES, model.roi_heads)
        if self.box_stage is None:
            raise Unsupported(
                f"backend=static_graph: ROI heads {type(model.roi_heads).__name__} are not "
                f"rewritten (covered: {covered(roi_heads.BOX_STAGES)})"
            )
        require_rpn(model)
        self.mask_on = bool(getattr(model.roi_heads, "mask_on", False))
        kept = ("keypoint_heatmaps", "keypoints") if self.keypoints is not None else ()
        self.fields = Fields(("masks",) * self.mask_on + kept)

    def __call__(self, model, features: dict, size, anchors, budgets) -> Slots:
        proposals = rpn_stage(model, features, size, anchors, budgets)
        with stage("boxes"):
            slots = self.box_stage(model.roi_heads, features, proposals, size, budgets)
        slots = replace(slots, exact=slots.exact & proposals.exact)
        if self.mask_on:
            with stage("mask_head"):
                masks = roi_heads.masks(model.roi_heads, features, slots, budgets)
            slots = replace(slots, masks=masks)
        if self.keypoints is not None:
            with stage("keypoint_head"):
                heatmaps, points, fits = self.keypoints(
                    model.roi_heads, features, slots, size, budgets
                )
            slots = replace(
                slots, keypoint_heatmaps=heatmaps, keypoints=points, exact=slots.exact & fits
            )
        return slots


class DenseHead:
    """RetinaNet and FCOS: the head over the backbone's levels, decoded and selected
    (dense.py: `slots`, the architecture's own)."""

    fields = Fields()

    def __init__(self, model, slots):
        self.in_features = list(model.head_in_features)
        self.slots = slots

    def __call__(self, model, features: dict, size, anchors, budgets) -> Slots:
        levels = [features[f] for f in self.in_features]
        with stage("boxes"):  # its head's convolutions are stage "head" (dense.py)
            return self.slots(model, levels, anchors, budgets)


def retinanet_head(model) -> DenseHead:
    return DenseHead(model, dense.retinanet_slots)


def fcos_head(model) -> DenseHead:
    return DenseHead(model, dense.fcos_slots)


def proposal_slots(proposals: Proposals) -> Slots:
    """RPN proposals as the answer of an RPN-only model, as the detectron2 family decodes
    ProposalNetwork's: boxes, objectness logits as scores (float32), every class 0; the slots
    after the survivors hold zeros (the logits' -inf too)."""
    zero = torch.zeros((), device=proposals.logits.device)
    return Slots(
        boxes=proposals.boxes,
        scores=torch.where(proposals.valid, proposals.logits.float(), zero),
        classes=torch.zeros(proposals.valid.shape, dtype=torch.int64, device=zero.device),
        valid=proposals.valid,
        exact=proposals.exact,
    )


class ProposalHead:
    """ProposalNetwork (RPN only): the RPN's proposals (proposals.py) as the answer."""

    fields = Fields(answers="proposals")

    def __init__(self, model):
        require_rpn(model)

    def __call__(self, model, features: dict, size, anchors, budgets) -> Slots:
        proposals = rpn_stage(model, features, size, anchors, budgets)
        return proposal_slots(proposals)


def sem_seg_logits(model):
    """The rewrite of `model.sem_seg_head` (semantic.SEM_SEG_HEADS); Unsupported, naming the
    head, where none covers it."""
    head = model.sem_seg_head
    logits = lookup(semantic.SEM_SEG_HEADS, head)
    if logits is None:
        raise Unsupported(
            f"backend=static_graph: semantic head {type(head).__name__} is not rewritten "
            f"(covered: {covered(semantic.SEM_SEG_HEADS)})"
        )
    return logits


class SemanticHead:
    """SemanticSegmentor: no detections, the semantic head's logits (semantic.py)."""

    fields = Fields(("sem_seg",), answers="sem_seg")

    def __init__(self, model):
        self.logits = sem_seg_logits(model)

    def __call__(self, model, features: dict, size, anchors, budgets) -> Slots:
        with stage("head"):
            logits = self.logits(model.sem_seg_head, features)
        return replace(no_detections(logits.shape[0], logits.device), sem_seg=logits)


class PanopticHead(RCNNHead):
    """PanopticFPN: the R-CNN's instances (RCNNHead) and the semantic head's logits on the same
    features; the panoptic combination of the two runs after the call, as for eager."""

    def __init__(self, model):
        super().__init__(model)
        self.logits = sem_seg_logits(model)
        self.fields = Fields(self.fields.optional + ("sem_seg",))

    def __call__(self, model, features: dict, size, anchors, budgets) -> Slots:
        with stage("head"):
            logits = self.logits(model.sem_seg_head, features)
        slots = super().__call__(model, features, size, anchors, budgets)
        return replace(slots, sem_seg=logits)


# meta-architecture -> (its head, exact: only that class, not its subclasses, which may change
# what inference does: PanopticFPN is a GeneralizedRCNN)
META_ARCHITECTURES = {
    "FCOS": (fcos_head, True),
    "GeneralizedRCNN": (RCNNHead, True),
    "PanopticFPN": (PanopticHead, True),
    "ProposalNetwork": (ProposalHead, True),
    "RetinaNet": (retinanet_head, True),
    "SemanticSegmentor": (SemanticHead, True),
}


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
    """images (CHW, one per image, all the same size) -> Slots, with no host sync; `fields`
    says what they hold (outputs.Fields)."""

    def __init__(self, model: nn.Module, postprocess: bool, budgets: Budgets):
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.budgets = budgets
        self.anchors = Anchors()
        head = lookup(META_ARCHITECTURES, model)
        if head is None:
            raise Unsupported(
                f"backend=static_graph: meta-architecture {type(model).__name__} is not "
                f"rewritten (covered: {covered(META_ARCHITECTURES)})"
            )
        self.head = head(model)
        self.fields = self.head.fields

    def forward(self, *images: torch.Tensor) -> Slots:
        model = self.model
        with stage("preprocess"):
            batch, image_sizes = preprocess(model, images)
        with stage("backbone"):
            features = model.backbone(batch)
        size = common_size(image_sizes)
        slots = self.head(model, features, size, self.anchors, self.budgets)
        if self.postprocess:  # output size = input size (the detectron2 family asks for it)
            height, width = images[0].shape[-2:]
            with stage("paste"):
                slots = postprocess(slots, int(height), int(width))
        if slots.sem_seg is not None:  # the contract's float32 (outputs.py), under autocast too
            slots = replace(slots, sem_seg=slots.sem_seg.float())
        return compact(slots)


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
