"""LazyConfig models: `model.arch` may name a model-zoo .py file, built with LazyConfig.load and
instantiate, its `arch_options` overrides of the file's keys; a key the file does not have is
refused before the run (exit 2, one line naming the nearest keys), as for YAML configs.
Skipped where detectron2 is missing."""

from __future__ import annotations

import pytest
import torch

from runner import families
from runner.run import models
from tests.helpers import run_runner

pytestmark = pytest.mark.detectron2

LSJ = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
RETINANET = "COCO-Detection/retinanet_R_50_FPN_1x.py"


def test_arch_options_override_the_lazy_config_and_the_thresholds_reach_the_model(make_config):
    cfg = make_config(
        f"model.arch={LSJ}",
        "model.score_thresh=0.3",
        "+model.arch_options.model.roi_heads.num_classes=3",
        "+model.arch_options.model.proposal_generator.post_nms_topk=[500,300]",
        # an argument the file leaves at its default (FastRCNNOutputLayers takes it)
        "+model.arch_options.model.roi_heads.box_predictor.cls_agnostic_bbox_reg=true",
    )
    lazy = families.get("detectron2").config(cfg.model)
    assert lazy.model.roi_heads.num_classes == 3
    assert list(lazy.model.proposal_generator.post_nms_topk) == [500, 300]
    predictor = lazy.model.roi_heads.box_predictor
    assert predictor.test_score_thresh == 0.3
    assert predictor.test_topk_per_image == cfg.model.detections_per_image
    assert predictor.cls_agnostic_bbox_reg is True


def test_a_lazy_config_model_is_instantiated_and_answers(make_config):
    cfg = make_config(f"model.arch={RETINANET}", "model.nms_thresh=0.4", "device=cpu")
    model, weights = models.build(cfg.model, torch.device("cpu"), cfg.seed)
    assert type(model).__name__ == "RetinaNet" and weights == "random(seed=0)"
    assert model.test_nms_thresh == 0.4 and not model.training
    with torch.no_grad():
        (answer,) = model([{"image": torch.rand(3, 64, 96) * 255}])
    assert "instances" in answer


@pytest.mark.parametrize(
    "key, says",
    [
        ("model.roi_heads.num_clases", "model.roi_heads has no 'num_clases'; nearest: num_classes"),
        ("model.roi_head.num_classes", "model has no 'roi_head'; nearest: roi_heads"),
        ("model.roi_heads.num_classes.x", "model.roi_heads.num_classes holds a value"),
    ],
)
def test_a_key_the_lazy_config_lacks_is_refused_naming_the_nearest(make_config, key, says):
    cfg = make_config(f"model.arch={LSJ}", f"+model.arch_options.{key}=3")
    with pytest.raises(ValueError, match="not a key of the LazyConfig") as refusal:
        families.get("detectron2").check(cfg.model)
    assert says in str(refusal.value)


def test_a_misspelt_lazy_config_key_is_refused_before_any_child(tmp_path):
    run = tmp_path / "run"
    done = run_runner(
        f"model.arch={LSJ}",
        "device=cpu",
        "+model.arch_options.model.roi_heads.num_clases=3",
        f"hydra.run.dir={run}",
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    refusals = [line for line in output.splitlines() if "invalid configuration: " in line]
    assert len(refusals) == 1 and "nearest: num_classes" in refusals[0], output
    assert "Traceback" not in output
    assert not run.exists()


def test_a_package_the_config_needs_is_named_as_unsupported(make_config):
    """Misc/mmdet_mask_rcnn_R_50_FPN_1x.py builds an mmdetection model: without mmdet the
    build says unsupported, naming it."""
    pytest.importorskip("detectron2")
    import importlib.util

    if importlib.util.find_spec("mmdet") is not None:
        pytest.skip("mmdet is installed here: the config builds")
    from runner.backends import Unsupported

    cfg = make_config("model.arch=Misc/mmdet_mask_rcnn_R_50_FPN_1x.py")
    with pytest.raises(Unsupported, match="needs the package 'mmdet'"):
        families.get("detectron2").build(cfg.model, torch.device("cpu"))
