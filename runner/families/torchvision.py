"""The torchvision family: torchvision.models.detection builders (model.arch names one) with
their own initialisers, RGB pixels in 0..1, and torch.jit.trace of a flattening wrapper or
torch.jit.script of the model."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import sys
from pathlib import Path

import torch
from torch import nn

from runner.exported import Exported, Layout, flatten, traced

PIXELS = ("RGB", 1.0)
# boxes, scores, masks and keypoints are named as Detections names them already
RENAMES = {"labels": "classes", "keypoints_scores": "keypoint_scores"}
KEYPOINT_SCORES = False  # the third keypoint column is a visibility flag, always 1
FIRST_CLASS = 1  # labels: 0 is the background, objects from 1
STATIC_HEADS = [("rpn", "head"), ("", "head")]  # R-CNN RPN; RetinaNet, FCOS
REWRITABLE = False  # runner.backends.static_graph rewrites only detectron2 detectors
# submodule path -> the stage (runner.stages) its forward is part of, marked on the eager model
# during the stage pass; nested entries win. Mask pasting (transform.postprocess) is no
# submodule's forward: it counts as "other"
STAGE_MODULES = {
    "transform": "preprocess",
    "backbone": "backbone",
    "rpn": "proposals",
    "rpn.head": "head",
    "head": "head",
    "roi_heads": "boxes",
    "roi_heads.box_roi_pool": "roi_pool",
    "roi_heads.mask_roi_pool": "roi_pool",
    "roi_heads.keypoint_roi_pool": "roi_pool",
    "roi_heads.mask_head": "mask_head",
    "roi_heads.mask_predictor": "mask_head",
    "roi_heads.keypoint_head": "keypoint_head",
    "roi_heads.keypoint_predictor": "keypoint_head",
}


def check(cfg) -> None:
    """ValueError where `arch_options` names a keyword the builder does not use: torchvision's
    builders pass unknown keywords on to classes that swallow them, so a misspelt one would run
    a whole benchmark without it. (torchvision itself comes with torch's install.)"""
    if cfg.arch_options:
        options = json.dumps(cfg.arch_options, sort_keys=True)
        error = _options_error(cfg.arch, options, cfg.num_classes)
        if error:
            raise ValueError(error)


def _builder(arch: str):
    import torchvision.models.detection as detection

    builder = getattr(detection, arch, None)
    if builder is None or not callable(builder):
        raise ValueError(f"model.arch={arch!r} is not a torchvision.models.detection builder")
    return builder


def _fixed_arguments(num_classes: int) -> dict:
    """What every build passes besides `arch_options`: no weights to download, the classes."""
    return {"weights": None, "weights_backbone": None, "num_classes": num_classes}


@functools.lru_cache(maxsize=64)
def _options_error(arch: str, options_json: str, num_classes: int) -> str:
    """The refusal for these builder keywords (JSON), or ''; once per builder and keywords (a
    sweep asks for every job). A builder that is not there is the build's to report."""
    options = json.loads(options_json)
    try:
        builder = _builder(arch)
    except ValueError:
        return ""
    try:
        unused, taken = unused_keywords(builder, options, _fixed_arguments(num_classes))
    except Exception as error:  # noqa: BLE001 - the builder's own refusal of a value or type
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"model.arch_options={options}: {arch} refused them ({reason})"
    if not unused:
        return ""
    named = []
    for key in unused:
        near = difflib.get_close_matches(key, sorted(taken), n=3)
        named.append(f"{key}={options[key]!r}" + (f" (nearest: {', '.join(near)})" if near else ""))
    return (
        f"model.arch_options: {arch} uses no keyword {'; '.join(named)}; torchvision builders "
        "pass keywords they do not know on without using them, so this would run without it"
    )


def unused_keywords(builder, options: dict, fixed: dict) -> tuple[list[str], set[str]]:
    """Build `builder(**fixed, **options)` on the meta device (no memory, no initialisation
    work) and watch every call into the builder's package (torchvision.models.detection): a
    keyword is used when one of those functions takes a parameter of its name and receives its
    value. Returns the unused keys, in order, and every parameter name those functions take."""
    package = str(Path(inspect.getfile(builder)).parent)
    used: set[str] = set()
    taken: set[str] = set()

    def watch(frame, event, arg):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(package):
            return
        parameters = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        taken.update(parameters)
        for key in options.keys() - used:
            if key in parameters and _same(frame.f_locals.get(key), options[key]):
                used.add(key)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        with torch.device("meta"):
            builder(**fixed, **options)
    finally:
        sys.setprofile(previous)
    return [key for key in options if key not in used], taken - set(fixed)


def _same(received, given) -> bool:
    try:
        return received is given or (type(received) is type(given) and bool(received == given))
    except Exception:  # noqa: BLE001 - a value without a plain equality
        return False


def build(cfg, device: torch.device) -> nn.Module:
    """The builder's model with the run's thresholds, set where the model keeps them (the ROI
    heads of an R-CNN, the detector itself for dense ones), so no keyword name is guessed."""
    builder = _builder(cfg.arch)
    model = builder(**_fixed_arguments(cfg.num_classes), **cfg.arch_options)
    holder = getattr(model, "roi_heads", model)
    for name, value in (
        ("score_thresh", cfg.score_thresh),
        ("nms_thresh", cfg.nms_thresh),
        ("detections_per_img", cfg.detections_per_image),
    ):
        if not hasattr(holder, name):
            raise ValueError(f"model.arch={cfg.arch}: {type(holder).__name__} has no {name}")
        setattr(holder, name, value)
    return model


def load_state(model: nn.Module, state: dict, cfg) -> dict:
    return state  # torchvision checkpoints use the model's own names


class _Flat(nn.Module):
    """images -> flat detections for a torchvision detector (eager, traced or scripted)."""

    def __init__(self, model: nn.Module, layout: Layout):
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(list(images))
        if isinstance(output, tuple):  # scripted torchvision models return (losses, detections)
            output = output[1]
        return flatten(self.layout, output)


def wrap(model: nn.Module, method: str, postprocess: bool, example) -> Exported:
    """forward() always post-processes in torchvision (`postprocess` changes nothing)."""
    layout = Layout("torchvision")
    eager = _Flat(model, layout).eval()
    if method == "trace":
        return traced(eager, model, example, layout)

    def script():
        return _Flat(torch.jit.script(model), layout).eval()

    return Exported(eager, model, method, example, script, layout)
