"""The exported form of a model, shared by the run (runner.run) and the parts it uses: the model
families, which wrap their models into it, and the backends, which optimize it. Takes a family's
wrapped module; holds an `Exported`: an eager module with tensor-only I/O that a backend can
optimize, the means to turn it into TorchScript, the decoding of its outputs into per-image
`Detections`, and how two images' Detections pair up (`box_iou`, `match`: parity's matching,
which a package's check against its forward uses too).

Every module made here has the same calling convention: ``module(*images)`` with one CHW tensor
per image returns a flat tuple of tensors, the same fields for every image: every field the model
returns, boxes, scores and classes first (where the model detects objects), then the others sorted
by the family's name for them (detectron2: pred_keypoint_heatmaps, pred_keypoints, pred_masks,
sem_seg; torchvision: keypoints, keypoints_scores, masks). A model that returns no instances
(detectron2's SemanticSegmentor) has only its other fields; one that returns class-less boxes
(proposals) has boxes and scores, and decodes with every class 0. The eager module records those
names in the `Layout` when it runs (the parity reference runs it first); `decode` reads them back.
Each family wraps its own models the way it supports (runner.families: `wrap`, which
runner.run.export calls) and names their output fields (`RENAMES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from runner import families

LEADING = ("boxes", "scores", "classes")  # the Detections names that come first, in this order
# the leading names a model's instances need: boxes and scores (classes default to 0: proposals)
REQUIRED = ("boxes", "scores")


@dataclass
class Panoptic:
    """One image's panoptic segmentation: a segment id per pixel (0: no segment) and, per
    segment, its id, category and whether it is a thing (an instance) or stuff."""

    segments: torch.Tensor  # (H, W) int64 segment ids
    ids: torch.Tensor  # (S,) int64
    categories: torch.Tensor  # (S,) int64
    isthing: torch.Tensor  # (S,) bool


@dataclass
class Detections:
    """One image's answer, as parity (runner.run.parity) compares it: its detections (instances
    or proposals), and the segmentations of models that make them."""

    boxes: torch.Tensor  # (N, 4) x1, y1, x2, y2
    scores: torch.Tensor  # (N,)
    classes: torch.Tensor  # (N,) int64
    masks: torch.Tensor | None = None  # (N, [1,] h, w) probabilities or booleans
    keypoints: torch.Tensor | None = None  # (N, K, 2) x, y
    # every other per-detection output, by name (the family names them): no figure compares
    # these, so they are listed as unchecked
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    instances: bool = True  # False: the model returns no detections (boxes etc. are empty)
    sem_seg: torch.Tensor | None = None  # (C, H, W) per-class scores (logits) of every pixel
    panoptic: Panoptic | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def match(ref: Detections, out: Detections, match_iou: float) -> list[tuple[int, int, float]]:
    """Greedy same-class matching; returns (reference index, output index, IoU) triples: each
    reference detection, best score first, takes the untaken output detection of its class
    with the highest IoU, if that is at least `match_iou`. Parity's figures
    (runner.run.parity) and a package's check against its forward (aot_package.agreement)
    match this way."""
    if len(ref) == 0 or len(out) == 0:
        return []
    iou = box_iou(ref.boxes, out.boxes)
    iou[ref.classes[:, None] != out.classes[None, :]] = -1.0
    taken = torch.zeros(len(out), dtype=torch.bool)
    pairs = []
    for r in torch.argsort(ref.scores, descending=True, stable=True).tolist():
        candidates = iou[r].masked_fill(taken, -1.0)
        best = int(torch.argmax(candidates))
        if float(candidates[best]) >= match_iou:
            taken[best] = True
            pairs.append((r, best, float(candidates[best])))
    return pairs


class Layout:
    """The family's field names of one image's part of the flat output, in order; recorded by
    the flattening code whenever it runs in Python (eager, while tracing or scripting's Python
    side), never inside torch.compile's tracing (that would be a side effect in the graph)."""

    def __init__(self, family: str, names: tuple[str, ...] = ()):
        self.family = family
        self.names = tuple(names)

    def ordered(self, names) -> list[str]:
        """`names` in flat-output order: the leading ones it has, then the rest sorted. Boxes
        come with scores (classes may be absent); a field list without any (segmentation
        only) is whole."""
        renames = families.get(self.family).RENAMES
        first = {renames.get(n, n): n for n in names if renames.get(n, n) in LEADING}
        missing = [name for name in REQUIRED if name not in first]
        if first and missing:
            raise ValueError(f"{self.family} output has no {missing} (fields: {sorted(names)})")
        if not names:
            raise ValueError(f"{self.family} output has no fields")
        leading = [first[n] for n in LEADING if n in first]
        return leading + sorted(n for n in names if n not in first.values())

    def record(self, names: list[str]) -> None:
        if torch.compiler.is_compiling():
            return
        if self.names and tuple(names) != self.names:
            raise ValueError(f"output fields changed from {self.names} to {tuple(names)}")
        self.names = tuple(names)


def _as_tensor(name: str, value) -> torch.Tensor:
    value = getattr(value, "tensor", value)  # detectron2 Boxes
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"output field {name!r} is a {type(value).__name__}, not a tensor")
    return value


def flatten(layout: Layout, results: list[dict]) -> tuple[torch.Tensor, ...]:
    """Per-image field dicts -> the flat tuple, every field of every image, in layout order."""
    flat: list[torch.Tensor] = []
    for i, fields in enumerate(results):
        names = layout.ordered(fields)
        if i == 0:
            layout.record(names)
        flat += [_as_tensor(name, fields[name]) for name in names]
    return tuple(flat)


@dataclass
class Exported:
    module: nn.Module  # eager, tensor-only I/O
    model: nn.Module  # the detector inside `module`, for backends that rework its parts
    method: str  # trace | script
    example: tuple[torch.Tensor, ...]
    make_torchscript: Callable[[], torch.jit.ScriptModule]
    layout: Layout | None = None
    # a Python step per decoded image, after the call (not timed): detectron2's Panoptic FPN
    # combines its instances and sem_seg into panoptic_seg here, as its own inference does
    after: Callable[[Detections], Detections] | None = None

    @property
    def family(self) -> str:
        """The model family (runner.families) whose model this is."""
        return self.layout.family if self.layout is not None else ""

    def to_torchscript(self) -> torch.jit.ScriptModule:
        return self.make_torchscript()

    def decode(self, flat: tuple[torch.Tensor, ...], batch: int) -> list[Detections]:
        """Split a flat output tuple into one Detections per image (on the CPU)."""
        names = self.layout.names if self.layout is not None else ()
        if not names:
            raise ValueError("decode before the eager module ran: the output layout is unknown")
        if len(flat) != batch * len(names):
            raise ValueError(
                f"{len(flat)} output tensors do not split into {batch} images of "
                f"{len(names)} fields {names}"
            )
        per_image = len(names)
        decoded = [
            detections(self.layout.family, names, flat[i * per_image : (i + 1) * per_image])
            for i in range(batch)
        ]
        return decoded if self.after is None else [self.after(d) for d in decoded]


def detections(family: str, names: tuple[str, ...], parts) -> Detections:
    """One image's output tensors, named by the family, as Detections. Keypoints keep x and y;
    their third column is detectron2's per-keypoint score (to `extra` as keypoint_scores) or
    torchvision's visibility flag, which torchvision sets to 1 for every keypoint (dropped).
    Boxes without classes (proposals) are all of class 0; an answer without boxes (semantic
    segmentation) has no instances."""
    own = families.get(family)
    fields = {}
    for name, tensor in zip(names, parts, strict=True):
        fields[own.RENAMES.get(name, name)] = tensor.detach().float().cpu()
    keypoints = fields.pop("keypoints", None)
    if keypoints is not None:
        if own.KEYPOINT_SCORES:
            fields["keypoint_scores"] = keypoints[..., 2]
        keypoints = keypoints[..., :2]
    instances = "boxes" in fields
    boxes = fields.pop("boxes", torch.zeros(0, 4)).reshape(-1, 4)
    scores = fields.pop("scores", torch.zeros(0)).reshape(-1)
    classes = fields.pop("classes", None)
    classes = torch.zeros(len(scores)) if classes is None else classes
    masks, sem_seg = fields.pop("masks", None), fields.pop("sem_seg", None)
    return Detections(
        boxes=boxes,
        scores=scores,
        classes=classes.reshape(-1).long(),
        masks=masks,
        keypoints=keypoints,
        extra=fields,
        instances=instances,
        sem_seg=sem_seg,
    )


def traced(
    module: nn.Module, model: nn.Module, example: tuple[torch.Tensor, ...], layout: Layout
) -> Exported:
    """Exported whose TorchScript form is `module` traced on `example`."""

    def trace():
        return torch.jit.trace(module, example, check_trace=False)

    return Exported(module, model, "trace", example, trace, layout)
