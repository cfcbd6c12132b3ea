"""The accuracy pass's parts on a tiny generated set (runner.accuracy): the generator is
deterministic and its annotations are exact, COCOeval gives perfect predictions AP 1.0 and
shifted boxes or swapped classes less, the letterbox maps to the input and back exactly, and
the whole pass (letterbox, batches, mapping back, scoring) gives an oracle AP 1.0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from runner.accuracy import coco, evaluate, letterbox, shapes
from runner.accuracy.dataset import open_dataset
from runner.config import DatasetConfig
from runner.run.inputs import to_tensor
from runner.run.parity import Detections

TINY = {"val": 5}  # images; every test below works on these


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate(out, TINY, seed=3, height=120, width=160, max_objects=6)
    return out


def dataset_of(root, **changes):
    cfg = DatasetConfig(name="generated", root=str(root), annotations="val.json", images="val")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return open_dataset(cfg)


# ---- the generator ---------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_images_whatever_the_workers(tiny, tmp_path):
    shapes.generate(tmp_path, TINY, seed=3, height=120, width=160, max_objects=6, workers=2)
    assert (tmp_path / "val.json").read_bytes() == (tiny / "val.json").read_bytes()
    for image in sorted((tiny / "val").iterdir()):
        assert (tmp_path / "val" / image.name).read_bytes() == image.read_bytes()
    other = tmp_path / "other"
    shapes.generate(other, TINY, seed=4, height=120, width=160, max_objects=6)
    assert (other / "val.json").read_bytes() != (tiny / "val.json").read_bytes()


def test_annotations_are_coco_instances_whose_boxes_bound_their_masks(tiny):
    data = json.loads((tiny / "val.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(shapes.CLASSES)
    assert len(data["images"]) == TINY["val"]
    assert len(data["annotations"]) >= 2 * TINY["val"]  # at least two shapes per image
    for annotation in data["annotations"]:
        mask = mask_util.decode(annotation["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert annotation["area"] == mask.sum() >= shapes.MIN_AREA_PX


def test_occluded_masks_do_not_overlap(tiny):
    """A later shape hides what it covers: the visible masks of one image are disjoint."""
    data = json.loads((tiny / "val.json").read_text())
    for image in data["images"]:
        masks = [
            mask_util.decode(a["segmentation"]).astype(int)
            for a in data["annotations"]
            if a["image_id"] == image["id"]
        ]
        assert np.stack(masks).sum(axis=0).max() == 1


def test_the_command_line_refuses_bad_sizes_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        shapes.main(["--out", str(tmp_path), "--val", "-1", "--height", "8"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--val=-1; must be >= 0" in error and "--height=8; must be >= 64" in error


# ---- COCOeval ------------------------------------------------------------------------------


def ground_truth_predictions(dataset, shift=0.0, swap=False) -> list[coco.Prediction]:
    """Every annotation as a detection of score 1 (boxes shifted by `shift` px; categories
    rotated by one where `swap`)."""
    found = []
    ids = dataset.category_ids
    for image_id in dataset.image_ids:
        anns = dataset.ground_truth.imgToAnns[image_id]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        cats = np.array([a["category_id"] for a in anns])
        if swap:
            cats = np.array([ids[(ids.index(c) + 1) % len(ids)] for c in cats])
        masks = np.stack([mask_util.decode(a["segmentation"]).astype(bool) for a in anns])
        found.append(coco.Prediction(image_id, boxes + shift, np.ones(len(anns)), cats, masks))
    return found


def scored(dataset, predictions) -> dict[str, coco.Scores]:
    results: dict[str, list] = {}
    for prediction in predictions:
        for kind, records in coco.results(prediction).items():
            results.setdefault(kind, []).extend(records)
    return evaluate.scores(dataset, results)


def test_perfect_predictions_score_ap_1(tiny):
    found = scored(dataset_of(tiny), ground_truth_predictions(dataset_of(tiny)))
    assert found["box"].ap == pytest.approx(1.0) and found["box"].ap50 == pytest.approx(1.0)
    assert found["mask"].ap == pytest.approx(1.0)


def test_shifted_boxes_and_swapped_classes_score_less(tiny):
    dataset = dataset_of(tiny)
    shifted = scored(dataset, ground_truth_predictions(dataset, shift=5.0))["box"]
    assert 0.0 < shifted.ap < 0.9  # small shapes no longer match at the strict IoUs
    swapped = scored(dataset, ground_truth_predictions(dataset, swap=True))
    assert swapped["box"].ap == swapped["mask"].ap == 0.0


def test_no_detections_score_zero_not_an_error(tiny):
    dataset = dataset_of(tiny)
    empty = coco.Prediction(dataset.image_ids[0], np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert scored(dataset, [empty])["box"].ap == 0.0


def test_max_images_scores_the_first_images_only(tiny):
    dataset = dataset_of(tiny, max_images=2)
    assert dataset.image_ids == sorted(dataset.ground_truth.getImgIds())[:2]
    assert scored(dataset, ground_truth_predictions(dataset))["box"].ap == pytest.approx(1.0)


def test_classes_map_to_categories_from_the_familys_first_class(tiny):
    dataset = dataset_of(tiny)  # categories 1..6
    ids, kept = dataset.categories(np.array([0, 5, 6, 80]), first_class=0)
    assert ids.tolist() == [1, 6] and kept.tolist() == [True, True, False, False]
    ids, kept = dataset.categories(np.array([0, 1, 6]), first_class=1)
    assert ids.tolist() == [1, 6] and kept.tolist() == [False, True, True]
    by_id = dataset_of(tiny, class_map="category_id")
    ids, kept = by_id.categories(np.array([0, 3, 7]), first_class=1)
    assert ids.tolist() == [3] and kept.tolist() == [False, True, False]


# ---- the letterbox -------------------------------------------------------------------------


@pytest.mark.parametrize("image_hw", [(120, 160), (480, 640), (640, 480), (37, 301)])
def test_boxes_map_to_the_input_and_back_exactly(image_hw):
    box = letterbox.fit(*image_hw, 160, 224)
    assert box.scaled_height <= 160 and box.scaled_width <= 224
    assert box.scaled_height == 160 or box.scaled_width == 224  # as large as fits
    h, w = image_hw
    boxes = torch.tensor([[0.0, 0.0, w, h], [w * 0.25, h * 0.5, w * 0.75, h * 0.9]])
    back = letterbox.boxes_to_image(letterbox.to_input(boxes, box), box)
    torch.testing.assert_close(back, boxes, rtol=0, atol=1e-4)


def test_the_image_sits_at_the_top_left_and_the_rest_is_the_mean_colour():
    rgb = np.random.default_rng(0).integers(0, 255, (100, 300, 3), dtype=np.uint8)
    box = letterbox.fit(100, 300, 160, 224)  # width decides: scale 224/300
    out = letterbox.apply(rgb, box)
    assert out.shape == (160, 224, 3)
    assert (box.scaled_height, box.scaled_width) == (75, 224)
    assert (out[75:] == letterbox.FILL_RGB).all()
    same = letterbox.fit(160, 224, 160, 224)
    image = np.zeros((160, 224, 3), np.uint8)
    assert letterbox.apply(image, same) is image  # the input size: passed through unchanged


def test_input_masks_map_back_to_the_image():
    """A whole-input mask of a rectangle, made at the input, comes back as the rectangle."""
    box = letterbox.fit(120, 160, 240, 480)  # scale 2, padded on the right
    mask = torch.zeros(1, 1, 240, 480)
    mask[0, 0, 40:120, 60:200] = 1.0  # the image's rows 20..59, columns 30..99
    back = letterbox.masks_to_image(mask, torch.zeros(1, 4), box)
    expected = torch.zeros(1, 120, 160, dtype=torch.bool)
    expected[0, 20:60, 30:100] = True
    assert torch.equal(back, expected)


def test_box_masks_are_pasted_into_their_boxes():
    box = letterbox.fit(60, 80, 60, 80)
    full = torch.ones(1, 1, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    pasted = letterbox.masks_to_image(full, boxes, box)
    ys, xs = torch.nonzero(pasted[0], as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 29, 20, 49)


# ---- the whole pass ------------------------------------------------------------------------


def oracle(dataset, input_hw, box_masks: bool):
    """A predict callable that answers each letterboxed image with its ground truth, in input
    coordinates, recognised by the image's pixels: what a perfect model would return."""
    by_pixels = {}
    for image_id in dataset.image_ids:
        rgb = dataset.read_rgb(image_id)
        fitted = letterbox.fit(*rgb.shape[:2], *input_hw)
        pixels = to_tensor(letterbox.apply(rgb, fitted), "detectron2")
        anns = dataset.ground_truth.imgToAnns[image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        masks = torch.from_numpy(
            np.stack([mask_util.decode(a["segmentation"]) for a in anns])
        ).float()
        if box_masks:  # per-box masks, as detectron2 without post-processing returns them
            masks = torch.stack(
                [
                    torch.nn.functional.interpolate(
                        m[None, None, int(b[1]) : int(b[3]), int(b[0]) : int(b[2])], (28, 28)
                    )[0]
                    for m, b in zip(masks, boxes, strict=True)
                ]
            )
        else:  # whole-input masks, letterboxed like the image
            h, w = fitted.scaled_height, fitted.scaled_width
            scaled = torch.nn.functional.interpolate(masks[:, None], (h, w), mode="nearest")
            masks = torch.zeros(len(anns), 1, *input_hw)
            masks[:, :, :h, :w] = scaled
        classes = torch.tensor([dataset.category_ids.index(a["category_id"]) for a in anns])
        by_pixels[pixels.sum().item()] = Detections(
            letterbox.to_input(boxes, fitted), torch.ones(len(anns)), classes, masks
        )

    def predict(batch):
        return [by_pixels[image.sum().item()] for image in batch]

    return predict


@pytest.mark.parametrize("batch", [1, 2])
def test_an_oracle_through_the_letterboxed_pass_scores_ap_1(tiny, batch):
    """Images of 120x160 at an input of 160x224 (scaled by 4/3, padded on the right), in
    batches whose last one is filled with a copy: box AP 1.0; masks resampled to the input and
    back lose only edge pixels."""
    dataset = dataset_of(tiny)
    hw = (160, 224)
    for box_masks, least_mask_ap in ((False, 0.85), (True, 0.75)):
        predict = oracle(dataset, hw, box_masks)
        cpu = torch.device("cpu")
        results = evaluate.predictions(
            dataset, predict, "detectron2", hw, batch, to_tensor, cpu, "oracle"
        )
        assert {r["image_id"] for r in results["box"]} == set(dataset.image_ids)
        found = evaluate.scores(dataset, results)
        assert found["box"].ap == pytest.approx(1.0)
        assert least_mask_ap < found["mask"].ap <= 1.0


def test_figures_are_the_row_columns_with_the_difference_from_the_reference(tiny):
    dataset = dataset_of(tiny)
    perfect = scored(dataset, ground_truth_predictions(dataset))
    shifted = scored(dataset, ground_truth_predictions(dataset, shift=5.0))
    fields = evaluate.figures(dataset, shifted, perfect)
    assert fields["accuracy_images"] == TINY["val"]
    assert fields["accuracy_dataset"].startswith("generated:val.json@sha256:")
    assert fields["accuracy_box_ap_vs_ref"] == pytest.approx(shifted["box"].ap - 1.0)
    assert fields["accuracy_mask_ap_vs_ref"] == pytest.approx(0.0)  # masks were not shifted
    assert "accuracy_keypoint_ap" not in fields


# ---- keypoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Two images of 120x160 with two 'persons' each, COCO's 17 keypoints all visible."""
    from PIL import Image

    out = tmp_path_factory.mktemp("people")
    (out / "val").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (1, 2):
        name = f"{image_id:06d}.jpg"
        pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / "val" / name)
        images.append({"id": image_id, "file_name": name, "height": 120, "width": 160})
        for left in (10, 90):
            xs = rng.uniform(left, left + 50, 17)
            ys = rng.uniform(20, 100, 17)
            points = np.stack([xs, ys, np.full(17, 2.0)], axis=1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [left, 20.0, 50.0, 80.0],
                    "area": 4000.0,
                    "iscrowd": 0,
                    "num_keypoints": 17,
                    "keypoints": [float(v) for v in points.reshape(-1)],
                }
            )
    categories = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)]}]
    coco_json = {"images": images, "annotations": annotations, "categories": categories}
    (out / "val.json").write_text(json.dumps(coco_json))
    return out


def test_keypoints_through_the_letterboxed_pass_score_ap_1(people):
    """Predicted keypoints in input coordinates (an input of 240x240: scaled by 1.5, padded
    below) come back to the image's and COCOeval's OKS gives them AP 1.0."""
    dataset = dataset_of(people)
    hw = (240, 240)
    by_pixels = {}
    for image_id in dataset.image_ids:
        rgb = dataset.read_rgb(image_id)
        fitted = letterbox.fit(*rgb.shape[:2], *hw)
        pixels = to_tensor(letterbox.apply(rgb, fitted), "detectron2")
        anns = dataset.ground_truth.imgToAnns[image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        points = torch.tensor([a["keypoints"] for a in anns]).reshape(len(anns), 17, 3)[..., :2]
        points = points * torch.tensor([fitted.scale_x, fitted.scale_y])
        by_pixels[pixels.sum().item()] = Detections(
            letterbox.to_input(boxes, fitted),
            torch.ones(len(anns)),
            torch.zeros(len(anns), dtype=torch.int64),
            keypoints=points,
            extra={"keypoint_scores": torch.ones(len(anns), 17)},
        )
    results = evaluate.predictions(
        dataset,
        lambda batch: [by_pixels[image.sum().item()] for image in batch],
        "detectron2",
        hw,
        1,
        to_tensor,
        torch.device("cpu"),
        "oracle",
    )
    found = evaluate.scores(dataset, results)
    assert found["keypoint"].ap == pytest.approx(1.0) and found["box"].ap == pytest.approx(1.0)
    fields = evaluate.figures(dataset, found, found)
    assert fields["accuracy_keypoint_ap"] == pytest.approx(1.0)
    assert fields["accuracy_keypoint_ap_vs_ref"] == 0.0


def test_keypoints_are_not_scored_where_the_dataset_has_none(tiny, caplog):
    dataset = dataset_of(tiny)
    with caplog.at_level("WARNING"):
        found = evaluate.scores(dataset, {"box": [], "keypoint": []})
    assert set(found) == {"box"}
    assert "no keypoint AP: the dataset's annotations have no keypoints" in caplog.text
