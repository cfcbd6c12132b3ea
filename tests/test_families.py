"""The model-family seam (runner.families): each family module provides the whole interface,
the registry lists them without importing them, and config validation asks the registry."""

from __future__ import annotations

import pytest

from runner import families

INTERFACE = (
    "PIXELS",
    "RENAMES",
    "KEYPOINT_SCORES",
    "STATIC_HEADS",
    "REWRITABLE",
    "STAGE_MODULES",
    "check",
    "build",
    "load_state",
    "wrap",
)


def test_the_registry_lists_the_families():
    assert families.names() == ["detectron2", "torchvision"]
    with pytest.raises(KeyError, match="allowed"):
        families.get("caffe")


@pytest.mark.parametrize("name", families.names())
def test_every_family_provides_the_interface(name):
    family = families.get(name)
    missing = [attr for attr in INTERFACE if not hasattr(family, attr)]
    assert not missing
    order, scale = family.PIXELS
    assert order in ("RGB", "BGR") and scale in (1.0, 255.0)
    assert "classes" in set(family.RENAMES.values()) | set(family.RENAMES)
    from runner import stages

    assert set(family.STAGE_MODULES.values()) <= set(stages.STAGES) - {"other"}


def test_an_unknown_family_is_refused_by_the_config(make_config):
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match="model.family='caffe'"):
        make_config("model.family=caffe")
