"""Inputs (the photo at the opt / min / max sizes, in each family's pixel format) and the
exported module's output decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.exported import Exported, Layout
from runner.precision import autocast
from runner.run import inputs


def test_default_photo_is_a_real_picture():
    photo = inputs.load_photo(None)
    assert inputs.default_photo().is_file()
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert photo.shape[0] >= 400 and photo.std() > 10


def test_an_unreadable_image_is_a_value_error(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="inputs.image"):
        inputs.load_photo(path)


@pytest.mark.parametrize("height, width", [(160, 224), (480, 640), (600, 300), (32, 32)])
def test_cover_and_crop_gives_the_size_asked_for(height, width):
    out = inputs.cover_and_crop(inputs.load_photo(None), height, width)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


def test_cover_and_crop_keeps_the_aspect_ratio():
    photo = np.zeros((100, 200, 3), dtype=np.uint8)
    photo[:, 90:110] = 255  # a vertical bar in the middle
    out = inputs.cover_and_crop(photo, 50, 50)  # scale 0.5, crop the centre 50 of 100 columns
    bar = np.nonzero(out[25, :, 0] > 127)[0]
    assert 8 <= len(bar) <= 12 and 23 <= bar.mean() <= 26  # columns 45:55 -> 20:30


def test_pixel_formats():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red
    d2 = inputs.to_tensor(rgb, "detectron2")
    tv = inputs.to_tensor(rgb, "torchvision")
    assert d2.shape == tv.shape == (3, 2, 2) and d2.dtype == torch.float32
    assert d2[2].max() == 255.0 and d2[0].max() == 0.0  # BGR, 0..255
    assert tv[0].max() == 1.0 and tv[2].max() == 0.0  # RGB, 0..1


def test_make_static_and_dynamic(make_config):
    cfg = make_config(
        "model=tv_fasterrcnn_mobilenet", "inputs.height=100", "inputs.width=200", "batch=2"
    )
    images = inputs.make(cfg, torch.device("cpu"))
    assert images.shapes == ["opt"]
    assert images.hw("opt") == "100x200"
    a, b = images.images["opt"]
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()

    cfg = make_config(
        "model=tv_fasterrcnn_mobilenet",
        "inputs.height=100",
        "inputs.width=200",
        "shapes=dynamic",
        "shapes.min_scale=0.5",
        "shapes.max_scale=2",
    )
    images = inputs.make(cfg, torch.device("cpu"))
    assert images.shapes == ["opt", "min", "max"]
    assert [images.hw(s) for s in images.shapes] == ["100x200", "50x100", "200x400"]


def test_min_size_is_at_least_32(make_config):
    cfg = make_config(
        "inputs.height=40", "inputs.width=64", "shapes=dynamic", "shapes.min_scale=0.1"
    )
    assert inputs.target_sizes(cfg)["min"] == (32, 32)


def _exported(*names: str, family: str = "torchvision") -> Exported:
    module = torch.nn.Identity()
    return Exported(
        module=module,
        model=module,
        method="trace",
        example=(),
        make_torchscript=lambda: None,
        layout=Layout(family, names or ("boxes", "scores", "labels")),
    )


def test_decode_splits_flat_outputs_per_image():
    boxes = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]])
    scores = torch.tensor([0.9, 0.8], dtype=torch.float16)
    classes = torch.tensor([3, 4], dtype=torch.int32)
    masks = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    two = _exported().decode((boxes, scores, classes, boxes[:1], scores[:1], classes[:1]), 2)
    assert [len(d) for d in two] == [2, 1]
    assert two[0].classes.dtype == torch.int64 and two[0].scores.dtype == torch.float32
    assert two[0].masks is None and two[0].keypoints is None and two[0].extra == {}
    with_masks = _exported("boxes", "scores", "labels", "masks").decode(
        (boxes, scores, classes, masks), 1
    )
    assert with_masks[0].masks is not None and with_masks[0].masks.shape == (2, 1, 4, 4)


def test_decode_passes_every_field_through():
    boxes, scores, classes = torch.zeros(2, 4), torch.ones(2), torch.ones(2)
    keypoints = torch.rand(2, 17, 3)
    heatmaps = torch.rand(2, 17, 56, 56)
    names = ("pred_boxes", "scores", "pred_classes", "pred_keypoint_heatmaps", "pred_keypoints")
    (d2,) = _exported(*names, family="detectron2").decode(
        (boxes, scores, classes, heatmaps, keypoints), 1
    )
    assert torch.equal(d2.keypoints, keypoints[..., :2])
    assert set(d2.extra) == {"keypoint_heatmaps", "keypoint_scores"}
    assert torch.equal(d2.extra["keypoint_scores"], keypoints[..., 2])  # detectron2's 3rd column
    names = ("boxes", "scores", "labels", "keypoints", "keypoints_scores", "something_new")
    (tv,) = _exported(*names).decode(
        (boxes, scores, classes, keypoints, keypoints[..., 2], torch.zeros(2)), 1
    )
    assert tv.keypoints.shape == (2, 17, 2)
    assert set(tv.extra) == {"keypoint_scores", "something_new"}


def test_layout_orders_the_leading_fields_first_and_the_rest_by_name():
    layout = Layout("detectron2")
    names = layout.ordered(
        {"pred_masks": 0, "pred_classes": 0, "scores": 0, "pred_boxes": 0, "pred_keypoints": 0}
    )
    assert names == ["pred_boxes", "scores", "pred_classes", "pred_keypoints", "pred_masks"]
    with pytest.raises(ValueError, match="no \\['scores'\\]"):
        layout.ordered({"pred_boxes": 0, "pred_classes": 0})
    # proposals have no classes (they decode as class 0); semantic segmentation no instances
    assert layout.ordered({"objectness_logits": 0, "proposal_boxes": 0}) == [
        "proposal_boxes",
        "objectness_logits",
    ]
    assert layout.ordered({"sem_seg": 0}) == ["sem_seg"]
    layout.record(names)
    with pytest.raises(ValueError, match="changed"):
        layout.record(names[:3])


def test_decode_rejects_outputs_that_do_not_split_or_an_unknown_layout():
    t = torch.zeros(1)
    with pytest.raises(ValueError):
        _exported().decode((t, t, t), 2)
    with pytest.raises(ValueError):
        _exported().decode((t, t, t, t, t), 1)
    unknown = _exported()
    unknown.layout.names = ()
    with pytest.raises(ValueError, match="layout is unknown"):
        unknown.decode((t, t, t), 1)


def test_autocast_only_for_reduced_precisions(make_config):
    fp32 = make_config("precision=fp32").precision
    bf16 = make_config("precision=bf16").precision
    with autocast(fp32, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(bf16, "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
