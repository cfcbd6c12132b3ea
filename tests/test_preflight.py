"""Preflight: what this machine cannot run is refused as a ConfigError, before any child starts
or anything is written: an absent device, an unreadable image or checkpoint, bad backend options."""

from __future__ import annotations

import pickle

import pytest
import torch

from runner import preflight
from runner.config import ConfigError
from tests.helpers import have_cuda, run_runner


def test_a_cpu_run_passes(make_config):
    preflight.check(make_config("model=tv_fasterrcnn_mobilenet", "device=cpu"))


@pytest.mark.skipif(have_cuda(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_refused_with_the_way_out(make_config):
    with pytest.raises(ConfigError) as error:
        preflight.check(make_config("model=tv_fasterrcnn_mobilenet", "device=cuda"))
    assert "device=cuda" in str(error.value) and "device=cpu" in str(error.value)
    assert torch.__version__ in str(error.value)


def test_an_unreadable_image_is_refused(make_config, tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_text("not a picture")
    with pytest.raises(ConfigError, match="inputs.image"):
        preflight.check(
            make_config("model=tv_fasterrcnn_mobilenet", "device=cpu", f"inputs.image={image}")
        )


def test_a_real_image_passes(make_config):
    from runner.run.inputs import default_photo

    preflight.check(
        make_config(
            "model=tv_fasterrcnn_mobilenet", "device=cpu", f"inputs.image={default_photo()}"
        )
    )


def test_a_corrupt_checkpoint_is_refused(make_config, tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"garbage" * 10)
    with pytest.raises(ConfigError, match="model.weights"):
        preflight.check(
            make_config("model=tv_fasterrcnn_mobilenet", "device=cpu", f"model.weights={weights}")
        )


class Payload:
    pass


def test_a_pickle_that_needs_allow_pickle_is_refused_saying_so(make_config, tmp_path):
    weights = tmp_path / "model.pkl"
    weights.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ConfigError, match="allow_pickle"):
        preflight.check(
            make_config("model=tv_fasterrcnn_mobilenet", "device=cpu", f"model.weights={weights}")
        )


def test_backend_options_are_checked(make_config):
    with pytest.raises(ConfigError) as error:
        preflight.check(
            make_config(
                "model=tv_fasterrcnn_mobilenet",
                "device=cpu",
                "backend=torchscript",
                "backend.options.freeze=1",
            )
        )
    assert "options.freeze=1" in str(error.value) and "bool" in str(error.value)


def test_an_unknown_backend_name_is_refused(make_config):
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        preflight.check(
            make_config("model=tv_fasterrcnn_mobilenet", "device=cpu", "backend.name=nope")
        )


@pytest.mark.skipif(have_cuda(), reason="this machine has a CUDA device")
def test_python_m_runner_refuses_before_writing_anything(tmp_path):
    out = tmp_path / "refused"
    done = run_runner(
        "model=tv_fasterrcnn_mobilenet", "device=cuda", f"hydra.run.dir={out}", timeout=120
    )
    assert done.returncode == 2
    assert "device=cpu" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not out.exists(), f"bad input left {sorted(out.rglob('*'))}"


def test_bad_input_never_deletes_files_it_did_not_write(tmp_path):
    folder = tmp_path / "my_logs"
    folder.mkdir()
    (folder / "service.log").write_text("kept for years\n")
    done = run_runner("batch=0", "device=cpu", f"hydra.run.dir={folder}", timeout=120)
    assert done.returncode == 2
    assert (folder / "service.log").exists(), "a file the run did not write was deleted"


def test_a_detectron2_model_without_detectron2_is_refused_with_the_install_commands(
    make_config, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "detectron2", None)  # as if it were not installed
    with pytest.raises(ConfigError) as error:
        preflight.check(make_config("model=mask_rcnn_fpn", "device=cpu"))
    assert "the detectron2 models need detectron2" in str(error.value)
    assert "pip install" in str(error.value)
