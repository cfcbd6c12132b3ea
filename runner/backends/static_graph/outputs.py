"""Outputs: takes the rewritten detector (detector.py) and the run's precision, returns a module
whose answer is a flat tuple of fixed-shape tensors: what static_graph replays, and what an
AOTInductor package of it returns (the package's contract, version 1).

    images: `batch` tensors [3, H, W] float32, on the package's device, in the model's input
            format (detectron2: BGR, 0-255, unnormalised), all of the size the package serves
    returns (boxes, scores, classes, counts, exact[, masks][, keypoint_heatmaps, keypoints]
             [, sem_seg]):
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
      sem_seg models with a semantic head only (SemanticSegmentor, Panoptic FPN): [N, C, H', W']
              float32, per-class logits of every pixel, one map per image (not per slot): at
              the input size (H, W) where the run post-processes, else at the padded size the
              backbone sees (H and W rounded up to its divisibility)

N is the batch, D the model's detections per image, K the keypoints, C the semantic classes.
What the detections are (`Fields.answers`) tells how to read the first five:
  instances  boxes, scores, classes: a detector's (R-CNN, RetinaNet, FCOS, Panoptic FPN)
  proposals  RPN proposals (ProposalNetwork): boxes, objectness logits as scores, classes all 0
  sem_seg    no detections (SemanticSegmentor): D = 0, counts all 0, exact all True
The tuple does not name its fields itself (two layouts can have as many tensors); `Fields`
does: Outputs.fields in the process, a package's metadata (`d2bench.outputs`,
`d2bench.answers`: build.metadata) for a loaded package. A detector's tuple without sem_seg
(every package made before sem_seg came) is still told by its length (`guess_fields`).

`slice_detections` turns the tuple into the flat per-image tuple every other backend returns:
each image's leading fields (boxes, scores, classes for instances; boxes and scores for
proposals; none for sem_seg), then the optional ones in name order (keypoint_heatmaps,
keypoints, masks, sem_seg, as detectron2's pred_* and sem_seg sort).

The precision is applied here, inside the forward: autocast to the run's dtype without its
weight cache (so that a CUDA graph or an exported program owns every cast), or nothing at fp32.
The backends that use this module own the precision (runner.backends: owns_precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FIELDS = ("boxes", "scores", "classes", "counts", "exact")
# the optional fields after FIELDS, each group present or absent as a whole, in this order
# (keypoints come as two)
OPTIONAL = (("masks",), ("keypoint_heatmaps", "keypoints"), ("sem_seg",))
# optional fields that hold one value per image, not one per detection slot
PER_IMAGE = ("sem_seg",)
# what the detections are -> the fields each image's flat answer starts with (the eager
# module's: runner.exported.Layout)
ANSWERS = {
    "instances": ("boxes", "scores", "classes"),
    "proposals": ("boxes", "scores"),
    "sem_seg": (),
}
VERSION = "1"


@dataclass(frozen=True)
class Fields:
    """What an Outputs tuple holds: FIELDS, then the `optional` fields (whole OPTIONAL groups,
    in OPTIONAL's order), and what its detections are (`answers`, an ANSWERS key)."""

    optional: tuple[str, ...] = ()
    answers: str = "instances"

    def __post_init__(self):
        if self.answers not in ANSWERS:
            raise ValueError(f"Fields.answers={self.answers!r}; one of {sorted(ANSWERS)}")
        ordered = tuple(n for group in OPTIONAL if set(group) & set(self.optional) for n in group)
        if tuple(self.optional) != ordered:
            raise ValueError(
                f"Fields.optional={tuple(self.optional)}: whole groups of {OPTIONAL}, in order"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The tuple's field names, in order."""
        return FIELDS + tuple(self.optional)

    def per_image(self) -> tuple[str, ...]:
        """The names of each image's part of the flat per-image tuple, in order."""
        return ANSWERS[self.answers] + tuple(sorted(self.optional))

    @classmethod
    def of_metadata(cls, meta: dict[str, str]) -> Fields:
        """The Fields a package's metadata names (build.metadata). Packages made before the
        `d2bench.answers` key answered instances."""
        names = tuple(meta["d2bench.outputs"].split(","))
        if names[: len(FIELDS)] != FIELDS:
            raise ValueError(f"d2bench.outputs={meta['d2bench.outputs']!r} does not start {FIELDS}")
        return cls(names[len(FIELDS) :], meta.get("d2bench.answers", "instances"))


class Outputs(nn.Module):
    """images -> (boxes, scores, classes, counts, exact[, masks][, keypoint_heatmaps,
    keypoints][, sem_seg]); see the module docstring. `fields` says which: the detector's own
    (detector.StaticDetector.fields), or, for a detector that declares none, plain instances."""

    def __init__(self, detector: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.detector = detector
        self.dtype = dtype  # None: no autocast (fp32)
        self.fields: Fields = getattr(detector, "fields", Fields())

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.dtype is None:
            slots = self.detector(*images)
        else:
            device = images[0].device.type
            with torch.autocast(device, dtype=self.dtype, cache_enabled=False):
                slots = self.detector(*images)
        counts = slots.valid.sum(dim=1)  # the valid slots are the first ones (slots.compact)
        flat = (slots.boxes, slots.scores, slots.classes, counts, slots.exact)
        for group in OPTIONAL:  # Python checks of what the detector built: no tensor is read
            for name in group:
                value = getattr(slots, name)
                if (value is not None) != (name in self.fields.optional):
                    raise ValueError(
                        f"Outputs: the detector declares {self.fields} but its slots "
                        f"{'have' if value is not None else 'lack'} {name}"
                    )
        return flat + tuple(getattr(slots, name) for name in self.fields.optional)


# the layouts a tuple's length told before sem_seg came: a detector's instances
COUNTED = (
    (),
    ("masks",),
    ("keypoint_heatmaps", "keypoints"),
    ("masks", "keypoint_heatmaps", "keypoints"),
)


def guess_fields(outputs: tuple) -> Fields:
    """The Fields of a tuple told by its length alone, as contract version 1 first told them: a
    detector's instances, with masks and/or keypoints (two extra fields are keypoints). Raises
    ValueError for a tuple that is not one of those (an extra field not per slot, such as a
    sem_seg map, or another length): give its Fields (Outputs.fields, Fields.of_metadata)."""
    extra = outputs[len(FIELDS) :]
    for optional in COUNTED:
        if len(optional) == len(extra):
            break
    else:
        raise ValueError(
            f"{len(outputs)} outputs are not an Outputs tuple of a detector: give its Fields"
        )
    slots = outputs[0].shape[1]
    if any(t.dim() < 2 or t.shape[1] != slots for t in extra):
        raise ValueError(
            f"outputs {[tuple(t.shape) for t in extra]} after {FIELDS} are not per detection "
            f"slot ({slots}), as {optional} would be: give the tuple's Fields"
        )
    return Fields(optional)


def slice_detections(
    outputs: tuple, counts: list[int], fields: Fields | None = None
) -> tuple[torch.Tensor, ...]:
    """Outputs with its `fields` and its counts (read back to the host) -> the flat per-image
    tuple of the eager module: per image, Fields.per_image of its valid slots (sem_seg whole).
    Without `fields`, a detector's tuple told by its length (guess_fields)."""
    fields = fields if fields is not None else guess_fields(outputs)
    named = dict(zip(fields.names, outputs, strict=True))
    flat: list[torch.Tensor] = []
    for i, count in enumerate(counts):
        for name in fields.per_image():
            flat.append(named[name][i] if name in PER_IMAGE else named[name][i, :count])
    return tuple(flat)
