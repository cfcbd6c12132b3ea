"""Canvas: takes a detectron2 head that is shared by the pyramid levels (RetinaNet's, FCOS's, the
RPN's) and returns the same head run once over all levels (static_graph's option `fuse_levels`):
the levels' feature maps [N, C, H_l, W_l] laid out in one zero canvas [N, C, Hc, Wc], each of the
head's layers applied once to the canvas, and each level's outputs sliced back out (views) in
the head's own return structure, so that the code after the head sees what the per-level head
returned. A head of 10 convolutions over 5 levels makes 10 convolution calls instead of 50.

Why the answers are the same: a k x k convolution with zero padding (k - 1) / 2 reads, at each
pixel of a level, that pixel's window, with zeros outside the level. On the canvas every level
has `gap` zero rows and columns (at least the widest window's radius) between it and the next
level and the canvas's edge, so a level pixel's window holds the same level pixels and, outside
the level, separator pixels: zeros, as long as they are zero in the input. A convolution's bias
and a norm's shift make them non-zero, so before each convolution wider than 1x1 that reads
such an output, they are set back to zero (`torch.where` with the canvas's level mask, made once
per layout). Pointwise layers (ReLU, FrozenBatchNorm2d, BatchNorm2d at inference) act on each
pixel alone. Norms that pool over pixels would mix the levels (GroupNorm normalises each sample
over all of a level's pixels; detectron2's CycleBatchNormList keeps one BatchNorm per level): a
head with one runs per level as before, and the backend's notes say why; so does a head whose
class has no plan here (`HEADS`).

The layout depends only on the levels' shapes: it is computed in Python from them (`layout`), once
per shape set, so that inside a CUDA graph and under torch.export every slice is a constant. The
packing: the largest level at the top left, the others top-down in columns as tall as the tallest
level, to its right. At the seed's 480x640 input, RetinaNet's P3-P7 (60x80, 30x40, 15x20, 8x10,
4x5: 6400 pixels) lie on a 62x123 canvas of 7626 pixels, 1.19 times the levels'; the RPN's P2-P6
of Mask R-CNN FPN (120x160 down to 8x10: 25580 pixels) on a 122x243 canvas of 29646 pixels, 1.16
times theirs. That is the extra convolution work, against 5 times fewer launches.

    layout(shapes, gap)           level shapes -> Layout: the canvas's size, each level's place
    pack, unpack, level_mask      levels -> canvas -> levels (views); where the levels lie
    plan(head, branches)          a head's layers as Steps, or NotFusable with the reason
    FusedHead                     a head's branches run once over the canvas (same outputs)
    HEADS, fuse_levels(model)     the heads with a plan (by class name); each shared head of a
                                  model replaced by its FusedHead, and the note that says which
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class Layout:
    """Where each level lies on the canvas: `places[i]` is level i's (top, left), `shapes[i]`
    its (height, width); the canvas is `height` x `width`."""

    height: int
    width: int
    places: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, int], ...]

    @property
    def overhead(self) -> float:
        """The canvas's pixels over the levels' (1.0 would be no extra work)."""
        return self.height * self.width / sum(h * w for h, w in self.shapes)


def layout(shapes, gap: int = 1) -> Layout:
    """The canvas of levels of `shapes` ((height, width) each) with `gap` zero rows and columns
    between any two levels and between each level and the canvas's edge. The largest level
    (by area; the first of equals) goes to the top left; the others, largest first, top-down in
    columns as tall as the tallest level, each column to the right of the last."""
    shapes = tuple((int(h), int(w)) for h, w in shapes)
    if not shapes or gap < 0 or any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"canvas.layout: levels {list(shapes)}, gap {gap}")
    order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1])
    tallest = max(h for h, _ in shapes)
    places: dict[int, tuple[int, int]] = {order[0]: (gap, gap)}
    left = gap + shapes[order[0]][1] + gap  # the next column's left edge
    top, column_width = gap, 0
    for i in order[1:]:
        h, w = shapes[i]
        if top > gap and top + h > gap + tallest:  # this column is full: start the next
            left, top, column_width = left + column_width + gap, gap, 0
        places[i] = (top, left)
        top += h + gap
        column_width = max(column_width, w)
    width = left + column_width + gap if column_width else left
    return Layout(gap + tallest + gap, width, tuple(places[i] for i in range(len(shapes))), shapes)


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def pack(levels: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """Levels [N, C, H_l, W_l] (one N, C, dtype and device) -> the zero canvas [N, C, Hc, Wc]
    with each level at its place, in the first level's memory format (NHWC stays NHWC)."""
    first = levels[0]
    n, c = first.shape[:2]
    memory_format = torch.channels_last if _channels_last(first) else torch.contiguous_format
    canvas = torch.empty(
        (n, c, layout.height, layout.width),
        dtype=first.dtype,
        device=first.device,
        memory_format=memory_format,
    ).zero_()
    for level, (top, left), (h, w) in zip(levels, layout.places, layout.shapes, strict=True):
        canvas[:, :, top : top + h, left : left + w] = level
    return canvas


def unpack(canvas: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """The canvas's levels, as views [N, C', H_l, W_l] (any channel count C')."""
    return [
        canvas[:, :, top : top + h, left : left + w]
        for (top, left), (h, w) in zip(layout.places, layout.shapes, strict=True)
    ]


def level_mask(layout: Layout, device) -> torch.Tensor:
    """[1, 1, Hc, Wc] bool: True on the levels' pixels, False on the separators."""
    mask = torch.zeros((1, 1, layout.height, layout.width), dtype=torch.bool, device=device)
    for (top, left), (h, w) in zip(layout.places, layout.shapes, strict=True):
        mask[:, :, top : top + h, left : left + w] = True
    return mask


# --- a head's layers, checked: each must read a window of zeros outside its level ----------


class NotFusable(Exception):
    """A head whose layers cannot run on a canvas; the message says which layer and why."""


@dataclass(frozen=True)
class Step:
    path: str  # the layer's submodule path in the head
    radius: int  # how far its window reaches from a pixel (0: the pixel alone)
    stains: bool  # whether it can make separator pixels non-zero (bias, a norm's shift)
    convolution: bool = False


@dataclass(frozen=True)
class Branch:
    """One tower of a head: `trunk` (a submodule path: a Sequential of layers, or one layer)
    applied in turn, then each of `outputs` (convolutions) on the trunk's result."""

    trunk: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    trunks: tuple[tuple[Step, ...], ...]  # per branch, its trunk's layers in order
    outputs: tuple[tuple[Step, ...], ...]  # per branch, its output convolutions
    gap: int  # the separators' width: the widest window's radius, at least 1

    @property
    def convolutions(self) -> int:
        """Convolution calls of one pass (over the canvas, or over one level)."""
        return sum(s.convolution for group in self.trunks + self.outputs for s in group)


_KEEP_ZERO = (nn.ReLU, nn.Identity)  # f(0) = 0, pixel by pixel


def _pointwise(path: str, module) -> Step:
    """A layer that acts on each pixel alone, or NotFusable naming it."""
    if isinstance(module, _KEEP_ZERO):
        return Step(path, 0, False)
    name = type(module).__name__
    if name == "FrozenBatchNorm2d" or (
        isinstance(module, nn.BatchNorm2d)
        and not module.training
        and module.running_mean is not None
    ):
        return Step(path, 0, True)  # per channel x * scale + shift: 0 becomes the shift
    if isinstance(module, nn.GroupNorm):
        why = "normalises each sample over all of a level's pixels"
    elif name == "CycleBatchNormList":
        why = "keeps one BatchNorm per level, taken in turn"
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        why = "normalises with batch statistics or over the batch's pixels"
    else:
        why = "is not known to act on each pixel alone"
    raise NotFusable(f"{path} ({name}) {why}")


def _convolution(path: str, conv: nn.Conv2d) -> Step:
    """A stride-1 convolution with zero padding of half its odd kernel (the window a level
    pixel reads is centred on it), or NotFusable naming it. detectron2's Conv2d may carry a
    norm and an activation, checked as pointwise layers."""
    kh, kw = conv.kernel_size
    centred = conv.padding == (kh // 2, kw // 2) or (conv.padding == "same")
    if not (
        conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and kh % 2 == 1
        and kw % 2 == 1
        and centred
    ):
        raise NotFusable(
            f"{path} (Conv2d kernel {conv.kernel_size}, stride {conv.stride}, padding "
            f"{conv.padding}, dilation {conv.dilation}, {conv.padding_mode}) is not a "
            "stride-1 convolution zero-padded by half its odd kernel"
        )
    norm = getattr(conv, "norm", None)
    if norm is not None:
        _pointwise(f"{path}.norm", norm)
    activation = getattr(conv, "activation", None)
    if activation is not None and not (
        isinstance(activation, _KEEP_ZERO) or activation in (F.relu, torch.relu)
    ):
        raise NotFusable(f"{path}.activation ({activation!r}) is not a ReLU")
    return Step(path, max(kh, kw) // 2, True, convolution=True)


def _layers(head: nn.Module, path: str) -> tuple[Step, ...]:
    """The layers under `path`, in the order a Sequential calls them."""
    module = head.get_submodule(path)
    if isinstance(module, nn.Sequential):
        return tuple(
            s for name, _ in module.named_children() for s in _layers(head, f"{path}.{name}")
        )
    if isinstance(module, nn.Conv2d):
        return (_convolution(path, module),)
    return (_pointwise(path, module),)


def plan(head: nn.Module, branches) -> Plan:
    """`head`'s `branches` (Branch) as checked Steps; NotFusable, naming the layer, where one
    would read across levels on a canvas."""
    trunks, outputs = [], []
    for branch in branches:
        trunks.append(_layers(head, branch.trunk))
        convolutions = []
        for path in branch.outputs:
            module = head.get_submodule(path)
            if not isinstance(module, nn.Conv2d):
                raise NotFusable(f"{path} ({type(module).__name__}) is not a convolution")
            convolutions.append(_convolution(path, module))
        outputs.append(tuple(convolutions))
    radius = max(step.radius for group in trunks + outputs for step in group)
    return Plan(tuple(trunks), tuple(outputs), max(radius, 1))


# --- the head over the canvas --------------------------------------------------------------


class FusedHead(nn.Module):
    """`head` run once over a canvas of its levels, as `plan` lays its layers out; answers as
    `head(features)` does: a tuple with, for each output convolution in the branches' order, the
    list of its per-level outputs (views of its canvas). `head` stays a submodule, so its
    weights, their dtype and memory format are the model's. Levels that differ in batch,
    channels, dtype or device go through `head` itself."""

    def __init__(self, head: nn.Module, plan: Plan):
        super().__init__()
        self.head = head
        self.plan = plan
        # level shapes and device -> (Layout, level mask); made at the first call of a shape
        # set, outside any graph (as the anchors are: proposals.Anchors)
        self.layouts: dict = {}

    def forward(self, features):
        features = list(features)
        if len({(tuple(f.shape[:2]), f.dtype, f.device) for f in features}) != 1:
            return self.head(features)
        arrangement, inside = self._layout(features)
        canvas = pack(features, arrangement)
        answers = []
        for trunk, outputs in zip(self.plan.trunks, self.plan.outputs, strict=True):
            x, stained = canvas, False
            for step in trunk:
                if step.radius and stained:
                    x, stained = torch.where(inside, x, 0.0), False
                x = self.head.get_submodule(step.path)(x)
                stained = stained or step.stains
            if stained and any(step.radius for step in outputs):
                x = torch.where(inside, x, 0.0)
            for step in outputs:
                answers.append(unpack(self.head.get_submodule(step.path)(x), arrangement))
        return tuple(answers)

    def _layout(self, features: list[torch.Tensor]) -> tuple[Layout, torch.Tensor]:
        device = features[0].device
        key = (tuple(tuple(int(s) for s in f.shape[-2:]) for f in features), device)
        made = self.layouts.get(key)
        if made is None:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("static_graph: a canvas must be laid out before graph capture")
            arrangement = layout(key[0], self.plan.gap)
            made = (arrangement, level_mask(arrangement, device))
            if type(made[1]) is torch.Tensor:  # not a tracer's stand-in (torch.export)
                self.layouts[key] = made
        return made

    def describe(self, levels: int) -> str:
        """What one call does, for the backend's notes."""
        convolutions = self.plan.convolutions
        said = f"fused: {convolutions} conv calls instead of {convolutions * levels}"
        for arrangement, _ in self.layouts.values():
            pixels = sum(h * w for h, w in arrangement.shapes)
            said += (
                f", canvas {arrangement.height}x{arrangement.width} for {pixels} level pixels "
                f"({arrangement.overhead:.2f}x)"
            )
        return said


# head class -> its branches, in the order of the head's outputs. Exact class names only: a
# subclass may change what forward does (FCOSHead is a RetinaNetHead with a third output).
HEADS = {
    # RetinaNetHead.forward, per level: cls_score(cls_subnet(x)), bbox_pred(bbox_subnet(x))
    "RetinaNetHead": (
        Branch("cls_subnet", ("cls_score",)),
        Branch("bbox_subnet", ("bbox_pred",)),
    ),
    # FCOSHead.forward: RetinaNet's, and ctrness on the bbox subnet's output
    "FCOSHead": (
        Branch("cls_subnet", ("cls_score",)),
        Branch("bbox_subnet", ("bbox_pred", "ctrness")),
    ),
    # StandardRPNHead.forward: t = conv(x) (detectron2's Conv2d with its ReLU, or a Sequential
    # of them), then objectness_logits(t) and anchor_deltas(t), 1x1 each
    "StandardRPNHead": (Branch("conv", ("objectness_logits", "anchor_deltas")),),
}

# where a detectron2 model keeps a head shared by its levels -> where it keeps those levels' names
PLACES = {
    "head": "head_in_features",  # RetinaNet, FCOS
    "proposal_generator.rpn_head": "proposal_generator.in_features",  # the RPN of R-CNNs
}


def _find(model: nn.Module, dotted: str):
    value = model
    for name in dotted.split("."):
        value = getattr(value, name, None)
    return value


class Fusion:
    """What fuse_levels did to a model's heads, for the backend's notes: read when the row is
    written, so a fused head's canvases (laid out at its first calls) are in it."""

    def __init__(self):
        self.heads: list[tuple[str, str, int, FusedHead | str]] = []  # place, class, levels, done

    def __str__(self) -> str:
        if not self.heads:
            return "fuse_levels: no head shared by levels"
        said = [
            f"{place} {kind} "
            + (done.describe(levels) if isinstance(done, FusedHead) else f"per level: {done}")
            for place, kind, levels, done in self.heads
        ]
        return "fuse_levels: " + ", ".join(said)


def fuse_levels(model: nn.Module) -> Fusion:
    """Replace, in place, each head of `model` at PLACES whose class HEADS plans and whose
    layers pass `plan` by its FusedHead; every other head stays as it is and runs per level.
    Returns what was done (Fusion: the backend's note)."""
    fusion = Fusion()
    for place, names in PLACES.items():
        parent_path, _, attribute = place.rpartition(".")
        parent = _find(model, parent_path) if parent_path else model
        head = getattr(parent, attribute, None)
        if not isinstance(head, nn.Module):
            continue
        kind, levels = type(head).__name__, len(_find(model, names) or ())
        branches = HEADS.get(kind)
        if levels < 2:
            fusion.heads.append((place, kind, levels, "one level, nothing to fuse"))
            continue
        if branches is None:
            covered = ", ".join(sorted(HEADS))
            fusion.heads.append((place, kind, levels, f"no canvas plan (covered: {covered})"))
            continue
        try:
            fused = FusedHead(head, plan(head, branches))
        except NotFusable as why:
            fusion.heads.append((place, kind, levels, str(why)))
            continue
        setattr(parent, attribute, fused)
        fusion.heads.append((place, kind, levels, fused))
    return fusion
