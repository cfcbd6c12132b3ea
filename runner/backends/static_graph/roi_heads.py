"""ROI heads: takes detectron2's ROI heads (standard FPN, Cascade, Res5 of C4), the backbone
features and fixed-shape proposals; returns Slots (slots.py) with no host synchronisation, and
the mask head's probabilities for them.

The arithmetic is detectron2's own (its layers, box transforms and mask functions are called as
they are). Detection NMS keeps the top `max_candidates` candidates above the score threshold:
exact whenever all candidates fit or at least `detections_per_image` of them survive NMS
(greedy NMS decides each box from higher-scored boxes only); `Slots.exact` is False otherwise
and the caller falls back to eager for that call.

`BOX_STAGES` is the dispatch table of the detector (detector.py): ROI-heads class name -> the
function computing its box stage, as detectron2 registers heads by name.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from runner import stages
from runner.backends.static_graph.pooling import pool
from runner.backends.static_graph.proposals import Proposals, clip
from runner.backends.static_graph.slots import Slots, select


def fast_rcnn_slots(predictor, boxes, probs, proposals_valid, size, budgets) -> Slots:
    """detectron2's `fast_rcnn_inference` on fixed shapes: boxes [N, P, R*4] (R = 1 or K
    regressed classes), probs [N, P, K+1] -> the best `test_topk_per_image` detections; the
    budgets' `max_candidates` enter NMS, taken as their `select` says (slots.select)."""
    n, p = probs.shape[:2]
    num_classes = probs.shape[2] - 1
    rows_ok = proposals_valid & torch.isfinite(boxes).all(dim=2) & torch.isfinite(probs).all(dim=2)
    scores = probs[:, :, :-1]
    boxes = boxes.view(n, p, -1, 4)
    boxes = torch.where(rows_ok[..., None, None], boxes, torch.zeros((), device=boxes.device))
    boxes = clip(boxes, size)
    if boxes.shape[2] == 1:
        boxes = boxes.expand(n, p, num_classes, 4)
    candidates = (scores > predictor.test_score_thresh) & rows_ok[..., None]
    classes = torch.arange(num_classes, device=probs.device).expand(n, p, num_classes)
    return select(
        boxes.reshape(n, p * num_classes, 4),
        scores.reshape(n, p * num_classes),
        classes.reshape(n, p * num_classes),
        candidates.reshape(n, p * num_classes),
        predictor.test_nms_thresh,
        predictor.test_topk_per_image,
        budgets.max_candidates,
        select=budgets.select,
        compile_nms=budgets.compile_nms,
    )


def _pool(pooler, features: list, boxes: torch.Tensor, options) -> torch.Tensor:
    """pooling.pool with the run's ROIAlign choices (detector.Budgets: half_roi_align,
    roi_align)."""
    with stages.stage("roi_pool"):
        return pool(pooler, features, boxes, options.half_roi_align, op=options.roi_align == "op")


def _predict(predictor, features: torch.Tensor, proposal_boxes: torch.Tensor):
    """FastRCNNOutputLayers forward + predict_boxes + predict_probs on [N, P] proposals."""
    n, p = proposal_boxes.shape[:2]
    logits, deltas = predictor(features)
    boxes = predictor.box2box_transform.apply_deltas(deltas, proposal_boxes.reshape(n * p, 4))
    probs = logits.sigmoid() if predictor.use_sigmoid_ce else F.softmax(logits, dim=-1)
    return boxes.view(n, p, -1), probs.view(n, p, -1)


def standard_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """StandardROIHeads._forward_box at inference."""
    feats = [features[f] for f in heads.box_in_features]
    pooled = _pool(heads.box_pooler, feats, proposals.boxes, options)
    boxes, probs = _predict(heads.box_predictor, heads.box_head(pooled), proposals.boxes)
    return fast_rcnn_slots(heads.box_predictor, boxes, probs, proposals.valid, size, options)


def cascade_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """CascadeROIHeads._forward_box at inference: each stage refines the previous stage's
    boxes; scores are the stages' mean, boxes the last stage's."""
    feats = [features[f] for f in heads.box_in_features]
    proposal_boxes, boxes, probs_per_stage = proposals.boxes, None, []
    for stage in range(heads.num_cascade_stages):
        if boxes is not None:  # _create_proposals_from_boxes: clipped, none removed at inference
            proposal_boxes = clip(boxes.view(*boxes.shape[:2], 4), size)
        pooled = _pool(heads.box_pooler, feats, proposal_boxes, options)
        predictor = heads.box_predictor[stage]
        boxes, probs = _predict(predictor, heads.box_head[stage](pooled), proposal_boxes)
        probs_per_stage.append(probs)
    total = probs_per_stage[0]
    for probs in probs_per_stage[1:]:  # sum() in detectron2: ((s0 + s1) + s2), then scaled
        total = total + probs
    mean = total * (1.0 / heads.num_cascade_stages)
    return fast_rcnn_slots(heads.box_predictor[-1], boxes, mean, proposals.valid, size, options)


def res5_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """Res5ROIHeads.forward at inference (C4): pooled res4 features through res5 per box."""
    feats = [features[f] for f in heads.in_features]
    x = heads.res5(_pool(heads.pooler, feats, proposals.boxes, options))
    predictor = heads.box_predictor
    boxes, probs = _predict(predictor, x.mean(dim=[2, 3]), proposals.boxes)
    return fast_rcnn_slots(predictor, boxes, probs, proposals.valid, size, options)


def masks(heads, features: dict, slots: Slots, options) -> torch.Tensor:
    """The mask head on every slot: [N, D, 1, S, S] probabilities of each slot's class."""
    n, d = slots.valid.shape
    if hasattr(heads, "res5"):  # Res5ROIHeads: the shared res5 transform, then the head
        feats = [features[f] for f in heads.in_features]
        x = heads.res5(_pool(heads.pooler, feats, slots.boxes, options))
    else:
        feats = [features[f] for f in heads.mask_in_features]
        x = _pool(heads.mask_pooler, feats, slots.boxes, options)
    logits = heads.mask_head.layers(x)  # [N * D, K or 1, S, S]
    if logits.shape[1] == 1:
        probs = logits.sigmoid()
    else:
        rows = torch.arange(n * d, device=logits.device)
        probs = logits[rows, slots.classes.reshape(-1)][:, None].sigmoid()
    return probs.view(n, d, *probs.shape[1:])


# ROI-heads class -> its box stage. `exact`: only that class itself (a subclass of it may
# change what its box stage does); otherwise its subclasses too.
BOX_STAGES = {
    "CascadeROIHeads": (cascade_boxes, False),
    "Res5ROIHeads": (res5_boxes, False),
    "StandardROIHeads": (standard_boxes, True),
}
