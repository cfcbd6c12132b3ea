"""Export: takes a model, its family and the run's export settings, returns an `Exported`: an eager
module with tensor-only I/O that a backend can optimize, and the means to turn it into TorchScript
(trace or script) and to decode its outputs into per-image detections.

Every module made here has the same calling convention: ``module(*images)`` with one CHW tensor
per image returns a flat tuple of tensors, ``len(FIELDS)`` or ``len(FIELDS) - 1`` (no masks) per
image, in the order of FIELDS. detectron2 models are wrapped as detectron2 wants to be traced
(TracingAdapter) and scripted (scripting_with_instances); torchvision models as torchvision
supports (torch.jit.trace of a flattening wrapper, torch.jit.script of the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from runner.backends import Unsupported
from runner.config import ModelConfig
from runner.parity import Detections

FIELDS = ("boxes", "scores", "classes", "masks")

# Instances fields detectron2's R-CNN and RetinaNet use, as scripting_with_instances needs them.
D2_SCRIPT_FIELDS = (
    ("proposal_boxes", "Boxes"),
    ("objectness_logits", "Tensor"),
    ("pred_boxes", "Boxes"),
    ("scores", "Tensor"),
    ("pred_classes", "Tensor"),
    ("pred_masks", "Tensor"),
)


@dataclass
class Exported:
    module: nn.Module  # eager, tensor-only I/O
    model: nn.Module  # the detector inside `module`, for backends that rework its parts
    method: str  # trace | script
    example: tuple[torch.Tensor, ...]
    make_torchscript: Callable[[], torch.jit.ScriptModule]

    def to_torchscript(self) -> torch.jit.ScriptModule:
        return self.make_torchscript()

    def decode(self, flat: tuple[torch.Tensor, ...], batch: int) -> list[Detections]:
        """Split a flat output tuple into one Detections per image (on the CPU)."""
        if len(flat) % batch:
            raise ValueError(f"{len(flat)} output tensors do not split into {batch} images")
        per_image = len(flat) // batch
        if per_image not in (3, 4):
            raise ValueError(f"expected 3 or 4 tensors per image, got {per_image}")
        images = []
        for i in range(batch):
            parts = [t.detach().float().cpu() for t in flat[i * per_image : (i + 1) * per_image]]
            images.append(
                Detections(
                    boxes=parts[0].reshape(-1, 4),
                    scores=parts[1].reshape(-1),
                    classes=parts[2].reshape(-1).long(),
                    masks=parts[3] if per_image == 4 else None,
                )
            )
        return images


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


def _traced(module: nn.Module, model: nn.Module, example: tuple[torch.Tensor, ...]) -> Exported:
    """Exported whose TorchScript form is `module` traced on `example`."""
    return Exported(
        module, model, "trace", example, lambda: torch.jit.trace(module, example, check_trace=False)
    )


def _flatten_instances(results: list) -> tuple[torch.Tensor, ...]:
    """Eager or scripted Instances (or their get_fields() dicts) -> flat tuple in FIELDS order."""
    flat: list[torch.Tensor] = []
    for result in results:
        fields = result if isinstance(result, dict) else result.get_fields()
        boxes = fields["pred_boxes"]
        flat += [getattr(boxes, "tensor", boxes), fields["scores"], fields["pred_classes"]]
        if "pred_masks" in fields:
            flat.append(fields["pred_masks"])
    return tuple(flat)


def _d2_inputs(images, postprocess: bool) -> list[dict]:
    if postprocess:  # output size = input size, as the seed's MaskRCNNFPN_pproc
        return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    return [{"image": im} for im in images]


class _D2Inference:
    """The function TracingAdapter traces: images -> flat detections of one detectron2 model."""

    def __init__(self, postprocess: bool):
        self.postprocess = postprocess

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
        return _flatten_instances(results)


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

    def __init__(self, inner: nn.Module, postprocess: bool):
        super().__init__()
        self.inner = inner
        self.postprocess = postprocess

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.inner([{"image": im} for im in images])
        if not self.postprocess:
            return _flatten_instances(results)
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
        return _flatten_instances(processed)


def _wrap_detectron2(model, method, postprocess, example) -> Exported:
    from detectron2.export import TracingAdapter

    if method == "trace":
        return _traced(
            TracingAdapter(model, example, _D2Inference(postprocess)).eval(), model, example
        )

    from detectron2.export import scripting_with_instances
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector
    from detectron2.structures import Boxes

    scriptable = _D2ScriptableDense if isinstance(model, DenseDetector) else _D2ScriptableRCNN
    eager = _D2ScriptPath(scriptable(model), postprocess).eval()

    def script():
        fields = {
            name: Boxes if kind == "Boxes" else torch.Tensor for name, kind in D2_SCRIPT_FIELDS
        }
        scripted = scripting_with_instances(scriptable(model).eval(), fields)
        path = _D2ScriptPath(scripted, postprocess)
        path.training = False  # not .eval(): the scripted module's `training` is a constant
        return path

    return Exported(eager, model, method, example, script)


class _TorchvisionFlat(nn.Module):
    """images -> flat detections for a torchvision detector (eager, traced or scripted)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(list(images))
        if isinstance(output, tuple):  # scripted torchvision models return (losses, detections)
            output = output[1]
        flat = []
        for d in output:
            flat += [d["boxes"], d["scores"], d["labels"]]
            if "masks" in d:
                flat.append(d["masks"])
        return tuple(flat)


def _wrap_torchvision(model, method, example) -> Exported:
    eager = _TorchvisionFlat(model).eval()
    if method == "trace":
        return _traced(eager, model, example)

    def script():
        return _TorchvisionFlat(torch.jit.script(model)).eval()

    return Exported(eager, model, method, example, script)
