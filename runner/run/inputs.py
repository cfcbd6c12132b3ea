"""Inputs: takes the run's config, returns the images the model is called with, at the opt size
and, for dynamic shapes, at the min and max sizes, each a tuple of `batch` tensors on the device.

The picture is a real photo (matplotlib's sample grace_hopper.jpg unless inputs.image names
another), resized to cover the target size and centre-cropped, so the aspect ratio is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runner import families
from runner.config import Config


@dataclass
class InputSet:
    """Images per shape name ('opt', and 'min'/'max' when shapes are dynamic)."""

    images: dict[str, tuple[torch.Tensor, ...]]

    @property
    def shapes(self) -> list[str]:
        return list(self.images)

    def hw(self, shape: str) -> str:
        h, w = self.images[shape][0].shape[-2:]
        return f"{h}x{w}"


def default_photo() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_photo(path: str | Path | None) -> np.ndarray:
    """The photo as an HxWx3 uint8 RGB array. Raises ValueError for unreadable files."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path) if path is not None else default_photo()
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"inputs.image={path}: not a readable image ({error})") from error


def cover_and_crop(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the photo covers height x width, then crop the centre. Returns uint8 RGB."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top : top + height, left : left + width]


def to_tensor(rgb: np.ndarray, family: str) -> torch.Tensor:
    order, scale = families.get(family).PIXELS  # how the family wants its pixels
    pixels = rgb[:, :, ::-1] if order == "BGR" else rgb
    chw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
    return chw * (scale / 255.0)


def target_sizes(cfg: Config) -> dict[str, tuple[int, int]]:
    h, w = cfg.inputs.height, cfg.inputs.width
    sizes = {"opt": (h, w)}
    if cfg.shapes.dynamic:
        for name, scale in (("min", cfg.shapes.min_scale), ("max", cfg.shapes.max_scale)):
            sizes[name] = (max(32, round(h * scale)), max(32, round(w * scale)))
    return sizes


def make(cfg: Config, device: torch.device) -> InputSet:
    photo = load_photo(cfg.inputs.image)
    images = {}
    for name, (h, w) in target_sizes(cfg).items():
        image = to_tensor(cover_and_crop(photo, h, w), cfg.model.family).to(device)
        images[name] = tuple(image.clone() for _ in range(cfg.batch))
    return InputSet(images)
