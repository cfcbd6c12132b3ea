"""Post-processing: takes Slots at the input size and returns them as detectron2's
`detector_postprocess` leaves them when the output size is the input size (the seed's pproc):
boxes clipped, empty boxes masked, masks pasted into the image.
"""

from __future__ import annotations

from dataclasses import replace

from runner.backends.static_graph.pooling import paste_masks
from runner.backends.static_graph.proposals import clip, nonempty
from runner.backends.static_graph.slots import Slots


def postprocess(slots: Slots, height: int, width: int, mask_threshold: float = 0.5) -> Slots:
    """detector_postprocess with the output size equal to the input size (the seed's pproc):
    boxes clipped, empty boxes masked, masks pasted into the image as bool [N, D, H, W]."""
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
    return replace(slots, boxes=boxes, valid=valid, masks=pasted)
