"""Export: takes a model, its ModelConfig and the run's export settings, returns the model wrapped
by its family (runner.families) as a runner.exported.Exported, or `Unsupported` where the model
cannot be exported that way (scripting a model its file marks as not scriptable)."""

from __future__ import annotations

import torch
from torch import nn

from runner import families
from runner.backends import Unsupported
from runner.config import ModelConfig
from runner.exported import Exported


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
    return families.get(model_cfg.family).wrap(model, method, postprocess, example)
