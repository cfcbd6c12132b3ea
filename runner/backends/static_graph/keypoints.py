"""Keypoints: takes detectron2's ROI heads with a keypoint head, the backbone features and the
detection Slots (slots.py); returns each slot's keypoints (x, y, score) and the head's raw
heatmaps, in fixed shapes and with no host synchronisation.

The head is detectron2's own (`keypoint_head.layers` on the keypoint pooler's features of every
slot). The decoding is `heatmaps_to_keypoints` (detectron2/structures/keypoints.py) without its
per-box loop: detectron2 resizes each box's heatmaps bicubically to the box's size in whole
pixels (ceil(w) x ceil(h), a size known only at run time) and takes each keypoint's argmax.
Here every box's upsampled pixels are laid end to end in one buffer of fixed length per image
(the pixel budget: `keypoint_area` image areas), each pixel knows its box and its place in it
(cumulative areas and searchsorted), the bicubic value is computed from the 4 x 4 heatmap
cells around it (PyTorch's own weights and edge clamping, A = -0.75, align_corners=False), and
the argmax of each (box, keypoint) is a segmented max then the first pixel that reaches it
(scatter_reduce), as torch.argmax picks the first. Where an image's boxes need more pixels than
the budget, its `exact` flag is False and the call is answered eagerly (capture.py).

Bound: the bicubic values are F.interpolate's sums with PyTorch's weights, rounded in another
order (fp32: within 2e-5 of the map's largest magnitude, measured in
tests/test_static_keypoints.py). The argmax is therefore a pixel whose value is within that
rounding of the maximum: the same pixel unless two pixels of one box's upsampled map tie to
within it, when the pick may move to the tying pixel (in a smooth peak a neighbour: one output
pixel, at most one image pixel on each axis). Measured: the same pixel for every keypoint of
the tests' heatmaps and of a whole Keypoint R-CNN run. The score (1 / sum of exp(heatmap -
max)) moves with the max by as little.
"""

from __future__ import annotations

import math

import torch

from runner import stages
from runner.backends.static_graph.pooling import pool

CUBIC_A = -0.75  # PyTorch's bicubic (antialias=False), as OpenCV


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """PyTorch's get_cubic_upsampling_coefficients for offsets t in [0, 1): the weights of the
    cells at -1, 0, +1, +2."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1.0), near(t), near(1.0 - t), far((1.0 - t) + 1.0)]


def _source(index: torch.Tensor, size: torch.Tensor, side: int):
    """Output pixel `index` of an axis resized from `side` cells to `size` pixels (both per
    pixel): the four source cells (clamped to the map) and their weights."""
    scale = side / size  # float32, as PyTorch's scale: input size / output size
    real = scale * (index.to(scale.dtype) + 0.5) - 0.5
    floor = torch.floor(real)
    weights = _cubic_weights(real - floor)
    first = floor.to(torch.int64) - 1
    cells = [(first + j).clamp(0, side - 1) for j in range(4)]
    return cells, weights


def upsampled(maps: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, budget: int):
    """Every valid box's heatmaps [N, D, K, Sh, Sw] resized bicubically to its size in whole
    pixels (ceil(w) x ceil(h), at least 1), laid end to end: per image `budget` pixels of K
    values ([N, T, K]; -inf past the last box), each pixel's box ([N, T]) and place in the
    box's map, row-major ([N, T]), and per image whether its boxes fit ([N] bool)."""
    n, d, k, side_h, side_w = maps.shape
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=1)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    areas = torch.where(valid, (widths_ceil * heights_ceil).to(torch.int64), 0)
    ends = areas.cumsum(dim=1)  # [N, D]
    fits = ends[:, -1] <= budget

    pixel = torch.arange(budget, device=maps.device).repeat(n, 1)
    box = torch.searchsorted(ends, pixel, right=True)  # [N, T]: the box each pixel is of
    used = box < d
    box = box.clamp(max=d - 1)
    local = pixel - (ends - areas).gather(1, box)  # its place in the box's map, row-major
    width = widths_ceil.gather(1, box).to(torch.int64)
    y, x = local // width, local % width
    rows, row_weights = _source(y, heights_ceil.gather(1, box), side_h)
    cols, col_weights = _source(x, widths_ceil.gather(1, box), side_w)

    # [N * D * Sh * Sw, K]: one row of K logits per heatmap cell, gathered 16 times
    cells = maps.permute(0, 1, 3, 4, 2).reshape(n * d * side_h * side_w, k)
    base = (torch.arange(n, device=maps.device)[:, None] * d + box) * (side_h * side_w)
    value = None
    for row, row_weight in zip(rows, row_weights, strict=True):
        across = None
        for col, col_weight in zip(cols, col_weights, strict=True):
            term = cells[base + row * side_w + col] * col_weight[..., None]  # [N, T, K]
            across = term if across is None else across + term
        term = across * row_weight[..., None]
        value = term if value is None else value + term
    value = torch.where(used[..., None], value, -torch.inf)
    return value, box, local, fits


def heatmaps_to_keypoints(
    maps: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2's heatmaps_to_keypoints on fixed shapes: heatmap logits [N, D, K, S, S] of
    boxes [N, D, 4] (the `valid` [N, D] ones count) -> keypoints [N, D, K, 3] (x, y, score;
    zeros for the other slots) and per image whether its boxes fit `budget` upsampled pixels
    ([N] bool; where not, the keypoints of the boxes past the budget are wrong)."""
    n, d, k = maps.shape[:3]
    if budget >= 2**31:
        raise ValueError(f"a keypoint pixel budget of {budget} per image needs int64 places")
    maps = maps.float()
    boxes = boxes.float()
    value, box, local, fits = upsampled(maps, boxes, valid, budget)
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=1)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()

    # segmented argmax: the largest value of each (box, keypoint), then its first pixel
    index = box[..., None].expand(n, budget, k)  # [N, T, K]: each value's box (a view)
    best = torch.full((n, d, k), -torch.inf, device=maps.device)
    best = best.scatter_reduce(1, index, value, "amax", include_self=True)
    reached = value == best.gather(1, index)
    place = torch.where(reached, local.to(torch.int32)[..., None], budget)
    first = torch.full((n, d, k), budget, dtype=torch.int32, device=maps.device)
    first = first.scatter_reduce(1, index, place, "amin", include_self=True).to(torch.int64)

    column = first % widths_ceil.to(torch.int64)[..., None]
    row = (first - column) // widths_ceil.to(torch.int64)[..., None]
    xs = (column.float() + 0.5) * (widths / widths_ceil)[..., None] + boxes[..., 0, None]
    ys = (row.float() + 0.5) * (heights / heights_ceil)[..., None] + boxes[..., 1, None]
    # detectron2's score at the argmax: exp(0) over the heatmap's sum of exp(logit - max)
    scores = 1.0 / (maps - best[..., None, None]).exp().sum(dim=(3, 4))
    keypoints = torch.stack([xs, ys, scores], dim=-1)
    keypoints = torch.where(valid[..., None, None], keypoints, torch.zeros((), device=maps.device))
    return keypoints, fits


def keypoints(heads, features: dict, slots, size, options):
    """StandardROIHeads._forward_keypoint at inference on the [N, D] Slots of images of `size`:
    the keypoint head's logits [N, D, K, S, S], the keypoints [N, D, K, 3] and per image
    whether the pixel budget (options.keypoint_area image areas) held them. Pooled as the box
    stage pools (detector.Budgets: half_roi_align, roi_align)."""
    n, d = slots.valid.shape
    feats = [features[f] for f in heads.keypoint_in_features]
    with stages.stage("roi_pool"):
        pooled = pool(
            heads.keypoint_pooler,
            feats,
            slots.boxes,
            options.half_roi_align,
            op=options.roi_align == "op",
        )
    logits = heads.keypoint_head.layers(pooled)
    logits = logits.view(n, d, *logits.shape[1:])
    budget = math.ceil(options.keypoint_area * size[0] * size[1])
    points, fits = heatmaps_to_keypoints(logits, slots.boxes, slots.valid, budget)
    return logits.float(), points, fits  # the contract's float32 (outputs.py) under autocast too


# keypoint-head class -> (its decoding of `layers`, exact: only that class). Heads of
# BaseKeypointRCNNHead whose inference is keypoint_rcnn_inference on `layers(x)`.
KEYPOINT_HEADS = {
    "KRCNNConvDeconvUpsampleHead": (keypoints, True),
}
