"""The modules TorchScript compiles for export=script, one per detectron2 meta-architecture
(runner.families.detectron2.wrap): image dicts -> per-image field dicts, without post-processing
(detectron2 cannot script it; the family's _ScriptPath runs it in Python after the call).
Scripting reads the names a forward uses from this module's globals, so detectron2 is imported
at the top here; the family imports this module only when it scripts."""

from __future__ import annotations

import torch
from detectron2.structures import ImageList
from torch import nn


class ScriptableRCNN(nn.Module):
    """What gets scripted for R-CNNs: image dicts -> field dicts, without post-processing
    (detectron2 cannot script it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class ScriptableDense(nn.Module):
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


class ScriptableProposals(nn.Module):
    """What gets scripted for ProposalNetwork (RPN only): image dicts -> proposal fields. Holds
    the model's parts, not the model: ProposalNetwork.forward cannot be scripted."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.proposal_generator = model.proposal_generator
        self.register_buffer("pixel_mean", model.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", model.pixel_std, persistent=False)
        self.size_divisibility: int = model.backbone.size_divisibility
        self.padding_constraints: dict[str, int] = dict(model.backbone.padding_constraints)

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        images = ImageList.from_tensors(
            [(x["image"] - self.pixel_mean) / self.pixel_std for x in inputs],
            self.size_divisibility,
            padding_constraints=self.padding_constraints,
        )
        proposals, _ = self.proposal_generator(images, self.backbone(images.tensor), None)
        return [p.get_fields() for p in proposals]


SCRIPTABLE = {
    "GeneralizedRCNN": ScriptableRCNN,
    "DenseDetector": ScriptableDense,
    "ProposalNetwork": ScriptableProposals,
}
# meta-architecture -> why export=script cannot compile it (detectron2's semantic segmentation
# head calls its convolutions' activation, a Python function, which TorchScript refuses)
NOT_SCRIPTABLE = {
    "SemanticSegmentor": "detectron2's SemSegFPNHead cannot be compiled by torch.jit.script "
    "(its Conv2d layers hold F.relu as a value); use export=trace",
    "PanopticFPN": "detectron2's SemSegFPNHead (Panoptic FPN's semantic head) cannot be "
    "compiled by torch.jit.script (its Conv2d layers hold F.relu as a value); use export=trace",
}
