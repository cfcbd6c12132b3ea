"""COCO: takes one image's predictions in its own coordinates and a COCO-format ground truth;
returns COCO result records (boxes as x, y, w, h; masks as RLE; keypoints as x, y, v triples)
and the figures pycocotools' COCOeval computes from them: never an AP of our own.

Figures per kind (box: iouType "bbox", mask: "segm", keypoint: "keypoints"): `ap`, COCO's
AP averaged over IoU 0.50:0.95 (stats[0]), and `ap50`, at IoU 0.50 (stats[1]); both fractions
(0..1; detectron2 prints them x 100). A kind is scored where the predictions have it and the
ground truth can judge it (keypoints: annotations with keypoints, COCO's 17 of them).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

IOU_TYPES = {"box": "bbox", "mask": "segm", "keypoint": "keypoints"}
COCO_KEYPOINTS = 17  # COCOeval's OKS sigmas are COCO's person keypoints'


@dataclass
class Prediction:
    """One image's detections in its own coordinates (runner.accuracy.letterbox maps them)."""

    image_id: int
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    scores: np.ndarray  # (N,)
    category_ids: np.ndarray  # (N,) the dataset's category ids
    masks: np.ndarray | None = None  # (N, H, W) bool, H x W the image's size
    keypoints: np.ndarray | None = None  # (N, K, 3) x, y, score

    def __len__(self) -> int:
        return len(self.scores)


@contextlib.contextmanager
def quiet():
    """pycocotools prints its progress to stdout: kept out of the run's output, logged at
    debug level instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
    for line in buffer.getvalue().splitlines():
        if line.strip():
            log.debug("pycocotools: %s", line)


def results(prediction: Prediction) -> dict[str, list[dict]]:
    """COCO result records of one image, by kind (a kind the prediction lacks: no entry)."""
    from pycocotools import mask as mask_util

    base = [
        {"image_id": prediction.image_id, "category_id": int(c), "score": float(s)}
        for c, s in zip(prediction.category_ids, prediction.scores, strict=True)
    ]
    x1, y1, x2, y2 = prediction.boxes.astype(np.float64).T if len(prediction) else [[]] * 4
    found = {
        "box": [
            {**record, "bbox": [float(a), float(b), float(c - a), float(d - b)]}
            for record, a, b, c, d in zip(base, x1, y1, x2, y2, strict=True)
        ]
    }
    if prediction.masks is not None:
        masks = np.asfortranarray(prediction.masks.transpose(1, 2, 0).astype(np.uint8))
        rles = mask_util.encode(masks) if len(prediction) else []
        found["mask"] = [
            {**record, "segmentation": rle} for record, rle in zip(base, rles, strict=True)
        ]
    if prediction.keypoints is not None:
        found["keypoint"] = [
            {**record, "keypoints": [float(v) for v in points.reshape(-1)]}
            for record, points in zip(base, prediction.keypoints, strict=True)
        ]
    return found


def judges(ground_truth, kind: str) -> str:
    """'' where the ground truth can score `kind`; else why not (one line)."""
    if kind != "keypoint":
        return ""
    with_keypoints = [a for a in ground_truth.dataset["annotations"] if a.get("num_keypoints")]
    if not with_keypoints:
        return "the dataset's annotations have no keypoints"
    count = len(with_keypoints[0]["keypoints"]) // 3
    if count != COCO_KEYPOINTS:
        return f"its annotations have {count} keypoints; COCOeval scores COCO's {COCO_KEYPOINTS}"
    return ""


@dataclass
class Scores:
    """COCOeval's figures for one kind: AP and AP50 (fractions), and its whole summary."""

    ap: float
    ap50: float
    stats: tuple[float, ...]


def score(ground_truth, records: list[dict], kind: str, image_ids: list[int]) -> Scores:
    """COCOeval of `records` (one kind) against the ground truth, on `image_ids` only."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with quiet():
        if records:
            detections = ground_truth.loadRes(records)
        else:  # loadRes refuses an empty list; no detections score 0 (COCOeval says so)
            detections = COCO()
            detections.dataset = {
                "images": ground_truth.dataset["images"],
                "categories": ground_truth.dataset["categories"],
                "annotations": [],
            }
            detections.createIndex()
        evaluation = COCOeval(ground_truth, detections, IOU_TYPES[kind])
        evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = tuple(float(v) for v in evaluation.stats)
    log.info(
        "COCOeval %s on %d images, %d detections: AP %.4f, AP50 %.4f",
        IOU_TYPES[kind],
        len(image_ids),
        len(records),
        stats[0],
        stats[1],
    )
    return Scores(ap=stats[0], ap50=stats[1], stats=stats)
