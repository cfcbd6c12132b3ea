"""Outputs: takes the rewritten detector (detector.py) and the run's precision, returns a module
whose answer is a flat tuple of fixed-shape tensors: what static_graph replays, and what an
AOTInductor package of it returns (the package's contract, version 1).

    images: `batch` tensors [3, H, W] float32, on the package's device, in the model's input
            format (detectron2: BGR, 0-255, unnormalised), all of the size the package serves
    returns (boxes, scores, classes, counts, exact[, masks][, keypoint_heatmaps, keypoints]):
      boxes   [N, D, 4] float32  x1, y1, x2, y2 in the input image's pixels
      scores  [N, D]    float32
      classes [N, D]    int64
      counts  [N]       int64    image i's detections are its first counts[i] slots, best first;
                                 the slots after them hold zeros
      exact   [N]       bool     False where the fixed budgets (NMS candidates) could not prove
                                 that these are detectron2's detections (static_graph then answers
                                 that call with the eager model; a package has no eager model)
      masks   mask models only: [N, D, 1, S, S] float32 probabilities of each slot's class, or,
              where the run post-processes, [N, D, H, W] bool masks pasted into the image
      keypoint_heatmaps, keypoints   keypoint models only:
              keypoint_heatmaps [N, D, K, S, S] float32  the keypoint head's logits
              keypoints         [N, D, K, 3]    float32  x, y in the input image's pixels and
                                                         detectron2's score (keypoints.py)

N is the batch, D the model's detections per image, K the keypoints. `slice_detections` turns
it into the flat per-image tuple every other backend returns (boxes, scores, classes, then the
others in name order: keypoint_heatmaps, keypoints, masks, as detectron2's pred_* sort).

The precision is applied here, inside the forward: autocast to the run's dtype without its
weight cache (so that a CUDA graph or an exported program owns every cast), or nothing at fp32.
The backends that use this module own the precision (runner.backends: owns_precision).
"""

from __future__ import annotations

import torch
from torch import nn

FIELDS = ("boxes", "scores", "classes", "counts", "exact")
# the optional fields after FIELDS, each group present or absent as a whole, in this order:
# their count tells which are there (keypoints come as two)
OPTIONAL = (("masks",), ("keypoint_heatmaps", "keypoints"))
VERSION = "1"


class Outputs(nn.Module):
    """images -> (boxes, scores, classes, counts, exact[, masks][, keypoint_heatmaps,
    keypoints]); see the module docstring."""

    def __init__(self, detector: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.detector = detector
        self.dtype = dtype  # None: no autocast (fp32)

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.dtype is None:
            slots = self.detector(*images)
        else:
            device = images[0].device.type
            with torch.autocast(device, dtype=self.dtype, cache_enabled=False):
                slots = self.detector(*images)
        counts = slots.valid.sum(dim=1)  # the valid slots are the first ones (slots.compact)
        flat = (slots.boxes, slots.scores, slots.classes, counts, slots.exact)
        if slots.masks is not None:
            flat += (slots.masks,)
        if slots.keypoints is not None:
            flat += (slots.keypoint_heatmaps, slots.keypoints)
        return flat


def field_names(outputs: tuple) -> tuple[str, ...]:
    """The names of an Outputs tuple's fields, in order."""
    extra = len(outputs) - len(FIELDS)
    for masks in (False, True):
        for keypoints in (False, True):
            names = OPTIONAL[0] * masks + OPTIONAL[1] * keypoints
            if len(names) == extra:
                return FIELDS + names
    raise ValueError(f"{len(outputs)} outputs are not an Outputs tuple ({FIELDS} and {OPTIONAL})")


def slice_detections(outputs: tuple, counts: list[int]) -> tuple[torch.Tensor, ...]:
    """Outputs and its counts (read back to the host) -> the flat per-image tuple of the eager
    module: boxes, scores, classes, then the optional fields in name order (keypoint_heatmaps,
    keypoints, masks) of each image's valid slots."""
    named = dict(zip(field_names(outputs), outputs, strict=True))
    per_detection = ["boxes", "scores", "classes"]
    per_detection += sorted(name for name in named if name not in FIELDS)
    flat: list[torch.Tensor] = []
    for i, count in enumerate(counts):
        flat += [named[name][i, :count] for name in per_detection]
    return tuple(flat)
