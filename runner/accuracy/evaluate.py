"""Evaluate: the accuracy pass. Takes an opened Dataset, a `predict` callable (a batch of input
tensors -> one Detections per image, through whatever the run timed) and the run's input size;
returns the COCO results of every image and, scored against the ground truth, the figures.

    predictions(...)  every image of the pass: letterboxed to the input size, converted to the
                      family's pixels, through `predict` in batches of `batch` images (the last
                      batch filled with copies of its last image, whose answers are dropped),
                      mapped back to the image (runner.accuracy.letterbox) -> COCO results
    scores(...)       COCOeval per kind the results have (runner.accuracy.coco)
    figures(...)      the row's accuracy columns: AP figures, images, AP minus the reference's

A progress line is logged every PROGRESS_S seconds of a pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from runner import families
from runner.accuracy import coco, letterbox
from runner.accuracy.dataset import Dataset

log = logging.getLogger(__name__)

PROGRESS_S = 15.0


def _prediction(dataset: Dataset, image_id: int, found, box: letterbox.Letterbox, first: int):
    """One image's Detections (input coordinates) as a coco.Prediction in its own."""
    category_ids, kept = dataset.categories(found.classes.numpy(), first)
    keep = torch.from_numpy(kept)
    boxes = letterbox.boxes_to_image(found.boxes[keep], box)
    masks = keypoints = None
    if found.masks is not None:
        masks = letterbox.masks_to_image(found.masks[keep], boxes, box).numpy()
    if found.keypoints is not None:
        points = letterbox.keypoints_to_image(found.keypoints[keep][..., :2], box)
        scores = found.extra.get("keypoint_scores")
        visible = (
            scores[keep][..., None] if scores is not None else torch.ones_like(points[..., :1])
        )
        keypoints = torch.cat([points, visible.float()], dim=-1).numpy()
    return coco.Prediction(
        image_id=image_id,
        boxes=boxes.numpy(),
        scores=found.scores[keep].numpy(),
        category_ids=category_ids,
        masks=masks,
        keypoints=keypoints,
    )


def predictions(
    dataset: Dataset,
    predict: Callable,
    family: str,
    input_hw: tuple[int, int],
    batch: int,
    to_tensor: Callable[[np.ndarray, str], torch.Tensor],
    device: torch.device,
    what: str,
) -> dict[str, list[dict]]:
    """COCO results by kind of every image of the pass; see the module docstring. `what`
    names the pass in its progress lines."""
    first_class = families.get(family).FIRST_CLASS
    found: dict[str, list[dict]] = {}
    started = last = time.monotonic()
    ids = dataset.image_ids
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        boxes, tensors = [], []
        for image_id in chunk:
            rgb = dataset.read_rgb(image_id)
            box = letterbox.fit(*rgb.shape[:2], *input_hw)
            boxes.append(box)
            tensors.append(to_tensor(letterbox.apply(rgb, box), family).to(device))
        tensors += [tensors[-1]] * (batch - len(chunk))  # a full batch: the timed shape
        detections = predict(tuple(tensors))
        for image_id, box, image_found in zip(chunk, boxes, detections, strict=False):
            for kind, records in coco.results(
                _prediction(dataset, image_id, image_found, box, first_class)
            ).items():
                found.setdefault(kind, []).extend(records)
        if time.monotonic() - last > PROGRESS_S:
            last = time.monotonic()
            done = start + len(chunk)
            log.info("accuracy %s: %d/%d images, %.0f s", what, done, len(ids), last - started)
    if dataset.dropped:
        log.warning(
            "accuracy %s: detections of classes the dataset lacks, dropped: %s",
            what,
            ", ".join(f"class {c}: {n}" for c, n in sorted(dataset.dropped.items())),
        )
        dataset.dropped.clear()
    log.info("accuracy %s: %d images in %.1f s", what, len(ids), time.monotonic() - started)
    return found


def scores(dataset: Dataset, results: dict[str, list[dict]]) -> dict[str, coco.Scores]:
    """COCOeval's figures for each kind the results have (predictions() gives every kind the
    model outputs, detections or not) that the ground truth can judge."""
    scored = {}
    for kind in results:
        reason = coco.judges(dataset.ground_truth, kind)
        if reason:
            log.warning("accuracy: no %s AP: %s", kind, reason)
            continue
        scored[kind] = coco.score(
            dataset.ground_truth, results.get(kind, []), kind, dataset.image_ids
        )
    return scored


def _value(figure: float) -> float | None:
    """COCOeval's -1 (nothing to score, e.g. no ground truth of a kind) as no value."""
    return None if figure < 0 else figure


def figures(
    dataset: Dataset, mine: dict[str, coco.Scores], reference: dict[str, coco.Scores]
) -> dict:
    """The row's accuracy columns from this pass's scores and the reference's (same images)."""
    fields: dict = {"accuracy_dataset": dataset.label, "accuracy_images": len(dataset.image_ids)}
    for kind, scored in mine.items():
        ap = _value(scored.ap)
        fields[f"accuracy_{kind}_ap"] = ap
        if kind != "keypoint":
            fields[f"accuracy_{kind}_ap50"] = _value(scored.ap50)
        ref = _value(reference[kind].ap) if kind in reference else None
        fields[f"accuracy_{kind}_ap_vs_ref"] = None if None in (ap, ref) else ap - ref
    return fields
