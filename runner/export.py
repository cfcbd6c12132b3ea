"""Export: takes a model, its family and the run's export settings, returns an `Exported`: an eager
module with tensor-only I/O that a backend can optimize, and the means to turn it into TorchScript
(trace or script) and to decode its outputs into per-image detections.

Every module made here has the same calling convention: ``module(*images)`` with one CHW tensor
per image returns a flat tuple of tensors, the same fields for every image: every field the model
returns, boxes, scores and classes first, then the others sorted by the family's name for them
(detectron2: pred_keypoint_heatmaps, pred_keypoints, pred_masks; torchvision: keypoints,
keypoints_scores, masks). The eager module records those names in the `Layout` when it runs
(the parity reference runs it first); `decode` reads them back. detectron2 models are wrapped as
detectron2 wants to be traced (TracingAdapter) and scripted (scripting_with_instances);
torchvision models as torchvision supports (torch.jit.trace of a flattening wrapper,
torch.jit.script of the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from runner.backends import Unsupported
from runner.config import ModelConfig
from runner.parity import Detections

LEADING = ("boxes", "scores", "classes")  # the Detections names that come first, in this order
# each family's output name -> the Detections name (a name not here keeps its own, in `extra`)
RENAMES = {
    "detectron2": {
        "pred_boxes": "boxes",
        "scores": "scores",
        "pred_classes": "classes",
        "pred_masks": "masks",
        "pred_keypoints": "keypoints",
        "pred_keypoint_heatmaps": "keypoint_heatmaps",
    },
    "torchvision": {
        "boxes": "boxes",
        "scores": "scores",
        "labels": "classes",
        "masks": "masks",
        "keypoints": "keypoints",
        "keypoints_scores": "keypoint_scores",
    },
}

# Instances fields detectron2's R-CNN and RetinaNet use, as scripting_with_instances needs them.
D2_SCRIPT_FIELDS = (
    ("proposal_boxes", "Boxes"),
    ("objectness_logits", "Tensor"),
    ("pred_boxes", "Boxes"),
    ("scores", "Tensor"),
    ("pred_classes", "Tensor"),
    ("pred_masks", "Tensor"),
    ("pred_keypoints", "Tensor"),
    ("pred_keypoint_heatmaps", "Tensor"),
)


class Layout:
    """The family's field names of one image's part of the flat output, in order; recorded by
    the flattening code whenever it runs in Python (eager, while tracing or scripting's Python
    side), never inside torch.compile's tracing (that would be a side effect in the graph)."""

    def __init__(self, family: str, names: tuple[str, ...] = ()):
        self.family = family
        self.names = tuple(names)

    def ordered(self, names) -> list[str]:
        """`names` in flat-output order: the leading three, then the rest sorted."""
        renames = RENAMES[self.family]
        first = {renames.get(n, n): n for n in names if renames.get(n, n) in LEADING}
        missing = [name for name in LEADING if name not in first]
        if missing:
            raise ValueError(f"{self.family} output has no {missing} (fields: {sorted(names)})")
        return [first[n] for n in LEADING] + sorted(n for n in names if n not in first.values())

    def record(self, names: list[str]) -> None:
        if torch.compiler.is_compiling():
            return
        if self.names and tuple(names) != self.names:
            raise ValueError(f"output fields changed from {self.names} to {tuple(names)}")
        self.names = tuple(names)


def _as_tensor(name: str, value) -> torch.Tensor:
    value = getattr(value, "tensor", value)  # detectron2 Boxes
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"output field {name!r} is a {type(value).__name__}, not a tensor")
    return value


def flatten(layout: Layout, results: list[dict]) -> tuple[torch.Tensor, ...]:
    """Per-image field dicts -> the flat tuple, every field of every image, in layout order."""
    flat: list[torch.Tensor] = []
    for i, fields in enumerate(results):
        names = layout.ordered(fields)
        if i == 0:
            layout.record(names)
        flat += [_as_tensor(name, fields[name]) for name in names]
    return tuple(flat)


@dataclass
class Exported:
    module: nn.Module  # eager, tensor-only I/O
    model: nn.Module  # the detector inside `module`, for backends that rework its parts
    method: str  # trace | script
    example: tuple[torch.Tensor, ...]
    make_torchscript: Callable[[], torch.jit.ScriptModule]
    layout: Layout | None = None

    def to_torchscript(self) -> torch.jit.ScriptModule:
        return self.make_torchscript()

    def decode(self, flat: tuple[torch.Tensor, ...], batch: int) -> list[Detections]:
        """Split a flat output tuple into one Detections per image (on the CPU)."""
        names = self.layout.names if self.layout is not None else ()
        if not names:
            raise ValueError("decode before the eager module ran: the output layout is unknown")
        if len(flat) != batch * len(names):
            raise ValueError(
                f"{len(flat)} output tensors do not split into {batch} images of "
                f"{len(names)} fields {names}"
            )
        per_image = len(names)
        return [
            detections(self.layout.family, names, flat[i * per_image : (i + 1) * per_image])
            for i in range(batch)
        ]


def detections(family: str, names: tuple[str, ...], parts) -> Detections:
    """One image's output tensors, named by the family, as Detections. Keypoints keep x and y;
    their third column is detectron2's per-keypoint score (to `extra` as keypoint_scores) or
    torchvision's visibility flag, which torchvision sets to 1 for every keypoint (dropped)."""
    fields = {}
    for name, tensor in zip(names, parts, strict=True):
        fields[RENAMES[family].get(name, name)] = tensor.detach().float().cpu()
    keypoints = fields.pop("keypoints", None)
    if keypoints is not None:
        if family == "detectron2":
            fields["keypoint_scores"] = keypoints[..., 2]
        keypoints = keypoints[..., :2]
    return Detections(
        boxes=fields.pop("boxes").reshape(-1, 4),
        scores=fields.pop("scores").reshape(-1),
        classes=fields.pop("classes").reshape(-1).long(),
        masks=fields.pop("masks", None),
        keypoints=keypoints,
        extra=fields,
    )


def wrap(
    model: nn.Module,
    model_cfg: ModelConfig,
    method: str,
    postprocess: bool,
    example: tuple[torch.Tensor, ...],
) -> Exported:
    """Wrap `model` (of `model_cfg`'s family) for `method` (trace | script); `example` is the
    opt batch, which tracing records."""
    if method == "script" and not model_cfg.scriptable:
        raise Unsupported(f"export=script: {model_cfg.not_scriptable_reason}")
    if model_cfg.family == "detectron2":
        return _wrap_detectron2(model, method, postprocess, example)
    return _wrap_torchvision(model, method, example)


def _traced(
    module: nn.Module, model: nn.Module, example: tuple[torch.Tensor, ...], layout: Layout
) -> Exported:
    """Exported whose TorchScript form is `module` traced on `example`."""

    def trace():
        return torch.jit.trace(module, example, check_trace=False)

    return Exported(module, model, "trace", example, trace, layout)


def _flatten_instances(layout: Layout, results: list) -> tuple[torch.Tensor, ...]:
    """Eager or scripted Instances (or their get_fields() dicts) -> the flat tuple."""
    return flatten(layout, [r if isinstance(r, dict) else r.get_fields() for r in results])


def _d2_inputs(images, postprocess: bool) -> list[dict]:
    if postprocess:  # output size = input size, as the seed's MaskRCNNFPN_pproc
        return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    return [{"image": im} for im in images]


class _D2Inference:
    """The function TracingAdapter traces: images -> flat detections of one detectron2 model."""

    def __init__(self, postprocess: bool, layout: Layout):
        self.postprocess = postprocess
        self.layout = layout

    def __call__(self, model, *images):
        from detectron2.modeling.meta_arch.dense_detector import DenseDetector

        inputs = _d2_inputs(images, self.postprocess)
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


class _D2ScriptableRCNN(nn.Module):
    """What gets scripted for R-CNNs: image dicts -> field dicts, without post-processing
    (detectron2 cannot script it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _D2ScriptableDense(nn.Module):
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


class _D2ScriptPath(nn.Module):
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


def _wrap_detectron2(model, method, postprocess, example) -> Exported:
    from detectron2.export import TracingAdapter

    layout = Layout("detectron2")
    if method == "trace":
        adapter = TracingAdapter(model, example, _D2Inference(postprocess, layout))
        return _traced(adapter.eval(), model, example, layout)

    from detectron2.export import scripting_with_instances
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector
    from detectron2.structures import Boxes

    scriptable = _D2ScriptableDense if isinstance(model, DenseDetector) else _D2ScriptableRCNN
    eager = _D2ScriptPath(scriptable(model), postprocess, layout).eval()

    def script():
        fields = {
            name: Boxes if kind == "Boxes" else torch.Tensor for name, kind in D2_SCRIPT_FIELDS
        }
        scripted = scripting_with_instances(scriptable(model).eval(), fields)
        path = _D2ScriptPath(scripted, postprocess, layout)
        path.training = False  # not .eval(): the scripted module's `training` is a constant
        return path

    return Exported(eager, model, method, example, script, layout)


class _TorchvisionFlat(nn.Module):
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


def _wrap_torchvision(model, method, example) -> Exported:
    layout = Layout("torchvision")
    eager = _TorchvisionFlat(model, layout).eval()
    if method == "trace":
        return _traced(eager, model, example, layout)

    def script():
        return _TorchvisionFlat(torch.jit.script(model), layout).eval()

    return Exported(eager, model, method, example, script, layout)
