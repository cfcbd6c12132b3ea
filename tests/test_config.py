"""Configuration: every option file composes and validates, names match file stems, bad input is
refused with a message naming the field (ConfigError) or by Hydra while composing, and the seed
sweep holds DESIGN.md's seven variants."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from runner.config import ConfigError, check_command_line, to_config
from tests.helpers import (
    CONF,
    compose_config,
    config_groups,
    named_groups,
    option_files,
    run_runner,
    seed_variants,
)

OPTION_FILES = [(group, path) for group in config_groups() for path in option_files(group)]


def test_option_files_are_found():
    groups = {group for group, _ in OPTION_FILES}
    assert {"model", "precision", "backend", "shapes", "sweep"} <= groups
    assert len(OPTION_FILES) >= 10


@pytest.mark.parametrize(
    "group, path", OPTION_FILES, ids=[f"{g}={p.stem}" for g, p in OPTION_FILES]
)
def test_every_option_file_composes_and_validates(compose, group, path):
    config = to_config(compose(f"{group}={path.stem}", "device=cpu"))
    if group in named_groups():
        assert getattr(config, group).name == path.stem


@pytest.mark.parametrize("group", named_groups())
def test_every_option_file_names_itself_by_its_stem(group):
    files = option_files(group)
    assert files, f"conf/{group}/ has no option files"
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert data.get("name") == path.stem, f"{path}: name {data.get('name')!r}"


def test_launcher_option_files_compose():
    """conf/hydra/launcher/*.yaml: each composes as hydra/launcher=NAME into a Hydra launcher."""
    for path in sorted((CONF / "hydra" / "launcher").glob("*.yaml")):
        cfg = compose_config(
            f"hydra/launcher={path.stem}", "output_dir=/unused", return_hydra_config=True
        )
        assert cfg.hydra.launcher._target_.endswith("Launcher"), path


def test_defaults_are_the_seed_protocol(make_run):
    config, job = make_run()
    assert (config.bench.warmup, config.bench.iters) == (100, 200)
    assert (config.inputs.height, config.inputs.width) == (480, 640)
    assert config.model.name == "mask_rcnn_fpn"
    assert config.precision.name == "fp32"
    assert config.backend.name == "eager"
    assert config.shapes.name == "static"
    assert (config.batch, config.export) == (1, "trace")
    assert job.redo is False and job.members == []
    assert config.bench.isolate is True


@pytest.mark.parametrize(
    "model, postprocess", [("retinanet", True), ("mask_rcnn_fpn", False), ("tv_maskrcnn", True)]
)
def test_postprocess_follows_the_model_unless_set(make_config, model, postprocess):
    assert make_config(f"model={model}").postprocess is postprocess
    assert make_config(f"model={model}", "postprocess=true").postprocess is True


def test_values_are_converted_to_their_types(make_config):
    config = make_config("batch=2", "bench.timeout_s=5", "inputs.image=null", "seed=7")
    assert config.batch == 2 and isinstance(config.batch, int)
    assert config.bench.timeout_s == 5.0 and isinstance(config.bench.timeout_s, float)
    assert config.inputs.image is None
    assert config.seed == 7


@pytest.mark.parametrize("group", named_groups())
def test_unknown_option_lists_the_choices_without_a_traceback(group):
    done = run_runner(f"{group}=nope", timeout=120)
    assert done.returncode == 2
    assert f"{group}=nope: no such option; choices: " in done.stderr
    for path in option_files(group):
        assert path.stem in done.stderr, f"choice {path.stem} not listed:\n{done.stderr}"
    assert "Traceback" not in done.stderr + done.stdout


INVALID = [
    (["batch=0"], "batch"),
    (["bench.iters=-1"], "bench.iters"),
    (["bench.warmup=-1"], "bench.warmup"),
    (["bench.timeout_s=0"], "bench.timeout_s"),
    (["bench.match_iou=0"], "bench.match_iou"),
    (["bench.match_iou=1.5"], "bench.match_iou"),
    (["shapes=dynamic", "shapes.min_scale=2"], "min_scale"),
    (["shapes=dynamic", "shapes.max_scale=0.5"], "max_scale"),
    (["shapes=dynamic", "shapes.min_scale=0"], "shapes.min_scale"),
    (["shapes.max_scale=2"], "shapes=static"),
    (["device=tpu"], "device"),
    (["export=onnx"], "export"),
    (["precision.dtype=int8"], "precision.dtype"),
    (["model.family=jax"], "model.family"),
    (["model.score_thresh=1.0"], "model.score_thresh"),
    (["model.detections_per_image=0"], "model.detections_per_image"),
    (["model=tv_fasterrcnn_mobilenet", "postprocess=false"], "postprocess"),
    (["model.weights=/no/such/file"], "model.weights"),
    (["inputs.image=/no/such/file"], "inputs.image"),
    (["inputs.height=16"], "inputs"),
]


@pytest.mark.parametrize(
    "overrides, field", INVALID, ids=[" ".join(overrides) for overrides, _ in INVALID]
)
def test_invalid_values_raise_config_error_naming_the_field(compose, overrides, field):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as error:
        to_config(cfg)
    assert field in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    "override, allowed",
    [("device=tpu", ["cpu", "cuda"]), ("export=onnx", ["trace", "script"])],
)
def test_config_error_names_the_allowed_values(compose, override, allowed):
    with pytest.raises(ConfigError) as error:
        to_config(compose(override))
    for value in allowed:
        assert value in str(error.value)


@pytest.mark.parametrize("override", ["batch=abc", "bench.isolate=maybe", "bench.iters=1.5"])
def test_a_value_of_the_wrong_type_fails_at_composition(compose, override):
    with pytest.raises(ConfigCompositionException) as error:
        compose(override)
    assert override.split("=")[0] in str(error.value)


def test_an_unknown_key_fails_at_composition(compose):
    with pytest.raises(ConfigCompositionException, match="model.bogus"):
        compose("model.bogus=1")


def test_an_appended_unknown_key_is_refused(compose):
    with pytest.raises((ConfigCompositionException, ConfigError)):
        to_config(compose("+bench.warmpu=10"))


@pytest.mark.parametrize("device", ["cuda:x", "cudax", "cuda:-1"])
def test_a_malformed_cuda_device_is_refused(compose, device):
    with pytest.raises(ConfigError, match="device"):
        to_config(compose(f"device={device}"))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7"])
def test_well_formed_devices_pass(compose, device):
    assert to_config(compose(f"device={device}")).device == device


def test_existing_weights_and_image_files_pass(compose, tmp_path):
    weights, image = tmp_path / "w.pth", tmp_path / "photo.jpg"
    weights.write_bytes(b"x")
    image.write_bytes(b"x")
    config = to_config(compose(f"model.weights={weights}", f"inputs.image={image}"))
    assert config.model.weights == str(weights)
    assert config.inputs.image == str(image)


# ---- the seed sweep ---------------------------------------------------------------------------

# DESIGN.md, "The seed's seven variants": seed name (without the seed's `test` prefix) ->
# model, export, batch, postprocess ("forward (includes it)" and "yes" are True, "no" False).
DESIGN_VARIANTS = {
    "RetinaNet": ("retinanet", "trace", 1, True),
    "RetinaNet_scripted": ("retinanet", "script", 1, True),
    "MaskRCNNC4": ("mask_rcnn_c4", "trace", 1, False),
    "MaskRCNNFPN": ("mask_rcnn_fpn", "trace", 1, False),
    "MaskRCNNFPN_b2": ("mask_rcnn_fpn", "trace", 2, False),
    "MaskRCNNFPN_pproc": ("mask_rcnn_fpn", "trace", 1, True),
    "CascadeRCNN": ("cascade_rcnn", "trace", 1, False),
}


def test_sweep_seed_composes_with_the_seven_variants(compose):
    cfg = compose("sweep=seed", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("D2benchSweeper")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert list(sweeper.variants) == list(DESIGN_VARIANTS)
    assert set(sweeper.params) == {"precision", "backend"}
    assert sweeper.params.precision.split(",") == ["fp32", "fp16"]
    assert sweeper.params.backend.split(",") == ["eager", "torchscript"]
    to_config(compose("sweep=seed"))  # what each job's task gets: an ordinary, valid run


def test_seed_variants_match_design_table():
    variants = seed_variants()
    assert set(variants) == set(DESIGN_VARIANTS)
    for name, (model, export, batch, postprocess) in DESIGN_VARIANTS.items():
        assert variants[name] == {
            "model": model,
            "export": export,
            "batch": batch,
            "postprocess": postprocess,
        }, name


@pytest.mark.parametrize("name", list(seed_variants()))
def test_each_seed_variant_is_a_valid_run(make_config, name):
    point = seed_variants()[name]
    overrides = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in point.items()]
    config = make_config(*overrides, f"variant={name}", "device=cpu")
    assert config.variant == name
    assert (config.model.name, config.export, config.batch, config.postprocess) == (
        point["model"],
        point["export"],
        point["batch"],
        point["postprocess"],
    )
    if config.export == "script":
        assert config.model.scriptable, f"{name} scripts a model marked not scriptable"


# ---- model files against their libraries -------------------------------------------------------


def _model_files(family: str) -> list:
    files = [(p, yaml.safe_load(p.read_text())) for p in option_files("model")]
    return [(p, data) for p, data in files if data.get("family") == family]


def test_torchvision_models_name_torchvision_builders():
    import torchvision.models.detection as detection

    files = _model_files("torchvision")
    assert files
    for path, data in files:
        assert callable(getattr(detection, data["arch"], None)), path


@pytest.mark.detectron2
def test_detectron2_models_name_model_zoo_configs():
    from detectron2 import model_zoo

    files = _model_files("detectron2")
    assert len(files) >= 4
    for path, data in files:
        assert model_zoo.get_config_file(data["arch"]), path


def test_options_text_names_only_options_that_differ_from_the_backend_file(compose):
    from runner.config import options_text

    plain = to_config(compose("backend=compiled_graphs", "device=cpu"))
    assert options_text(plain) == ""
    tuned = to_config(
        compose(
            "backend=compiled_graphs",
            "backend.options.channels_last=true",
            "backend.options.mode=max-autotune-no-cudagraphs",
            "device=cpu",
        )
    )
    assert options_text(tuned) == "channels_last=true mode=max-autotune-no-cudagraphs"


def test_options_text_lists_every_option_of_a_backend_without_a_file(make_config):
    import dataclasses

    from runner.config import BackendConfig, options_text

    cfg = make_config("device=cpu")  # composes conf/backend/eager.yaml, not mine's
    backend = BackendConfig(name="mine", options={"b": False, "a": None, "c": 3})
    assert options_text(dataclasses.replace(cfg, backend=backend)) == "a=null b=false c=3"


# ---- the command line, before Hydra runs ---------------------------------------------------


def test_a_glob_sweep_of_a_group_is_checked_against_the_groups_options():
    """glob() needs the config loader to list the group: the check gives the parser one."""
    check_command_line(["--multirun", "backend=glob(*)"])
    with pytest.raises(ConfigError, match="model=nope: no such option"):
        check_command_line(["--multirun", "backend=glob(*)", "model=nope"])


def test_hydras_own_flags_are_left_to_hydra_and_multirun_is_looked_at():
    check_command_line(["--help", "model=nope"])  # Hydra answers --help itself
    with pytest.raises(ConfigError, match="sweeps only with --multirun"):
        check_command_line(["backend=eager,torchscript"])
    check_command_line(["backend=eager,torchscript", "-m"])
    check_command_line(["sweep=seed", "backend=eager,torchscript"])  # the sweep file sets it


def test_an_unknown_key_lists_the_keys_a_user_sets():
    with pytest.raises(ConfigError) as refused:
        check_command_line(["foo=1"])
    listed = str(refused.value).split("keys: ", 1)[1].split(", ")
    assert {"batch", "bench", "model", "redo"} <= set(listed)
    assert not {"members", "command", "output_dir", "backend_file"} & set(listed)
