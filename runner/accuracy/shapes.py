"""Shapes: a COCO-format instance-segmentation dataset that the project makes itself, since no
weights or datasets can be downloaded where it runs. Takes a seed and split sizes; writes
`<out>/<split>/NNNNNN.jpg` and `<out>/<split>.json` (COCO instances, masks as RLE) for each
split, and `<out>/shapes.json`, the arguments that made it.

    python -m runner.accuracy.shapes --out data/shapes --train 3000 --val 300 [--seed 0]

Every image is 480x640 (the seed's input size; --height/--width change it) and holds 2 to
`max_objects` shapes of six classes (circle, square, triangle, star, ring, cross), each with
a random size (16 to 220 px across, log-uniform: COCO's small, medium and large), rotation,
aspect and fill (a solid colour or stripes, kept apart from the background's colour), over one
of five backgrounds (solid, gradient, smooth noise, stripes, checks) with clutter lines that
are no object. Later shapes overlap earlier ones; a placement that would hide more than half
of an earlier shape is drawn again, so every annotated shape stays recognisable. Masks are
the visible pixels (occluded parts removed), boxes their bounds, exact: the masks are drawn,
not traced.

Deterministic by seed: each image draws from its own generator, seeded by (seed, split,
index), so the files are the same whatever the number of worker processes. The category ids
are 1..6 in CLASSES' order; a detectron2 model's class k (0-based) is category k + 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")
SPLITS = {"train": 0, "val": 1}  # split name -> its part of each image's seed
VERSION = 1  # bumped when the same seed would draw different images
SIZE_PX = (16.0, 220.0)  # a shape's size across (2 x its radius), log-uniform
MIN_AREA_PX = 40  # a placement whose visible part is smaller is drawn again
KEEP_VISIBLE = 0.5  # each earlier shape keeps at least this part of its area
PLACEMENT_TRIES = 20
MIN_CONTRAST = 80.0  # least L1 distance (0..765) between a fill and the colour behind it
JPEG_QUALITY = 92


# ---- outlines ------------------------------------------------------------------------------


def _circle(n: int = 64) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def outline(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """(polygon in unit coordinates, fill 1 or 0) parts of one shape, drawn in order: a ring is
    its outer circle, then its hole."""
    if name == "circle":
        return [(_circle(), 1)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8, 1)]
    if name == "triangle":
        angles = np.deg2rad([90, 210, 330]) + rng.uniform(-0.15, 0.15, 3)
        return [(np.stack([np.cos(angles), -np.sin(angles)], axis=1), 1)]
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1), 1)]
    if name == "ring":
        return [(_circle(), 1), (_circle() * rng.uniform(0.45, 0.65), 0)]
    if name == "cross":
        w = rng.uniform(0.25, 0.38)
        arm = [(w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w)]
        arm += [(-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w)]
        return [(np.array(arm, float), 1)]
    raise ValueError(f"no shape {name!r}; shapes: {', '.join(CLASSES)}")


def _placed(parts, radius: float, aspect: float, angle: float, centre) -> list:
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    placed = []
    for points, fill in parts:
        scaled = points * radius * np.array([aspect, 1.0 / aspect])
        placed.append((scaled @ rotation.T + np.asarray(centre), fill))
    return placed


def _mask(parts, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points, fill in parts:
        draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
    return np.asarray(canvas, dtype=bool)


# ---- colours and backgrounds ---------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """0..1 along a random direction, HxW."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * math.cos(angle) + y * math.sin(angle)
    return (t - t.min()) / max(float(t.max() - t.min()), 1.0)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """0 or 1 in stripes of a random period and direction, HxW."""
    period = rng.uniform(6, 40)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * math.cos(angle) + y * math.sin(angle)
    return ((t / period) % 1.0 < 0.5).astype(np.float32)


def _two_colours(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    return a + (b - a) * weight[..., None]


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One of five kinds of background, HxWx3 float32 in 0..255, with clutter lines."""
    from PIL import Image, ImageDraw

    kind = rng.integers(5)
    if kind == 0:
        image = np.broadcast_to(_colour(rng), (height, width, 3)).copy()
    elif kind == 1:
        image = _two_colours(_ramp(rng, height, width), rng)
    elif kind == 2:
        grid = (int(rng.integers(3, 12)), int(rng.integers(4, 16)), 3)
        cells = np.clip(_colour(rng) + rng.uniform(-70, 70, grid), 0, 255)
        small = Image.fromarray(cells.astype(np.uint8))
        image = np.asarray(small.resize((width, height), Image.BICUBIC), np.float32)
    elif kind == 3:
        image = _two_colours(_stripes(rng, height, width), rng)
    else:
        cell = int(rng.integers(12, 64))
        y, x = np.mgrid[0:height, 0:width]
        image = _two_colours((((y // cell) + (x // cell)) % 2).astype(np.float32), rng)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 8))):
        ends = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line(
            ends.tolist(), fill=tuple(int(c) for c in _colour(rng)), width=int(rng.integers(1, 4))
        )
    return np.asarray(canvas, np.float32)


def _fill(rng, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A fill for the shape: solid or striped colours, each far from the mean colour behind it."""
    behind = image[mask].mean(axis=0)
    colours = []
    for _ in range(2):
        for _ in range(50):
            colour = _colour(rng)
            if np.abs(colour - behind).sum() >= MIN_CONTRAST:
                break
        colours.append(colour)
    height, width = mask.shape
    if rng.uniform() < 0.7:
        return np.broadcast_to(colours[0], image.shape)
    weight = _stripes(rng, height, width)
    return colours[0] + (colours[1] - colours[0]) * weight[..., None]


# ---- one image -----------------------------------------------------------------------------


def draw_image(seed: int, split: str, index: int, height: int, width: int, max_objects: int):
    """One image: (HxWx3 uint8 RGB, [(category id, visible mask HxW bool), ...])."""
    rng = np.random.default_rng([VERSION, seed, SPLITS[split], index])
    image = background(rng, height, width)
    shapes: list[tuple[int, np.ndarray, int]] = []  # (category id, visible mask, drawn area)
    for _ in range(int(rng.integers(2, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        for _ in range(PLACEMENT_TRIES):
            radius = math.exp(rng.uniform(*np.log(SIZE_PX))) / 2
            aspect = rng.uniform(0.8, 1.25)
            centre = rng.uniform(0, 1, 2) * [width, height]
            parts = _placed(
                outline(CLASSES[cls], rng), radius, aspect, rng.uniform(0, 2 * np.pi), centre
            )
            mask = _mask(parts, height, width)
            area = int(mask.sum())
            hides = any(
                (visible & ~mask).sum() < KEEP_VISIBLE * drawn for _, visible, drawn in shapes
            )
            if area >= MIN_AREA_PX and not hides:
                break
        else:
            continue  # no placement found: one shape fewer
        image = np.where(mask[..., None], _fill(rng, image, mask), image)
        shapes = [(c, visible & ~mask, drawn) for c, visible, drawn in shapes]
        shapes.append((cls + 1, mask, area))
    noise = rng.normal(0, rng.uniform(0, 6), image.shape)
    pixels = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return pixels, [(category, visible) for category, visible, _ in shapes]


def _annotations(objects, image_id: int) -> list[dict]:
    from pycocotools import mask as mask_util

    annotations = []
    for category, visible in objects:
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        annotations.append(
            {
                "image_id": image_id,
                "category_id": category,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return annotations


def _write_one(task: tuple) -> tuple[dict, list[dict]]:
    out, seed, split, index, height, width, max_objects = task
    from PIL import Image

    pixels, objects = draw_image(seed, split, index, height, width, max_objects)
    name = f"{index:06d}.jpg"
    Image.fromarray(pixels).save(Path(out) / split / name, quality=JPEG_QUALITY)
    image = {"id": index + 1, "file_name": name, "height": height, "width": width}
    return image, _annotations(objects, index + 1)


# ---- a split, a dataset --------------------------------------------------------------------


def write_split(
    out: Path,
    split: str,
    count: int,
    seed: int = 0,
    height: int = 480,
    width: int = 640,
    max_objects: int = 12,
    workers: int = 1,
) -> Path:
    """Draw `count` images of `split` into out/split/ and write out/split.json; returns it."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; splits: {', '.join(SPLITS)}")
    (out / split).mkdir(parents=True, exist_ok=True)
    tasks = [(str(out), seed, split, i, height, width, max_objects) for i in range(count)]
    images, annotations = [], []
    started = last = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        for done, (image, found) in enumerate(pool.imap(_write_one, tasks, chunksize=8), 1):
            images.append(image)
            annotations += found
            if time.monotonic() - last > 10 or done == count:
                last = time.monotonic()
                log.info("shapes %s: %d/%d images, %.0f s", split, done, count, last - started)
    for number, annotation in enumerate(annotations, 1):
        annotation["id"] = number
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    coco = {
        "info": {"description": f"d2bench shapes v{VERSION}, seed {seed}, split {split}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = out / f"{split}.json"
    path.write_text(json.dumps(coco))
    return path


class _Serial:
    """The Pool interface in this process (workers=1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, tasks, chunksize=1):
        return map(fn, tasks)


def generate(
    out: Path,
    sizes: dict[str, int],
    seed: int = 0,
    height: int = 480,
    width: int = 640,
    max_objects: int = 12,
    workers: int = 1,
) -> dict[str, Path]:
    """Every split of `sizes` (split -> image count); returns split -> its annotation file."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        split: write_split(out, split, count, seed, height, width, max_objects, workers)
        for split, count in sizes.items()
        if count > 0
    }
    manifest = {
        "version": VERSION,
        "seed": seed,
        "sizes": sizes,
        "height": height,
        "width": width,
        "max_objects": max_objects,
        "classes": list(CLASSES),
    }
    (out / "shapes.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.accuracy.shapes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the dataset to")
    parser.add_argument("--train", type=int, default=3000, help="train images (0: none)")
    parser.add_argument("--val", type=int, default=300, help="val images (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--max-objects", type=int, default=12, help="most shapes per image")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    args = parser.parse_args(argv)
    problems = [
        f"--{name}={value}; must be >= {least}"
        for name, value, least in (
            ("train", args.train, 0),
            ("val", args.val, 0),
            ("height", args.height, 64),
            ("width", args.width, 64),
            ("max-objects", args.max_objects, 2),
            ("workers", args.workers, 1),
        )
        if value < least
    ]
    if problems:
        parser.error("; ".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    sizes = {"train": args.train, "val": args.val}
    made = generate(
        args.out, sizes, args.seed, args.height, args.width, args.max_objects, args.workers
    )
    log.info(
        "shapes: %s in %.0f s",
        ", ".join(f"{split} {sizes[split]} images -> {path}" for split, path in made.items()),
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
