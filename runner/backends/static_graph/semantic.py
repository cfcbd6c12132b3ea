"""Semantic heads: takes a detectron2 semantic segmentation head and the backbone features,
returns per-class logits of every pixel, [N, C, H, W] at the padded size the backbone saw, as
the head's inference returns them (SemanticSegmentor's and Panoptic FPN's `sem_seg_head`).

SemSegFPNHead at inference is already fixed-shape and sync-free: its layers (per pyramid level a
tower of 3x3 convolutions and 2x bilinear upsamplings down to the common stride, the levels
summed, a 1x1 predictor), then one bilinear upsampling by the common stride. The rewrite runs
those same layers and the same upsampling, so the logits are detectron2's. Cropping the padding
and resizing to the output size (sem_seg_postprocess) is post-processing (postprocess.py).

Heads are chosen by class name (`SEM_SEG_HEADS`, as detectron2's SEM_SEG_HEADS_REGISTRY names
them); another head is unsupported, named (detector.py).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812


def fpn_logits(head, features: dict) -> torch.Tensor:
    """SemSegFPNHead.forward at inference: `layers` over its input features, then bilinear
    upsampling by `common_stride` (align_corners=False), as detectron2 calls it."""
    x = head.layers(features)
    return F.interpolate(x, scale_factor=head.common_stride, mode="bilinear", align_corners=False)


# semantic head class -> (its logits, exact: only that class, not its subclasses, which may
# change what inference does)
SEM_SEG_HEADS = {
    "SemSegFPNHead": (fpn_logits, True),
}
