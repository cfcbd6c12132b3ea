"""The detectron2 family: model-zoo configs built with detectron2's build_model, its .pkl / .pth
checkpoints aligned to the model's names, BGR pixels in 0..255, and the exports detectron2
supports (TracingAdapter for trace, scripting_with_instances for script)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.exported import Exported, Layout, flatten, traced

PIXELS = ("BGR", 255.0)
RENAMES = {
    "pred_boxes": "boxes",
    "scores": "scores",
    "pred_classes": "classes",
    "pred_masks": "masks",
    "pred_keypoints": "keypoints",
    "pred_keypoint_heatmaps": "keypoint_heatmaps",
}
KEYPOINT_SCORES = True  # pred_keypoints' third column is a per-keypoint score
FIRST_CLASS = 0  # pred_classes count the object classes from 0
STATIC_HEADS = [("proposal_generator", "rpn_head"), ("", "head")]  # R-CNN RPN, RetinaNet
REWRITABLE = True  # runner.backends.static_graph rewrites these detectors
# submodule path -> the stage (runner.stages) its forward is part of, marked on the eager model
# during the stage pass; nested entries win (the RPN's head inside the RPN). RetinaNet's decoding
# and NMS, and R-CNN's preprocessing, are no submodule's forward: they count as "other"
STAGE_MODULES = {
    "backbone": "backbone",
    "proposal_generator": "proposals",
    "proposal_generator.rpn_head": "head",
    "head": "head",
    "roi_heads": "boxes",
    "roi_heads.box_pooler": "roi_pool",
    "roi_heads.mask_pooler": "roi_pool",
    "roi_heads.keypoint_pooler": "roi_pool",
    "roi_heads.pooler": "roi_pool",
    "roi_heads.mask_head": "mask_head",
    "roi_heads.keypoint_head": "keypoint_head",
}

# The README's Install commands, on one line (a refusal is one line).
INSTALL = (
    "detectron2 is not installed. It is on no package registry; build it from source against "
    "the installed torch: pip install 'setuptools<81' fvcore iopath pycocotools && "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)

# Instances fields detectron2's R-CNN and RetinaNet use, as scripting_with_instances needs them.
SCRIPT_FIELDS = (
    ("proposal_boxes", "Boxes"),
    ("objectness_logits", "Tensor"),
    ("pred_boxes", "Boxes"),
    ("scores", "Tensor"),
    ("pred_classes", "Tensor"),
    ("pred_masks", "Tensor"),
    ("pred_keypoints", "Tensor"),
    ("pred_keypoint_heatmaps", "Tensor"),
)


class MissingDependency(RuntimeError):
    """A package the run needs is absent; the message says how to install it."""


def require() -> None:
    try:
        import detectron2  # noqa: F401
        from detectron2 import model_zoo  # noqa: F401  (imports pkg_resources)
    except ImportError as error:
        raise MissingDependency(f"{INSTALL}\n(import failed: {error})") from error


def check(cfg) -> None:
    """ValueError where detectron2 is absent, `arch` names no config of its model zoo or
    `arch_options` names a key it does not have (refused before a child starts, not reported
    after half a model is built)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        raise ValueError(f"the detectron2 models need detectron2. {INSTALL}")
    error = _arch_error(cfg.arch, tuple(spec.submodule_search_locations or ()))
    if error:
        raise ValueError(error)
    if cfg.arch_options:
        error = _options_error(json.dumps(asdict(cfg), sort_keys=True))
        if error:
            raise ValueError(error)


@functools.lru_cache(maxsize=64)
def _arch_error(arch: str, package: tuple[str, ...]) -> str:
    """The refusal for a model-zoo config path that is not there, naming the nearest ones (in
    its folder where that exists), or ''. The zoo's files are read from the installed package
    (detectron2/model_zoo/configs/, where model_zoo.get_config looks), without importing it."""
    for location in package:
        zoo = Path(location) / "model_zoo" / "configs"
        if not zoo.is_dir():
            continue
        if (zoo / arch).is_file():
            return ""
        folder = zoo / Path(arch).parent
        pool = folder if folder.is_dir() and folder != zoo else zoo
        candidates = sorted(
            str(path.relative_to(zoo))
            for path in pool.rglob("*")
            if path.suffix in (".yaml", ".py") and path.is_file()
        )
        near = difflib.get_close_matches(arch, candidates, n=3, cutoff=0.0)
        return (
            f"model.arch={arch}: no such config in detectron2's model zoo "
            f"(detectron2/model_zoo/configs/); nearest: {', '.join(near)}"
        )
    return ""  # no zoo folder to read: model_zoo.get_config says what it finds


@functools.lru_cache(maxsize=64)
def _options_error(model_json: str) -> str:
    """The refusal for a ModelConfig given as JSON (a sweep asks once per model and options,
    not once per job), or ''."""
    from runner.config import ModelConfig

    try:
        config(ModelConfig(**json.loads(model_json)))
    except ValueError as error:
        return str(error)
    return ""


def flat_options(options: dict, prefix: str = "") -> dict[str, Any]:
    """detectron2 keys as dotted names: `+model.arch_options.MODEL.RPN.X=1` on the command line
    arrives nested ({MODEL: {RPN: {X: 1}}}), a YAML mapping may name MODEL.RPN.X directly."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_options(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config(cfg, device: str = "cpu"):
    """The model zoo's config for cfg.arch with the run's thresholds and `arch_options` merged.
    Raises ValueError naming the option for a key detectron2 does not have or a wrong type."""
    from runner.library_noise import quiet_library_warnings

    quiet_library_warnings()
    require()
    from detectron2 import model_zoo

    d2cfg = model_zoo.get_config(cfg.arch, trained=False)
    d2cfg.MODEL.DEVICE = device
    d2cfg.MODEL.WEIGHTS = ""
    for section in ("ROI_HEADS", "RETINANET"):
        getattr(d2cfg.MODEL, section).SCORE_THRESH_TEST = cfg.score_thresh
        getattr(d2cfg.MODEL, section).NMS_THRESH_TEST = cfg.nms_thresh
    d2cfg.TEST.DETECTIONS_PER_IMAGE = cfg.detections_per_image
    for key, value in flat_options(cfg.arch_options).items():
        try:
            d2cfg.merge_from_list([key, value])
        except (AssertionError, KeyError, ValueError, TypeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "refused"
            raise ValueError(
                f"model.arch_options.{key}={value!r}: not a detectron2 config option of this "
                f"model ({reason})"
            ) from None
    return d2cfg


def build(cfg, device: torch.device) -> nn.Module:
    from detectron2.modeling import build_model

    return build_model(config(cfg, str(device)))


def load_state(model: nn.Module, state: dict, cfg) -> dict:
    """A checkpoint's tensors renamed to the model's (Caffe2-era and zoo names alike)."""
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

    return align_and_update_state_dicts(model.state_dict(), state, c2_conversion=False)


def _flatten_instances(layout: Layout, results: list) -> tuple[torch.Tensor, ...]:
    """Eager or scripted Instances (or their get_fields() dicts) -> the flat tuple."""
    return flatten(layout, [r if isinstance(r, dict) else r.get_fields() for r in results])


def _inputs(images, postprocess: bool) -> list[dict]:
    if postprocess:  # output size = input size, as the seed's MaskRCNNFPN_pproc
        return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    return [{"image": im} for im in images]


class _Inference:
    """The function TracingAdapter traces: images -> flat detections of one detectron2 model."""

    def __init__(self, postprocess: bool, layout: Layout):
        self.postprocess = postprocess
        self.layout = layout

    def __call__(self, model, *images):
        from detectron2.modeling.meta_arch.dense_detector import DenseDetector

        inputs = _inputs(images, self.postprocess)
        if isinstance(model, DenseDetector):
            if self.postprocess:
                results = [r["instances"] for r in model(inputs)]
            else:  # forward() minus detector_postprocess
                batched = model.preprocess_image(inputs)
                features = model.backbone(batched.tensor)
                features = [features[f] for f in model.head_in_features]
                results = model.forward_inference(batched, features, model.head(features))
        else:
            results = model.inference(inputs, do_postprocess=self.postprocess)
            if self.postprocess:
                results = [r["instances"] for r in results]
        return _flatten_instances(self.layout, results)


class _ScriptableRCNN(nn.Module):
    """What gets scripted for R-CNNs: image dicts -> field dicts, without post-processing
    (detectron2 cannot script it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableDense(nn.Module):
    """What gets scripted for dense detectors (RetinaNet): forward() minus detector_postprocess,
    which detectron2 skips under scripting anyway."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        images = self.model.preprocess_image(inputs)
        features = self.model.backbone(images.tensor)
        features = [features[f] for f in self.model.head_in_features]
        instances = self.model.forward_inference(images, features, self.model.head(features))
        return [i.get_fields() for i in instances]


class _ScriptPath(nn.Module):
    """images -> flat detections through a (scripted or eager) _D2Scriptable. Post-processing,
    when asked for, runs here in Python, after the scripted part."""

    def __init__(self, inner: nn.Module, postprocess: bool, layout: Layout):
        super().__init__()
        self.inner = inner
        self.postprocess = postprocess
        self.layout = layout

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.inner([{"image": im} for im in images])
        if not self.postprocess:
            return _flatten_instances(self.layout, results)
        from detectron2.modeling.postprocessing import detector_postprocess
        from detectron2.structures import Boxes, Instances

        processed = []
        for fields, image in zip(results, images, strict=True):
            h, w = image.shape[1], image.shape[2]
            instances = Instances((h, w))
            for name, value in fields.items():
                is_tensor_of_boxes = name.endswith("boxes") and not isinstance(value, Boxes)
                instances.set(name, Boxes(value) if is_tensor_of_boxes else value)
            processed.append(detector_postprocess(instances, h, w))
        return _flatten_instances(self.layout, processed)


def wrap(model: nn.Module, method: str, postprocess: bool, example) -> Exported:
    """detectron2's own ways: TracingAdapter (trace), scripting_with_instances (script)."""
    from detectron2.export import TracingAdapter

    layout = Layout("detectron2")
    if method == "trace":
        adapter = TracingAdapter(model, example, _Inference(postprocess, layout))
        return traced(adapter.eval(), model, example, layout)

    from detectron2.export import scripting_with_instances
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector
    from detectron2.structures import Boxes

    scriptable = _ScriptableDense if isinstance(model, DenseDetector) else _ScriptableRCNN
    eager = _ScriptPath(scriptable(model), postprocess, layout).eval()

    def script():
        fields = {name: Boxes if kind == "Boxes" else torch.Tensor for name, kind in SCRIPT_FIELDS}
        scripted = scripting_with_instances(scriptable(model).eval(), fields)
        path = _ScriptPath(scripted, postprocess, layout)
        path.training = False  # not .eval(): the scripted module's `training` is a constant
        return path

    return Exported(eager, model, method, example, script, layout)
