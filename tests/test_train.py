"""scripts/train.py on the CPU, for each seed architecture: one training iteration on a tiny
generated set writes a checkpoint that `model.weights=` loads into the unchanged zoo
architecture (every tensor, no other), with identical eager outputs to the zoo model holding
the file's tensors, and folding the trained norms kept the trained model's answers; the rows'
weights label says how it was trained. The recipe's speed and AP are the H200's to show
(scripts/batches/h200_accuracy.txt)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from runner.accuracy import shapes
from runner.run import models
from runner.run.inputs import to_tensor
from tests.helpers import REPO

pytestmark = pytest.mark.detectron2
CPU = torch.device("cpu")
HEIGHT, WIDTH = 96, 128  # the tiny set's images: FPN needs sides divisible by 32


def load_script():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = load_script()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate(out, {"train": 4, "val": 1}, seed=5, height=HEIGHT, width=WIDTH)
    return out


def detections_of(model, image: torch.Tensor) -> dict:
    with torch.no_grad():
        (found,) = model([{"image": image}])
    return found["instances"].get_fields()


@pytest.mark.parametrize("name", TRAIN.MODELS)
def test_a_trained_checkpoint_loads_into_the_zoo_architecture_with_the_same_answers(
    data, tmp_path, name
):
    unfolded = tmp_path / "unfolded.pth"
    args = ["--model", name, "--data", str(data), "--out", str(tmp_path), "--iters", "1"]
    args += ["--batch", "2", "--workers", "0", "--device", "cpu", "--eval-batch", "1"]
    summary = TRAIN.main([*args, "--save-unfolded", str(unfolded)])
    checkpoint = tmp_path / f"{name}.pth"
    assert summary["checkpoint"] == str(checkpoint) and summary["iters"] == 1
    assert summary["val_images"] == 1 and 0.0 <= summary["val_box_ap"] <= 1.0

    # model.weights= loads it into the zoo's architecture: the same tensors, no more, no fewer.
    # Every detection counts (score threshold 0): one iteration leaves scores near the prior
    base = dataclasses.replace(TRAIN.model_config(name), score_thresh=0.0)
    state = torch.load(checkpoint, weights_only=True)["model"]
    zoo = TRAIN.zoo_model(base, state)
    assert state.keys() == TRAIN.zoo_model(base).state_dict().keys()
    loaded, label = models.build(dataclasses.replace(base, weights=str(checkpoint)), CPU, seed=0)
    assert label.startswith(f"trained(model={name} iters=1 batch=2 lr=0.02 ")
    assert label.endswith(f"file:{name}.pth@sha256:{summary['sha256'][:12]}")

    # identical eager outputs: the runner's model and the zoo model holding the file's tensors
    from PIL import Image

    rgb = np.asarray(Image.open(next((data / "val").iterdir())).convert("RGB"))
    image = to_tensor(rgb, "detectron2")
    ours, theirs = detections_of(loaded, image), detections_of(zoo, image)
    assert ours.keys() == theirs.keys() and len(ours["scores"]) > 0
    for field in ours:
        mine, other = ours[field], theirs[field]
        mine, other = getattr(mine, "tensor", mine), getattr(other, "tensor", other)
        assert torch.equal(mine, other), field

    # folding the trained norms kept the trained model's answers (float rounding apart)
    from detectron2.modeling import build_model

    namespace = argparse.Namespace(device="cpu", workers=0, batch=2, lr=0.02, seed=0)
    trained = build_model(TRAIN.train_config(base, data, namespace)).eval()
    trained.load_state_dict(torch.load(unfolded, weights_only=True)["model"])
    assert TRAIN.check_fold(trained, zoo, HEIGHT, WIDTH) == pytest.approx(
        summary["fold_max_rel_diff"], rel=0.01
    )
    assert summary["fold_max_rel_diff"] < 1e-4
    assert summary["norm"] == f"BN in {LEARNT_NORMS[name]}"


# where training from scratch puts norms that learn (the ResNet's become FrozenBatchNorm
# statistics, the others are folded into their convs)
LEARNT_NORMS = {
    "retinanet": "resnets+fpn",
    "mask_rcnn_c4": "resnets",  # its mask head has no convs before the deconvolution
    "mask_rcnn_fpn": "resnets+fpn+roi_mask_head",
    "cascade_rcnn": "resnets+fpn+roi_mask_head",
}


def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        TRAIN.main(["--model", "retinanet", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "no train.json (python -m runner.accuracy.shapes)" in capsys.readouterr().err


@pytest.mark.gpu
def test_amp_training_on_cuda_fits_its_minutes_and_loads_into_the_zoo(data, tmp_path):
    """The H200 path: AMPTrainer, the whole-model clip under the grad scaler, and --minutes
    fixing the iteration count from the probe's speed (half a minute of training loop)."""
    args = ["--model", "mask_rcnn_fpn", "--data", str(data), "--out", str(tmp_path)]
    summary = TRAIN.main([*args, "--minutes", "0.5", "--batch", "4", "--workers", "2"])
    assert summary["amp"] == "fp16" and summary["iters"] > TRAIN.PROBE_ITERS
    assert summary["seconds"] < 0.5 * 60 * 1.2  # the budget, give or take the last iteration
    assert summary["loss_last20"] < summary["loss_first20"]  # it learns
    base = TRAIN.model_config("mask_rcnn_fpn")
    checkpoint = tmp_path / "mask_rcnn_fpn.pth"
    _, label = models.build(dataclasses.replace(base, weights=str(checkpoint)), CPU, seed=0)
    assert label.startswith("trained(model=mask_rcnn_fpn ") and "amp=fp16" in label
