"""Proposals: takes detectron2's RPN module, the image sizes and the backbone features, returns
the RPN's proposals as fixed-shape tensors with no host synchronisation.

Same steps as detectron2's `RPN.forward` + `find_top_rpn_proposals` at inference, with every
removal turned into a mask:

    per level: top `pre_nms_topk` objectness logits (levels with fewer anchors are padded)
    -> decode boxes, drop non-finite (mask), clip to the image, drop boxes not larger than
       `min_box_size` (mask) -> batched NMS with the level as category (one NMS per level,
       since levels never suppress each other) -> the `post_nms_topk` best survivors by score.

Returns `Proposals`: boxes [N, P, 4] (fp32), logits [N, P], valid [N, P] (the survivors, a
prefix of the P slots in score order), exact [N] (False where the NMS cannot vouch for its
answer; the caller then falls back to eager for that call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.backends.static_graph.nms import nms_call
from runner.backends.static_graph.order import descending_prefix
from runner.stages import stage


@dataclass
class Proposals:
    boxes: torch.Tensor  # [N, P, 4] fp32, clipped to the image
    logits: torch.Tensor  # [N, P] objectness logits (-inf in invalid slots)
    valid: torch.Tensor  # [N, P] bool
    exact: torch.Tensor  # [N] bool


def clip(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """detectron2's `Boxes.clip` on [..., 4] boxes of images of `size` (h, w), without its
    finiteness assert (a host sync): callers mask non-finite boxes instead."""
    h, w = size
    x1 = boxes[..., 0].clamp(min=0, max=w)
    y1 = boxes[..., 1].clamp(min=0, max=h)
    x2 = boxes[..., 2].clamp(min=0, max=w)
    y2 = boxes[..., 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """detectron2's `Boxes.nonempty`: both sides larger than `threshold`."""
    return ((boxes[..., 2] - boxes[..., 0]) > threshold) & (
        (boxes[..., 3] - boxes[..., 1]) > threshold
    )


def common_size(image_sizes) -> tuple[int, int]:
    """The one (h, w) of a batch's images (a batch of one size is what a graph replays)."""
    sizes = {(int(h), int(w)) for h, w in image_sizes}
    if len(sizes) != 1:
        raise ValueError(f"backend=static_graph: a batch's images differ in size: {sorted(sizes)}")
    return sizes.pop()


class Anchors:
    """An anchor generator's anchors per feature-map shapes, made once outside any graph:
    detectron2 builds their grid on the CPU and copies it to the GPU, which a graph cannot
    hold. They depend on the feature maps' sizes only."""

    def __init__(self):
        self.made: dict = {}

    def __call__(self, generator, features: list[torch.Tensor]):
        key = (id(generator), tuple(tuple(f.shape[-2:]) for f in features), features[0].device)
        if key not in self.made:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("static_graph: anchors must be made before graph capture")
            self.made[key] = generator(features)
        return self.made[key]


def rpn_proposals(
    rpn,
    size: tuple[int, int],
    features: dict,
    anchors: Anchors,
    *,
    select: str = "sort",
    compile_nms: bool = False,
) -> Proposals:
    """detectron2 `RPN` at inference, fixed-shape. `features`: the backbone's output dict.
    `select` and `compile_nms` as for slots.select."""
    feats = [features[f] for f in rpn.in_features]
    anchors = anchors(rpn.anchor_generator, feats)
    with stage("head"):  # with fuse_levels, one pass over all levels (canvas.FusedHead)
        logits, deltas = rpn.rpn_head(feats)
    logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
    box_dim = rpn.anchor_generator.box_dim
    deltas = [
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
        .permute(0, 3, 4, 1, 2)
        .flatten(1, -2)
        for x in deltas
    ]
    decoded = rpn._decode_proposals(anchors, deltas)  # per level [N, Hi*Wi*A, 4], fp32
    pre_k, post_k = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
    num_images = logits[0].shape[0]
    device = logits[0].device
    batch = torch.arange(num_images, device=device)[:, None]

    level_boxes, level_scores, level_valid = [], [], []
    for boxes_i, logits_i in zip(decoded, logits, strict=True):
        k = min(logits_i.shape[1], pre_k)
        scores_i, index = logits_i.topk(k, dim=1)
        boxes_i = boxes_i[batch, index]
        valid_i = torch.ones_like(scores_i, dtype=torch.bool)
        if k < pre_k:  # pad the level to pre_k slots that can never be kept
            pad = pre_k - k
            boxes_i = torch.cat([boxes_i, boxes_i.new_zeros(num_images, pad, 4)], dim=1)
            scores_i = torch.cat([scores_i, scores_i.new_full((num_images, pad), -float("inf"))], 1)
            valid_i = torch.cat([valid_i, valid_i.new_zeros(num_images, pad)], dim=1)
        level_boxes.append(boxes_i)
        level_scores.append(scores_i)
        level_valid.append(valid_i)
    boxes = torch.stack(level_boxes, dim=1)  # [N, L, K, 4]
    scores = torch.stack(level_scores, dim=1)  # [N, L, K]
    valid = torch.stack(level_valid, dim=1)
    num_levels = boxes.shape[1]

    valid = valid & torch.isfinite(boxes).all(-1) & torch.isfinite(scores)
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    boxes = clip(boxes, size)
    valid = valid & nonempty(boxes, rpn.min_box_size)

    # batched_nms with the level as category: torchvision offsets each level's boxes by
    # level * (largest coordinate of the image's boxes + 1) and runs one NMS. Levels never
    # overlap after that, so one NMS per level on the same offset boxes gives the same answer.
    largest = torch.where(valid[..., None], boxes, torch.full_like(boxes, -float("inf")))
    largest = largest.flatten(1).amax(dim=1).clamp(min=0)  # [N]; no valid box: any offset
    level = torch.arange(num_levels, device=device, dtype=boxes.dtype)
    offsets = level[None, :] * (largest[:, None] + 1)  # [N, L]
    shifted = boxes + offsets[:, :, None, None]
    same = torch.zeros(scores.shape, dtype=torch.int64, device=device)
    # each level's row comes from a sorted topk, so its valid entries are in score order
    # already: with select=topk they are taken where they stand instead of sorted again
    in_order = "presorted" if select == "topk" else "sort"
    index, kept, exact = nms_call(compile_nms)(
        shifted, scores, same, valid, rpn.nms_thresh, pre_k, select=in_order
    )

    # merge the levels' survivors by score (stable: ties keep level order, as one sort would);
    # `select` takes the post_nms_topk best by that sort or by order.stable_topk: the same ones
    kept_scores = scores.gather(2, index)
    kept_scores = torch.where(kept, kept_scores, torch.full_like(kept_scores, -float("inf")))
    flat_scores = kept_scores.flatten(1)  # [N, L*K]
    order = descending_prefix(flat_scores, post_k, select)
    flat_index = (index + torch.arange(num_levels, device=device)[None, :, None] * pre_k).flatten(1)
    source = flat_index.gather(1, order)  # [N, P] into the [L*K] candidates
    out_valid = kept.flatten(1).gather(1, order)
    out_boxes = boxes.flatten(1, 2).gather(1, source[..., None].expand(-1, -1, 4))
    out_logits = scores.flatten(1).gather(1, source)
    out_boxes = torch.where(out_valid[..., None], out_boxes, torch.zeros_like(out_boxes))
    out_logits = torch.where(out_valid, out_logits, torch.full_like(out_logits, -float("inf")))
    return Proposals(out_boxes, out_logits, out_valid, exact.all(dim=1))
