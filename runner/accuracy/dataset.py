"""Dataset: takes the run's DatasetConfig (conf/dataset/); returns the COCO-format dataset it
names, checked: its ground truth (pycocotools' COCO), the images the pass covers, each read as
RGB, and how a model's class indices map to the dataset's category ids.

    check(cfg)       ValueError, one line, for a dataset the pass cannot use (preflight asks)
    open_dataset(cfg)  the Dataset
    label            what the row's accuracy_dataset says: name, file, content digest

Class indices (`dataset.class_map`): `contiguous` numbers the dataset's categories in id order
from the model's first class (detectron2: class 0 is the first category; torchvision: 1, its 0
is the background), as detectron2's own COCO loader does; `category_id` takes a model's class
index as the category id itself (torchvision's COCO-trained detectors). A detection of a class
the dataset does not have is dropped (COCOeval would ignore it too) and counted in the log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runner.config import NO_DATASET

log = logging.getLogger(__name__)

PYCOCOTOOLS = "the accuracy pass needs pycocotools: pip install pycocotools"


def paths(cfg) -> tuple[Path, Path]:
    """(annotation file, image folder) of a DatasetConfig, relative to its root."""
    root = Path(cfg.root) if cfg.root else Path()
    return root / cfg.annotations, root / cfg.images


def check(cfg) -> None:
    """ValueError for a dataset the pass cannot use: pycocotools absent, files missing, a JSON
    that is not COCO instances, an image folder that lacks its first image."""
    if cfg.name == NO_DATASET:
        return
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise ValueError(f"dataset={cfg.name}: {PYCOCOTOOLS}") from None
    annotations, images = paths(cfg)
    if not annotations.is_file():
        raise ValueError(f"dataset.annotations={annotations}: no such file{_hint(cfg)}")
    if not images.is_dir():
        raise ValueError(f"dataset.images={images}: no such folder{_hint(cfg)}")
    stat = annotations.stat()
    error = _annotations_error(str(annotations.resolve()), stat.st_mtime_ns, stat.st_size)
    if error:
        raise ValueError(error)
    first = _first_image(str(annotations.resolve()), stat.st_mtime_ns, stat.st_size)
    if not (images / first).is_file():
        raise ValueError(f"dataset.images={images}: has no {first}, the annotations' first image")


def _hint(cfg) -> str:
    if cfg.name == "generated":
        return " (make it: python -m runner.accuracy.shapes --out data/shapes)"
    return ""


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> dict:
    with open(path, "rb") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=8)
def _annotations_error(path: str, mtime_ns: int, size: int) -> str:
    """Why the file is no COCO instances file, or ''; read once per file and version."""
    try:
        data = _read(path, mtime_ns, size)
    except (OSError, ValueError) as error:
        return f"dataset.annotations={path}: not readable JSON ({error})"
    missing = [
        key
        for key in ("images", "annotations", "categories")
        if not isinstance(data, dict) or not isinstance(data.get(key), list)
    ]
    if missing:
        return f"dataset.annotations={path}: not COCO instances (no list {', '.join(missing)})"
    if not data["images"] or not data["categories"]:
        return f"dataset.annotations={path}: has no images or no categories"
    return ""


@functools.lru_cache(maxsize=8)
def _first_image(path: str, mtime_ns: int, size: int) -> str:
    images = _read(path, mtime_ns, size)["images"]
    return min(images, key=lambda image: image["id"])["file_name"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Dataset:
    """A COCO-format dataset, opened: its ground truth and the images the pass covers."""

    name: str
    annotations: Path
    images: Path
    ground_truth: object  # pycocotools.coco.COCO
    image_ids: list[int]  # the pass's images, in id order
    category_ids: list[int]  # every category, in id order
    class_map: str
    label: str = ""
    dropped: dict[int, int] = field(default_factory=dict)  # class index -> detections dropped

    def image_info(self, image_id: int) -> dict:
        return self.ground_truth.imgs[image_id]

    def read_rgb(self, image_id: int) -> np.ndarray:
        """The image as HxWx3 uint8 RGB; ValueError naming it where unreadable or not the size
        the annotations give."""
        from PIL import Image, UnidentifiedImageError

        info = self.image_info(image_id)
        path = self.images / info["file_name"]
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"dataset image {path}: not readable ({error})") from error
        if rgb.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"dataset image {path}: {rgb.shape[0]}x{rgb.shape[1]}, the annotations say "
                f"{info['height']}x{info['width']}"
            )
        return rgb

    def categories(self, classes: np.ndarray, first_class: int) -> tuple[np.ndarray, np.ndarray]:
        """(category ids, kept) for a model's class indices: `kept` is False where the dataset
        has no category for the class (such detections are dropped and counted)."""
        classes = np.asarray(classes, dtype=np.int64)
        if self.class_map == "category_id":
            known = np.isin(classes, self.category_ids)
            ids = classes
        else:
            index = classes - first_class
            known = (index >= 0) & (index < len(self.category_ids))
            ids = np.asarray(self.category_ids)[np.clip(index, 0, len(self.category_ids) - 1)]
        for cls in classes[~known].tolist():
            self.dropped[cls] = self.dropped.get(cls, 0) + 1
        return ids[known], known


def open_dataset(cfg) -> Dataset:
    """The dataset a DatasetConfig names (check() first), its ground truth loaded."""
    from pycocotools.coco import COCO

    from runner.accuracy.coco import quiet

    check(cfg)
    annotations, images = paths(cfg)
    with quiet():
        ground_truth = COCO(str(annotations))
    ids = sorted(ground_truth.getImgIds())
    if cfg.max_images:
        ids = ids[: cfg.max_images]
    label = f"{cfg.name}:{annotations.name}@sha256:{sha256(annotations)[:12]}"
    log.info(
        "dataset %s: %d of %d images, %d categories, %s",
        label,
        len(ids),
        len(ground_truth.getImgIds()),
        len(ground_truth.getCatIds()),
        images,
    )
    return Dataset(
        name=cfg.name,
        annotations=annotations,
        images=images,
        ground_truth=ground_truth,
        image_ids=ids,
        category_ids=sorted(ground_truth.getCatIds()),
        class_map=cfg.class_map,
        label=label,
    )
