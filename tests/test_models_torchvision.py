"""Models, on a small torchvision detector: seeded builds, calibration of random weights, and
checkpoints loaded without running code from the file."""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch
import yaml

from runner.config import ModelConfig
from runner.run import export, inputs, models
from tests.helpers import CONF, assert_logit_layers_exist, option_files

CPU = torch.device("cpu")
HEIGHT, WIDTH = 160, 224


def model_config(name: str = "tv_fasterrcnn_mobilenet", **changes) -> ModelConfig:
    data = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    return dataclasses.replace(ModelConfig(**data), **changes)


@pytest.fixture(scope="module")
def mobilenet_cfg() -> ModelConfig:
    return model_config()


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_build_is_seeded(mobilenet_cfg):
    first, label = models.build(mobilenet_cfg, CPU, seed=0)
    second, _ = models.build(mobilenet_cfg, CPU, seed=0)
    third, _ = models.build(mobilenet_cfg, CPU, seed=1)
    assert label == "random(seed=0)"
    assert not first.training
    a, b, c = state_of(first), state_of(second), state_of(third)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_build_applies_thresholds(mobilenet_cfg):
    cfg = dataclasses.replace(mobilenet_cfg, score_thresh=0.3, detections_per_image=7)
    model, _ = models.build(cfg, CPU, seed=0)
    assert model.roi_heads.score_thresh == 0.3
    assert model.roi_heads.detections_per_img == 7


def test_build_rejects_an_unknown_torchvision_builder(mobilenet_cfg):
    with pytest.raises(ValueError, match="model.arch"):
        models.build(dataclasses.replace(mobilenet_cfg, arch="no_such_builder"), CPU, seed=0)


@pytest.mark.parametrize(
    "path",
    [p for p in option_files("model") if yaml.safe_load(p.read_text())["family"] == "torchvision"],
    ids=lambda p: p.stem,
)
def test_logit_layers_name_layers_of_the_model(path):
    """A misspelt logit layer would be skipped silently (no calibration, no warning)."""
    assert_logit_layers_exist(path)


# ---- calibration -----------------------------------------------------------------------------


def _image() -> torch.Tensor:
    photo = inputs.load_photo(None)
    return inputs.to_tensor(inputs.cover_and_crop(photo, HEIGHT, WIDTH), "torchvision")


def _outputs_after_calibration(cfg: ModelConfig, logit_std: float, residual_scale: float):
    model, _ = models.build(cfg, CPU, seed=0)
    image = _image()
    exported = export.wrap(model, cfg, "trace", True, (image,))
    counts = models.calibrate(
        model, lambda: exported.module(image), cfg.logit_layers, logit_std, residual_scale
    )
    branch_ends = models._residual_branch_ends(model)
    norm_var, logits = {}, {}
    hooks = []
    for name, module in model.named_modules():
        if type(module).__name__ in models.NORMS:

            def on_norm(module, args, output, name=name):
                norm_var.setdefault(name, (float(output.var()), id(module) in branch_ends))

            hooks.append(module.register_forward_hook(on_norm))
        elif models._matches(name, cfg.logit_layers):

            def on_logits(module, args, output, name=name):
                logits.setdefault(name, []).append(output.detach().double().flatten())

            hooks.append(module.register_forward_hook(on_logits))
    with torch.no_grad():
        exported.module(image)
    for hook in hooks:
        hook.remove()
    stds = {name: float(torch.cat(parts).std(unbiased=False)) for name, parts in logits.items()}
    return counts, norm_var, stds


def test_calibrate_puts_norm_outputs_near_unit_variance_and_logits_at_logit_std(mobilenet_cfg):
    counts, norm_var, logit_stds = _outputs_after_calibration(
        mobilenet_cfg, logit_std=3.0, residual_scale=0.1
    )
    assert counts["norms"] == len(norm_var) > 10
    assert counts["logit_layers"] == len(mobilenet_cfg.logit_layers) == len(logit_stds)
    assert counts["residual_branches"] >= 1
    ends = [v for v, is_end in norm_var.values() if is_end]
    others = [v for v, is_end in norm_var.values() if not is_end]
    assert len(ends) == counts["residual_branches"]
    assert all(0.9 < v < 1.1 for v in others), others
    assert all(0.1**2 * 0.9 < v < 0.1**2 * 1.1 for v in ends), ends  # scaled by residual_scale
    for name, std in logit_stds.items():
        assert std == pytest.approx(3.0, rel=0.1), name


def test_calibrate_leaves_a_logit_layer_that_matches_nothing(mobilenet_cfg):
    cfg = dataclasses.replace(mobilenet_cfg, logit_layers=["no.such.layer"])
    counts, _, stds = _outputs_after_calibration(cfg, logit_std=2.0, residual_scale=0.1)
    assert counts["logit_layers"] == 0 and stds == {}


# ---- checkpoints -----------------------------------------------------------------------------


class NotAnArray:
    """Stands for any global a pickle could name (os.system, ...): refused unless allowed."""

    def __init__(self):
        self.payload = "would run code"


def test_load_checkpoint_of_a_torch_state_dict(tmp_path):
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)}
    path = tmp_path / "model.pth"
    torch.save(state, path)
    loaded = models.load_checkpoint(path, allow_pickle=False)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["a.weight"], state["a.weight"])


def test_a_pth_holding_objects_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1), "obj": NotAnArray()}, path)
    with pytest.raises(ValueError, match="model.weights"):
        models.load_checkpoint(path, allow_pickle=False)


def _arrays() -> dict:
    return {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.zeros(2)}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pkl_of_arrays_loads_without_allow_pickle(tmp_path, protocol):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_arrays(), protocol=protocol))
    loaded = models.load_checkpoint(path, allow_pickle=False)
    assert loaded.keys() == _arrays().keys()
    np.testing.assert_array_equal(loaded["a.weight"], _arrays()["a.weight"])


def test_a_detectron2_style_pkl_is_unwrapped(tmp_path):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": _arrays(), "__author__": "zoo"}))
    assert models.load_checkpoint(path, allow_pickle=False).keys() == _arrays().keys()


def test_a_pkl_naming_another_global_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({**_arrays(), "extra": NotAnArray()}))
    with pytest.raises(ValueError) as error:
        models.load_checkpoint(path, allow_pickle=False)
    message = str(error.value)
    assert "NotAnArray" in message and "allow_pickle" in message
    loaded = models.load_checkpoint(path, allow_pickle=True)
    assert isinstance(loaded["extra"], NotAnArray)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_a_corrupt_file_is_a_value_error(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="model.weights"):
        models.load_checkpoint(path, allow_pickle=False)


def test_a_missing_or_empty_checkpoint_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        models.load_checkpoint(tmp_path / "absent.pth", allow_pickle=False)
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(ValueError, match="no state dict"):
        models.load_checkpoint(path, allow_pickle=False)


def test_build_with_weights_loads_them_and_labels_the_file(mobilenet_cfg, tmp_path):
    source, _ = models.build(mobilenet_cfg, CPU, seed=3)
    path = tmp_path / "mobilenet.pth"
    torch.save(source.state_dict(), path)
    model, label = models.build(dataclasses.replace(mobilenet_cfg, weights=str(path)), CPU, 0)
    assert re.fullmatch(r"file:mobilenet\.pth@sha256:[0-9a-f]{12}", label), label
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_build_with_weights_of_another_model_is_refused(mobilenet_cfg, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor matches"):
        models.build(dataclasses.replace(mobilenet_cfg, weights=str(path)), CPU, 0)


# ---- corrupt is not unsafe (issue 14, item 6) ------------------------------------------------


def _corrupt_files(tmp_path) -> list:
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(4)}, good)
    data = good.read_bytes()
    files = {
        "noise.pth": bytes(range(256)) * 2,
        "truncated.pth": data[: len(data) // 2],
        "noise.pkl": b"\x80\x04this is not a checkpoint" * 10,
        "truncated.pkl": pickle.dumps(_arrays())[:40],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / name for name in files]


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_a_corrupt_checkpoint_is_called_corrupt_and_allow_pickle_is_not_advised(
    tmp_path, allow_pickle
):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(ValueError) as error:
            models.load_checkpoint(path, allow_pickle=allow_pickle)
        message = str(error.value)
        assert "not a readable" in message and "damaged" in message, (path.name, message)
        assert "model.allow_pickle does not change that" in message, message
        assert "set model.allow_pickle=true" not in message, message


def test_a_pth_holding_objects_is_called_unsafe_and_allow_pickle_loads_it(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1), "obj": NotAnArray()}, path)
    with pytest.raises(ValueError) as error:
        models.load_checkpoint(path, allow_pickle=False)
    message = str(error.value)
    assert "NotAnArray" in message and "set model.allow_pickle=true" in message, message
    assert ".pth/.pt and .pkl" in message
    loaded = models.load_checkpoint(path, allow_pickle=True)
    assert isinstance(loaded["obj"], NotAnArray)


class RunsCode:
    """What a malicious checkpoint holds: unpickling it calls a function of the `os` module
    (torch saves os.mkdir as posix.mkdir, a global of a module torch 2.14 blocks outright)."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.folder,))


def test_a_pth_that_would_run_code_is_called_unsafe_and_allow_pickle_would_load_it(tmp_path):
    ran = tmp_path / "the payload ran"
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1), "payload": RunsCode(ran)}, path)
    with pytest.raises(ValueError) as error:
        models.load_checkpoint(path, allow_pickle=False)
    message = str(error.value)
    assert "posix.mkdir" in message and "can run code from the file" in message, message
    assert "set model.allow_pickle=true" in message and "damaged" not in message, message
    assert not ran.exists(), "refusing the file ran its payload"
    # what allow_pickle=true does with it: unpickles it in full, running the payload
    assert models.load_checkpoint(path, allow_pickle=True)["payload"] is None
    assert ran.is_dir()
