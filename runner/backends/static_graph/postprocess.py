"""Post-processing: takes Slots at the input size and returns them as detectron2's
`detector_postprocess` and `sem_seg_postprocess` leave them when the output size is the input
size (the seed's pproc): boxes clipped, empty boxes masked, masks pasted into the image, the
semantic logits cropped to the image and resized to the output size.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.nn import functional as F  # noqa: N812

from runner.backends.static_graph.pooling import paste_masks
from runner.backends.static_graph.proposals import clip, nonempty
from runner.backends.static_graph.slots import Slots


def postprocess(slots: Slots, height: int, width: int, mask_threshold: float = 0.5) -> Slots:
    """detector_postprocess with the output size equal to the input size (the seed's pproc):
    boxes clipped, empty boxes masked, masks pasted into the image as bool [N, D, H, W]; and
    sem_seg_postprocess of the semantic logits, if any, to [N, C, H, W]."""
    boxes = clip(slots.boxes, (height, width))
    valid = slots.valid & nonempty(boxes)
    pasted = slots.masks
    if pasted is not None:
        n, d = valid.shape
        flat = paste_masks(
            pasted.reshape(n * d, *pasted.shape[-2:]),
            boxes.reshape(n * d, 4),
            height,
            width,
            mask_threshold,
        )
        pasted = flat.view(n, d, height, width)
    sem_seg = slots.sem_seg
    if sem_seg is not None:
        sem_seg = sem_seg_postprocess(sem_seg, (height, width), height, width)
    return replace(slots, boxes=boxes, valid=valid, masks=pasted, sem_seg=sem_seg)


def sem_seg_postprocess(
    logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """detectron2's `sem_seg_postprocess` for a batch of one image size: [N, C, H', W'] logits
    at the padded size -> the image's part (`image_size`, the size before padding) resized
    bilinearly (align_corners=False) to [N, C, height, width]. Every size is a Python int, so
    the shapes are fixed."""
    image_height, image_width = image_size
    cropped = logits[:, :, :image_height, :image_width]
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)
