"""Model families: one module here per family (detectron2, torchvision), each the only place
that knows how its models are built, loaded, fed and wrapped. A family module provides:

    PIXELS            (channel order, value range) its models take: ("BGR", 255.0)
    RENAMES           its output field name -> the Detections name (runner.exported)
    KEYPOINT_SCORES   True: the third keypoint column is a score (else a visibility flag)
    FIRST_CLASS       the class index of its first object class (torchvision's 0 is the
                      background: 1); the accuracy pass maps classes to categories from it
    STATIC_HEADS      (parent path, attribute) of heads whose shapes depend on the input size
                      alone (runner.backends._parts compiles or graphs them)
    REWRITABLE        True: runner.backends.static_graph can rewrite its detectors
    STAGE_MODULES     submodule path -> stage (runner.stages): the eager model's parts, marked
                      while the stage pass runs
    check(cfg)        ValueError for a ModelConfig this machine cannot build (before any child)
    build(cfg, dev)   ModelConfig -> the model with its own initialisers (the caller seeds)
    load_state(model, state, cfg)   a checkpoint's tensors, aligned to the model's names
    wrap(model, method, postprocess, example) -> runner.exported.Exported

Adding a family is one module here; adding a model of a family is one conf/model/*.yaml.
The registry imports nothing heavy: `names()` reads the package, `get()` imports one module.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def names() -> list[str]:
    """The families there are (their module names), without importing them."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name[0] == "_")


def get(name: str) -> ModuleType:
    if name not in names():
        raise KeyError(f"model.family={name!r}; allowed: {names()}")
    return importlib.import_module(f"{__name__}.{name}")
