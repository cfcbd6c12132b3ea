"""Letterbox: takes an image of any size and the run's input size; returns the image scaled to
fit that size (aspect ratio kept) at the top left, the rest filled with the models' mean
colour, and maps what a model found in that input back to the image's own coordinates.

Every backend sees the same letterboxed input, at the one size it was optimized and timed at:
graph backends keep their fixed shapes, and an image already of the input size passes through
unchanged (the generated set is 480x640, the seed's input). The fill is the ImageNet mean
colour, which detectron2's and torchvision's models subtract first: after normalisation the
padding is zero, as their own padding is.

Scales are per axis (the scaled size is rounded to whole pixels), so a mapping to the input
and back is exact: `to_input` and `boxes_to_image` are each other's inverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# the ImageNet mean colour (RGB, 0..255): detectron2's PIXEL_MEAN, torchvision's normalisation
FILL_RGB = (124, 116, 104)
MASK_THRESHOLD = 0.5  # a mask probability at or above this is the object (detectron2's paste)


@dataclass(frozen=True)
class Letterbox:
    """How one image of `height` x `width` sits in an input of `input_height` x `input_width`:
    scaled to `scaled_height` x `scaled_width` at the top left."""

    height: int
    width: int
    input_height: int
    input_width: int
    scaled_height: int
    scaled_width: int

    @property
    def scale_y(self) -> float:
        return self.scaled_height / self.height

    @property
    def scale_x(self) -> float:
        return self.scaled_width / self.width


def fit(height: int, width: int, input_height: int, input_width: int) -> Letterbox:
    """The letterbox of an image in the input: the largest scale at which it fits."""
    if min(height, width, input_height, input_width) < 1:
        raise ValueError(f"image {height}x{width} or input {input_height}x{input_width} is empty")
    scale = min(input_height / height, input_width / width)
    scaled_h = min(input_height, max(1, round(height * scale)))
    scaled_w = min(input_width, max(1, round(width * scale)))
    return Letterbox(height, width, input_height, input_width, scaled_h, scaled_w)


def apply(rgb: np.ndarray, box: Letterbox) -> np.ndarray:
    """The image (HxWx3 uint8) in the input: scaled (bilinear) at the top left, the rest
    FILL_RGB. An image of the input's size is returned as it is."""
    from PIL import Image

    if rgb.shape[:2] != (box.height, box.width):
        raise ValueError(f"image {rgb.shape[:2]} is not the letterbox's {box.height}x{box.width}")
    if (
        (box.scaled_height, box.scaled_width)
        == (box.height, box.width)
        == (
            box.input_height,
            box.input_width,
        )
    ):
        return rgb
    canvas = np.empty((box.input_height, box.input_width, 3), np.uint8)
    canvas[:] = FILL_RGB
    scaled = rgb
    if (box.scaled_height, box.scaled_width) != (box.height, box.width):
        size = (box.scaled_width, box.scaled_height)
        scaled = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    canvas[: box.scaled_height, : box.scaled_width] = scaled
    return canvas


def to_input(boxes: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """(N, 4) x1, y1, x2, y2 boxes from image to input coordinates."""
    scale = boxes.new_tensor([box.scale_x, box.scale_y, box.scale_x, box.scale_y])
    return boxes * scale


def boxes_to_image(boxes: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """(N, 4) boxes from input to image coordinates, clipped to the image."""
    scale = boxes.new_tensor([box.scale_x, box.scale_y, box.scale_x, box.scale_y])
    mapped = boxes.float() / scale
    limits = mapped.new_tensor([box.width, box.height, box.width, box.height])
    return torch.minimum(mapped.clamp(min=0), limits)


def keypoints_to_image(keypoints: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """(N, K, 2+) keypoints: x and y from input to image coordinates (other columns kept)."""
    mapped = keypoints.float().clone()
    mapped[..., 0] /= box.scale_x
    mapped[..., 1] /= box.scale_y
    return mapped


def masks_to_image(masks: torch.Tensor, image_boxes: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """(N, h, w) bool masks in image coordinates, from either kind of mask a model returns:
    masks of the whole input ((N, [1,] input H, input W): post-processed detectron2, torchvision),
    cropped to the scaled image and resized to it; or per-box masks ((N, [1,] M, M): detectron2
    without post-processing), pasted into their boxes (already in image coordinates,
    `image_boxes`) as detectron2's paste_masks_in_image does. Probabilities are thresholded at
    MASK_THRESHOLD."""
    masks = masks.reshape(masks.shape[0], *masks.shape[-2:]).float()
    if tuple(masks.shape[-2:]) == (box.input_height, box.input_width):
        inside = masks[:, : box.scaled_height, : box.scaled_width]
        if (box.scaled_height, box.scaled_width) != (box.height, box.width) and len(inside):
            size = (box.height, box.width)
            inside = F.interpolate(inside[:, None], size=size, mode="bilinear")[:, 0]
        return inside >= MASK_THRESHOLD
    return paste(masks, image_boxes, box.height, box.width)


def paste(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, M, M) mask probabilities pasted into their (N, 4) boxes on an image of height x width:
    bilinear sampling at each pixel centre inside the box (detectron2's _do_paste_mask), over
    the box's own pixels only. Returns (N, height, width) bool."""
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6)
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6)
        grid = torch.stack(
            [
                (xs * 2 - 1)[None, :].expand(len(ys), len(xs)),
                (ys * 2 - 1)[:, None].expand(len(ys), len(xs)),
            ],
            dim=-1,
        )
        sampled = F.grid_sample(masks[i][None, None], grid[None], align_corners=False)
        out[i, top:bottom, left:right] = sampled[0, 0] >= MASK_THRESHOLD
    return out
