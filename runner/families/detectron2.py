"""The detectron2 family: model-zoo configs, YAML (built with detectron2's build_model) and
LazyConfig .py (LazyConfig.load, then instantiate), its .pkl / .pth checkpoints aligned to the
model's names, BGR pixels in 0..255, and the exports detectron2 supports (TracingAdapter for
trace, scripting_with_instances for script) for every output kind of its meta-architectures
(INFERENCE: instances, proposals, sem_seg, and panoptic segments combined after the call)."""

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
    "proposal_boxes": "boxes",  # ProposalNetwork: class-less boxes, objectness logits as scores
    "objectness_logits": "scores",
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
    "sem_seg_head": "head",  # SemanticSegmentor's and Panoptic FPN's, as static_graph marks it
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


def is_lazy(arch: str) -> bool:
    """Whether `arch` names a LazyConfig (.py) of the model zoo, not a YAML config."""
    return arch.endswith(".py")


def config(cfg, device: str = "cpu"):
    """The model zoo's config for cfg.arch with the run's thresholds and `arch_options` merged:
    a CfgNode for YAML, a LazyConfig (omegaconf DictConfig) for .py. Raises ValueError naming
    the option for a key detectron2 does not have or a wrong type."""
    from runner.library_noise import quiet_library_warnings

    quiet_library_warnings()
    require()
    if is_lazy(cfg.arch):
        from runner.families._detectron2_lazy import lazy_config

        return lazy_config(cfg, flat_options(cfg.arch_options))
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
    """The model of cfg.arch: detectron2's build_model of a YAML config, instantiate of a
    LazyConfig's `model`. A package the config's code needs and this machine lacks (mmdet for
    Misc/mmdet_*.py) makes it unsupported, naming the package."""
    from runner.backends import Unsupported

    try:
        if is_lazy(cfg.arch):
            from detectron2.config import instantiate

            model = instantiate(config(cfg, str(device)).model)
        else:
            from detectron2.modeling import build_model

            model = build_model(config(cfg, str(device)))
    except ModuleNotFoundError as error:
        raise Unsupported(
            f"model.arch={cfg.arch} needs the package {error.name!r}, which is not installed "
            f"here ({error})"
        ) from error
    if torch.device(device).type != "cuda":
        gap = _without_cpu_kernel(model)
        if gap:
            raise Unsupported(
                f"device={device}: {gap} has no CPU kernel in detectron2 (layers/deform_conv.py "
                "runs it on CUDA only); run this config with device=cuda"
            )
    return model


def _without_cpu_kernel(model: nn.Module) -> str:
    """The first layer detectron2 can only run on CUDA, named, or '': modulated deformable
    convolutions, and deformable ones of more than one offset group (the plain ones run on the
    CPU through torchvision's deform_conv2d)."""
    from detectron2.layers.deform_conv import DeformConv, ModulatedDeformConv

    for name, module in model.named_modules():
        modulated = isinstance(module, ModulatedDeformConv)
        grouped = isinstance(module, DeformConv) and module.deformable_groups != 1
        if modulated or grouped:
            return f"{type(module).__name__} ({name})"
    return ""


def load_state(model: nn.Module, state: dict, cfg) -> dict:
    """A checkpoint's tensors renamed to the model's (Caffe2-era and zoo names alike)."""
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

    return align_and_update_state_dicts(model.state_dict(), state, c2_conversion=False)


def _fields(result) -> dict:
    """One image's answer of any meta-architecture as one dict of named outputs: Instances
    (detections or proposals) by their fields, a post-processed dict ({"instances" |
    "proposals": Instances, "sem_seg": Tensor}) by its parts, a bare tensor as sem_seg."""
    if isinstance(result, torch.Tensor):
        return {"sem_seg": result}
    if not isinstance(result, dict):
        return result.get_fields()
    fields = {}
    for name, value in result.items():
        if name in ("instances", "proposals"):
            fields.update(value if isinstance(value, dict) else value.get_fields())
        else:
            fields[name] = value
    return fields


def _flatten_instances(layout: Layout, results: list) -> tuple[torch.Tensor, ...]:
    """Eager or scripted answers (Instances, their get_fields() dicts, post-processed dicts,
    sem_seg tensors), one per image -> the flat tuple."""
    return flatten(layout, [_fields(r) for r in results])


def _inputs(images, postprocess: bool) -> list[dict]:
    if postprocess:  # output size = input size, as the seed's MaskRCNNFPN_pproc
        return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    return [{"image": im} for im in images]


def _normalised(model, inputs: list[dict]):
    """detectron2's preprocess_image for meta-architectures without one (ProposalNetwork,
    SemanticSegmentor): normalise, pad to the backbone's divisibility, batch."""
    from detectron2.structures import ImageList

    mean, std = model.pixel_mean, model.pixel_std
    images = [(x["image"].to(mean) - mean) / std for x in inputs]
    return ImageList.from_tensors(
        images,
        model.backbone.size_divisibility,
        padding_constraints=model.backbone.padding_constraints,
    )


# How each meta-architecture answers in inference, as a list of per-image results: the model's
# own forward where the run post-processes (as a user calls it), else its inference minus
# detector_postprocess / sem_seg_postprocess (the seed's timed call). Looked up by the model's
# class and then its bases (a subclass answers as its nearest registered base does).


def _rcnn(model, inputs, postprocess: bool) -> list:
    results = model.inference(inputs, do_postprocess=postprocess)
    return [r["instances"] for r in results] if postprocess else results


def _dense(model, inputs, postprocess: bool) -> list:
    if postprocess:
        return [r["instances"] for r in model(inputs)]
    batched = model.preprocess_image(inputs)  # forward() minus detector_postprocess
    features = model.backbone(batched.tensor)
    features = [features[f] for f in model.head_in_features]
    return model.forward_inference(batched, features, model.head(features))


def _proposals(model, inputs, postprocess: bool) -> list:
    """ProposalNetwork (RPN only): proposal_boxes and objectness_logits per image."""
    if postprocess:
        return model(inputs)
    images = _normalised(model, inputs)
    proposals, _ = model.proposal_generator(images, model.backbone(images.tensor), None)
    return proposals


def _semantic(model, inputs, postprocess: bool) -> list:
    """SemanticSegmentor: per-class logits of every pixel (C, H, W), at the padded size
    without post-processing."""
    if postprocess:
        return model(inputs)
    images = _normalised(model, inputs)
    results, _ = model.sem_seg_head(model.backbone(images.tensor), None)
    return list(results)


def _panoptic(model, inputs, postprocess: bool) -> list:
    """Panoptic FPN: instances and sem_seg; post-processed as its inference does it, except
    that the panoptic combination runs after the call (`_combine`: Python over the answers'
    values, which neither trace nor script can hold)."""
    from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess

    instances, sem_seg = model.inference(inputs, do_postprocess=False)
    if not postprocess:
        return [{"instances": i, "sem_seg": s} for i, s in zip(instances, sem_seg, strict=True)]
    results = []
    for found, logits, image in zip(instances, sem_seg, inputs, strict=True):
        height, width = image["height"], image["width"]
        results.append(
            {
                "instances": detector_postprocess(found, height, width),
                "sem_seg": sem_seg_postprocess(logits, found.image_size, height, width),
            }
        )
    return results


INFERENCE = {
    "PanopticFPN": _panoptic,
    "GeneralizedRCNN": _rcnn,
    "ProposalNetwork": _proposals,
    "SemanticSegmentor": _semantic,
    "DenseDetector": _dense,  # RetinaNet, FCOS
}


def meta_architecture(model: nn.Module) -> str:
    """The INFERENCE entry that answers for `model`: its class's or its nearest base's name.
    Raises Unsupported for a model none covers."""
    for cls in type(model).__mro__:
        if cls.__name__ in INFERENCE:
            return cls.__name__
    from runner.backends import Unsupported

    raise Unsupported(
        f"meta-architecture {type(model).__name__}: its outputs are not read by d2bench "
        f"(covered: {', '.join(sorted(INFERENCE))})"
    )


def _check_inputs(model: nn.Module, kind: str) -> None:
    """Unsupported for a model that needs more than images: a Fast R-CNN without a proposal
    generator reads precomputed proposals from each input (PrecomputedProposals)."""
    if kind in ("GeneralizedRCNN", "PanopticFPN") and model.proposal_generator is None:
        from runner.backends import Unsupported

        raise Unsupported(
            f"{type(model).__name__} without a proposal generator (MODEL.PROPOSAL_GENERATOR."
            "NAME=PrecomputedProposals, Fast R-CNN) reads precomputed proposals from each "
            "input, and a benchmark's inputs are images only; use a config with an RPN "
            "(faster_rcnn_*)"
        )


class _Inference:
    """The function TracingAdapter traces: images -> flat answers of one detectron2 model."""

    def __init__(self, postprocess: bool, layout: Layout, kind: str = "GeneralizedRCNN"):
        self.postprocess = postprocess
        self.layout = layout
        self.kind = kind

    def __call__(self, model, *images):
        inputs = _inputs(images, self.postprocess)
        results = INFERENCE[self.kind](model, inputs, self.postprocess)
        return _flatten_instances(self.layout, results)


def _combine(model: nn.Module):
    """The panoptic step of Panoptic FPN's inference, on a decoded image (instances with pasted
    masks, sem_seg at the image size): detectron2's combine_semantic_and_instance_outputs with
    the model's thresholds, as runner.exported.Exported.after."""
    from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
    from detectron2.structures import Instances

    from runner.exported import Panoptic

    def after(found):
        if found.sem_seg is None or found.masks is None:
            return found
        size = tuple(found.sem_seg.shape[-2:])
        instances = Instances(size)
        instances.scores = found.scores
        instances.pred_classes = found.classes
        instances.pred_masks = found.masks.reshape(len(found), *size) > 0.5
        segments, info = combine_semantic_and_instance_outputs(
            instances,
            found.sem_seg.argmax(dim=0),
            model.combine_overlap_thresh,
            model.combine_stuff_area_thresh,
            model.combine_instances_score_thresh,
        )
        found.panoptic = Panoptic(
            segments=segments.long(),
            ids=torch.tensor([s["id"] for s in info], dtype=torch.long),
            categories=torch.tensor([s["category_id"] for s in info], dtype=torch.long),
            isthing=torch.tensor([bool(s["isthing"]) for s in info], dtype=torch.bool),
        )
        return found

    return after


class _ScriptPath(nn.Module):
    """images -> flat answers through a (scripted or eager) scriptable module (SCRIPTABLE).
    Post-processing, when asked for, runs here in Python, after the scripted part: instances
    and proposals through detector_postprocess, sem_seg through sem_seg_postprocess."""

    def __init__(self, inner: nn.Module, postprocess: bool, layout: Layout):
        super().__init__()
        self.inner = inner
        self.postprocess = postprocess
        self.layout = layout

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.inner([{"image": im} for im in images])
        if not self.postprocess:
            return _flatten_instances(self.layout, results)
        from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
        from detectron2.structures import Boxes, Instances

        processed = []
        for fields, image in zip(results, images, strict=True):
            h, w = image.shape[1], image.shape[2]
            fields = dict(fields)
            answer = {}
            if "sem_seg" in fields:
                answer["sem_seg"] = sem_seg_postprocess(fields.pop("sem_seg"), (h, w), h, w)
            if fields:
                instances = Instances((h, w))
                for name, value in fields.items():
                    is_tensor_of_boxes = name.endswith("boxes") and not isinstance(value, Boxes)
                    instances.set(name, Boxes(value) if is_tensor_of_boxes else value)
                answer["instances"] = detector_postprocess(instances, h, w)
            processed.append(answer)
        return _flatten_instances(self.layout, processed)


def wrap(model: nn.Module, method: str, postprocess: bool, example) -> Exported:
    """detectron2's own ways: TracingAdapter (trace), scripting_with_instances (script), for
    every meta-architecture of INFERENCE. Panoptic FPN's panoptic combination runs after the
    call, on the decoded answer (Exported.after), where the run post-processes."""
    from detectron2.export import TracingAdapter

    kind = meta_architecture(model)
    _check_inputs(model, kind)
    layout = Layout("detectron2")
    after = _combine(model) if kind == "PanopticFPN" and postprocess else None
    if method == "trace":
        adapter = TracingAdapter(model, example, _Inference(postprocess, layout, kind))
        exported = traced(adapter.eval(), model, example, layout)
        exported.after = after
        return exported

    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    from runner.backends import Unsupported
    from runner.families._detectron2_scriptable import NOT_SCRIPTABLE, SCRIPTABLE

    if kind in NOT_SCRIPTABLE:
        raise Unsupported(f"export=script: {NOT_SCRIPTABLE[kind]}")
    scriptable = SCRIPTABLE[kind]
    eager = _ScriptPath(scriptable(model), postprocess, layout).eval()

    def script():
        fields = {name: Boxes if of == "Boxes" else torch.Tensor for name, of in SCRIPT_FIELDS}
        scripted = scripting_with_instances(scriptable(model).eval(), fields)
        path = _ScriptPath(scripted, postprocess, layout)
        path.training = False  # not .eval(): the scripted module's `training` is a constant
        return path

    return Exported(eager, model, method, example, script, layout, after)
