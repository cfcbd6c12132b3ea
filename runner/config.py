"""Typed, validated configuration for one run.

Takes the DictConfig that Hydra composed from conf/ and returns two objects (`split`): the
measured `Config`, one dataclass per group, and the `Job`, where and why the run is made (its
folder, the command, `redo`, the sweep's session), which is never part of what is measured.
Everything that can be wrong with the user's input is caught here, before any model is built,
and reported as a `ConfigError` whose message names the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner import families

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXPORTS = ("trace", "script")
DTYPES = ("float32", "float16", "bfloat16")
GC_MODES = ("keep", "collect", "pause")  # Python's GC around a timed block (conf/config.yaml)


class ConfigError(ValueError):
    """The user's configuration cannot describe a run. The message says what to change."""


@dataclass
class ModelConfig:
    name: str
    family: str
    # detectron2: path relative to detectron2's configs/ (model zoo), a YAML config or a
    # LazyConfig .py (new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py); torchvision: builder name
    arch: str
    # detectron2: YAML cfg keys (MODEL.RPN.POST_NMS_TOPK_TEST) or LazyConfig keys
    # (model.roi_heads.num_classes); torchvision: builder kwargs
    arch_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # None: seeded random init (calibrated), else a local checkpoint
    allow_pickle: bool = False  # loading a pickle checkpoint can run code from the file
    num_classes: int = 80
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    postprocess: bool = False  # this model's default for the top-level `postprocess` key
    postprocess_optional: bool = True  # False: forward() always post-processes
    scriptable: bool = True
    not_scriptable_reason: str = ""
    # Conv/Linear layers whose outputs are logits; with random weights they are rescaled on the
    # input image so that scores are spread like a trained model's (see runner.run.models).
    logit_layers: list[str] = field(default_factory=list)
    logit_std: float = 2.0
    residual_scale: float = 0.1  # random init: last norm of each residual branch scaled by this


@dataclass
class PrecisionConfig:
    name: str
    dtype: str = "float32"
    autocast: bool = False
    # parity tolerances against the reference: eager fp32, TF32 off, on the same input
    min_match: float = 0.99  # F1 of detections matched by class and IoU
    min_box_iou: float = 0.99  # mean IoU of matched boxes
    max_score_diff: float = 1e-3  # largest score difference of a matched pair
    min_mask_iou: float = 0.99  # mean IoU of matched masks, binarised at 0.5
    # largest distance of a matched pair's keypoints, over sqrt(reference box area)
    max_keypoint_dist: float = 0.05
    # semantic segmentation: fraction of pixels labelled as the reference labels them, and the
    # largest class-probability difference; panoptic: F1 of segments matched at IoU > 0.5, and
    # the fraction of matched segments of the same class (runner.run.parity)
    min_sem_seg_agreement: float = 0.99
    max_sem_seg_prob_diff: float = 1e-3
    min_panoptic_match: float = 0.99
    min_panoptic_class_agreement: float = 0.99
    # the floor: eager at this precision against the strict reference on `floor_draws` inputs
    # (the run's own and jittered copies), the worst figure over them; a bound is loosened to
    # `floor_scale` times the floor's distance from perfect where that is looser than the
    # tolerance (runner.run.parity.limits says why)
    floor_draws: int = 5
    floor_scale: float = 2.0
    # true: TF32 off (matmuls and convolutions) for the whole run, backend and eager alike;
    # false: PyTorch's flags as they are (TF32 convolutions on CUDA by default)
    strict: bool = False


@dataclass
class BackendConfig:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


# Field metadata of the composed keys that Hydra, the runner or the sweeper set, never the user:
# `python -m runner --help` does not list them (runner.help_text).
SET_FOR_THE_USER = "set_for_the_user"


@dataclass
class BackendFile:
    """conf/backend/<name>.yaml as written, composed by Hydra next to `backend` (which the
    command line's overrides change): what `options_text` compares with."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShapesConfig:
    name: str
    dynamic: bool = False
    min_scale: float = 1.0  # of opt height and width
    max_scale: float = 1.0


@dataclass
class InputsConfig:  # values and their meaning: conf/config.yaml
    image: str | None
    height: int
    width: int


@dataclass
class DatasetConfig:
    """conf/dataset/<name>.yaml: the COCO-format dataset of the accuracy pass (runner.accuracy);
    name `none`: no pass."""

    name: str = "none"  # NO_DATASET
    root: str | None = None  # the folder the two paths below are relative to (null: as given)
    annotations: str = ""  # COCO instances JSON
    images: str = ""  # the folder its images' file_name are in
    max_images: int = 0  # 0: every image; N: the first N by image id
    class_map: str = "contiguous"  # contiguous | category_id (runner.accuracy.dataset)


@dataclass
class BenchConfig:  # values and their meaning: conf/config.yaml
    warmup: int
    iters: int
    timeout_s: float
    isolate: bool
    match_iou: float
    repeats: int = 5
    rewarm: int = 10
    gc: str = "collect"
    pin_cpus: bool = False


@dataclass
class Config:
    """What a run measures: every key of it decides its figures (runner.identity.fingerprint)."""

    model: ModelConfig
    precision: PrecisionConfig
    backend: BackendConfig
    shapes: ShapesConfig
    inputs: InputsConfig
    bench: BenchConfig
    batch: int
    export: str
    postprocess: bool
    device: str
    seed: int
    variant: str | None
    backend_file: BackendFile = field(
        default_factory=BackendFile, metadata={SET_FOR_THE_USER: "by the defaults list"}
    )
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the accuracy pass's data


@dataclass
class Job:
    """Where and why a run is made, never what it measures: outside the fingerprint and a
    sweep's folder names (conf/config.yaml: exclude_keys). Top-level keys of the composed config,
    as the measured ones are: `redo=true` on the command line, `members=[...]` from the sweeper."""

    output_dir: str = field(default="", metadata={SET_FOR_THE_USER: "by Hydra (the run's folder)"})
    # the command line that made the row (a sweep's jobs get the sweep's)
    command: str = field(default="", metadata={SET_FOR_THE_USER: "by the runner and the sweeper"})
    redo: bool = False  # true: measure again what the folder already holds (runner.run.bench)
    # the backends of one session ("backend=X [backend.options.k=v ...]" each), built in
    # parallel children and timed in turn (runner.run.bench.run_group)
    members: list[str] = field(default_factory=list, metadata={SET_FOR_THE_USER: "by the sweeper"})
    # for the jobs' progress lines: how many jobs the sweep launched, and when (time.time());
    # 0 outside a sweep
    sweep_jobs: int = field(default=0, metadata={SET_FOR_THE_USER: "by the sweeper"})
    sweep_started: float = field(default=0.0, metadata={SET_FOR_THE_USER: "by the sweeper"})


@dataclass
class Composed(Job, Config):
    """conf/config.yaml's schema: the measured Config's keys and the Job's, side by side."""


def job_keys() -> tuple[str, ...]:
    """The composed config's keys that are the Job's."""
    return tuple(f.name for f in dataclasses.fields(Job))


def register_schema() -> None:
    """Make `Config` the schema of conf/config.yaml (its defaults list names d2bench_schema), so
    that Hydra fills defaults, converts types and rejects unknown keys while composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="d2bench_schema", node=Composed)
    OmegaConf.register_new_resolver("d2bench_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("d2bench_rundir", run_dirname, replace=True)
    OmegaConf.register_new_resolver("d2bench_not_in_dirname", not_in_dirname, replace=True)
    OmegaConf.register_new_resolver("d2bench_help", _help_template, replace=True)


def _help_template(*, _root_: DictConfig) -> str:
    """hydra.help.template: runner.help_text for the composed config."""
    from runner.help_text import help_text

    return help_text(_root_)


def not_in_dirname() -> list[str]:
    """The overrides that do not name a run's or a sweep job's folder
    (hydra.job.config.override_dirname.exclude_keys): `sweep`, whose variants name it instead,
    and the Job's keys (`redo` among them: it measures again in the same folder)."""
    return ["sweep", *job_keys()]


DIRNAME_BYTES = 200  # file systems refuse a name over 255 bytes


def job_dirname(override_dirname: str) -> str:
    """A sweep job's folder: Hydra's override_dirname, or where that is longer than
    DIRNAME_BYTES (a backend with several options), its start and a digest of the whole name,
    so that every job keeps a folder of its own and finds it again when the sweep resumes."""
    raw = override_dirname.encode()
    if len(raw) <= DIRNAME_BYTES:
        return override_dirname
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[: DIRNAME_BYTES - 13].decode(errors="ignore") + "-" + digest


def run_dirname(override_dirname: str) -> str:
    """A single run's folder under outputs/runs/: named by its overrides as a sweep's job is
    (job_dirname), "defaults" where it has none, so that the same command finds its folder, and
    the repeats measured there, again (a time-stamped name never could)."""
    return job_dirname(override_dirname) if override_dirname else "defaults"


def unknown_keys(node: Any, cls: type, prefix: str = "") -> list[str]:
    """Keys of `node` that no field of dataclass `cls` (or of its dataclass fields) declares.
    Hydra lets `+key=value` add keys to a typed config; they would be ignored silently."""
    import typing

    if not isinstance(node, (dict, DictConfig)):
        return []
    hints = typing.get_type_hints(cls)
    unknown = []
    for key in node:
        if key not in hints:
            unknown.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            unknown += unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return unknown


def split(cfg: DictConfig) -> tuple[Config, Job]:
    """The composed Hydra config (without its `hydra` node) as a validated `Config` and its
    `Job`."""
    from omegaconf.errors import OmegaConfBaseException

    unknown = unknown_keys(cfg, Composed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}: not part of the configuration")
    try:
        composed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    config = Config(**{f.name: getattr(composed, f.name) for f in dataclasses.fields(Config)})
    job = Job(**{name: getattr(composed, name) for name in job_keys()})
    validate(config)
    return config, job


def to_config(cfg: DictConfig) -> Config:
    """The composed Hydra config's measured part, validated (`split`)."""
    return split(cfg)[0]


DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int | None]:
    """("cpu" | "cuda", index or None) of a device string validate() accepted; the one place
    that reads the string."""
    match = DEVICE.fullmatch(device)
    if match is None or (match.group(1) == "cpu" and match.group(2)):
        raise ConfigError(f"device={device!r}; allowed: cpu, cuda, cuda:N")
    index = match.group(2)
    return match.group(1), int(index) if index is not None else None


def is_cuda(device: str) -> bool:
    return parse_device(device)[0] == "cuda"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Raise ConfigError for values no run can use. Checks files exist; does not open them."""
    m, p, s, b, i = cfg.model, cfg.precision, cfg.shapes, cfg.bench, cfg.inputs
    _check(m.family in families.names(), f"model.family={m.family!r}; allowed: {families.names()}")
    _check(p.dtype in DTYPES, f"precision.dtype={p.dtype!r}; allowed: {list(DTYPES)}")
    _check(p.floor_draws >= 1, f"precision.floor_draws={p.floor_draws}; must be >= 1")
    _check(p.floor_scale >= 1, f"precision.floor_scale={p.floor_scale}; must be >= 1")
    _check(cfg.export in EXPORTS, f"export={cfg.export!r}; allowed: {list(EXPORTS)}")
    _check(isinstance(cfg.batch, int) and cfg.batch >= 1, f"batch={cfg.batch!r}; must be >= 1")
    _check(b.warmup >= 0, f"bench.warmup={b.warmup}; must be >= 0")
    _check(b.iters >= 1, f"bench.iters={b.iters}; must be >= 1")
    _check(b.repeats >= 1, f"bench.repeats={b.repeats}; must be >= 1")
    _check(b.rewarm >= 0, f"bench.rewarm={b.rewarm}; must be >= 0")
    _check(b.gc in GC_MODES, f"bench.gc={b.gc!r}; allowed: {list(GC_MODES)}")
    _check(b.timeout_s > 0, f"bench.timeout_s={b.timeout_s}; must be > 0")
    _check(0 < b.match_iou <= 1, f"bench.match_iou={b.match_iou}; must be in (0, 1]")
    _check(i.height >= 32 and i.width >= 32, f"inputs {i.height}x{i.width}; each side >= 32")
    _check(s.min_scale > 0, f"shapes.min_scale={s.min_scale}; must be > 0")
    _check(
        s.min_scale <= 1.0 <= s.max_scale,
        f"shapes: min_scale={s.min_scale} <= 1 <= max_scale={s.max_scale} must hold "
        "(min and max scale the opt input)",
    )
    _check(
        s.dynamic or s.min_scale == s.max_scale == 1.0,
        f"shapes={s.name} is static but sets min/max scales; use shapes=dynamic",
    )
    _check(0 <= m.score_thresh < 1, f"model.score_thresh={m.score_thresh}; must be in [0, 1)")
    _check(m.detections_per_image >= 1, "model.detections_per_image must be >= 1")
    _check(
        m.postprocess_optional or cfg.postprocess,
        f"model={m.name} always post-processes in forward(); postprocess=false is not possible",
    )
    _check_dataset(cfg.dataset)
    parse_device(cfg.device)
    for label, path in (("model.weights", m.weights), ("inputs.image", i.image)):
        if path is not None:
            _check(Path(path).is_file(), f"{label}={path}: no such file")


CLASS_MAPS = ("contiguous", "category_id")  # runner.accuracy.dataset says what each means
NO_DATASET = "none"  # conf/dataset/none.yaml: no accuracy pass


def _check_dataset(d: DatasetConfig) -> None:
    """The dataset's keys (its files are checked by preflight: an option file names paths that
    exist only once the data is there)."""
    _check(d.max_images >= 0, f"dataset.max_images={d.max_images}; must be >= 0 (0: every image)")
    _check(
        d.class_map in CLASS_MAPS, f"dataset.class_map={d.class_map!r}; allowed: {list(CLASS_MAPS)}"
    )
    if d.name != NO_DATASET:
        for key in ("annotations", "images"):
            _check(bool(getattr(d, key)), f"dataset.{key} is empty; dataset={d.name} needs it")


def value_text(value: Any) -> str:
    """A config value as the command line and the rows write it: true, null, 0.5, [a,b]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def override_key(override: str) -> str:
    """The key of a command-line override ("+a.b=1" -> "a.b")."""
    return override.split("=", 1)[0].lstrip("+~")


def is_backend_override(override: str) -> bool:
    key = override_key(override)
    return key == "backend" or key.startswith("backend.")


def options_text(cfg: Config) -> str:
    """The backend options that differ from the backend's own conf/backend/<name>.yaml (as
    Hydra composed it into `backend_file`), as "key=value" pairs sorted by key ("" when the run
    used that file's options). Rows record it so that two option sets stay two rows."""
    backend = cfg.backend
    defaults = cfg.backend_file.options if cfg.backend_file.name == backend.name else {}
    changed = {
        key: value
        for key, value in backend.options.items()
        if key not in defaults or defaults[key] != value or type(defaults[key]) is not type(value)
    }
    return " ".join(f"{key}={value_text(changed[key])}" for key in sorted(changed))


# ---- the command line, before Hydra runs -----------------------------------------------------


MULTIRUN_FLAGS = ("--multirun", "-m")
# --cfg prints the composed config (--resolve, --package shape the print): its overrides must
# compose as a run's do, so they are checked as a run's are. Each flag: how many values it takes
PRINT_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0}


def check_command_line(argv: list[str]) -> None:
    """Raise ConfigError, with one line naming the choices, for a command line no run can use:
    an unknown group option (also inside a sweep list), an unknown key, a value of the wrong
    type, a sweep list without --multirun. Hydra would say so itself, in 7 to 15 lines with exit
    code 1, and for a sweep only once per job; this check runs before Hydra writes anything.

    It composes once, through Hydra's public compose API, with the overrides that are no sweep
    (a sweep's values are each a job's, which the sweeper checks before it launches any);
    a command line with any flag but --multirun and those of --cfg (--help, --info, ...) is
    Hydra's to answer."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    flags, overrides, arguments = [], [], iter(argv)
    for argument in arguments:
        if argument.startswith("-"):
            flags.append(argument)
            for _ in range(PRINT_FLAGS.get(argument, 0)):
                next(arguments, None)  # the flag's value (--cfg job)
        else:
            overrides.append(argument)
    if any(flag not in MULTIRUN_FLAGS and flag not in PRINT_FLAGS for flag in flags):
        return
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        except HydraException as error:
            raise ConfigError(_first_line(error)) from None
        for override in parsed:
            _check_group_option(loader, override)
        sweeps = [override for override in parsed if override.is_sweep_override()]
        fixed = [override.input_line for override in parsed if override not in sweeps]
        try:
            cfg = compose("config", overrides=fixed, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(_composition_error(error)) from None
    multirun = any(flag in MULTIRUN_FLAGS for flag in flags)
    if sweeps and not multirun and cfg.hydra.mode != RunMode.MULTIRUN:
        raise ConfigError(f"{sweeps[0].input_line}: a list of values sweeps only with --multirun")


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_group_option(loader, override) -> None:
    """`group=option` (or a sweep list of options) names files of the group."""
    group = override.get_key_element().lstrip("+~")
    if override.is_delete() or override.value() is None:
        return
    choices = loader.get_group_options(group)
    if not choices:
        return  # not a config group: a key
    values = (
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [override.get_value_element_as_str()]
    )
    unknown = [v for v in values if v not in choices and v != "null"]
    if unknown:
        raise ConfigError(
            f"{group}={','.join(unknown)}: no such option; choices: {', '.join(choices)}"
        )


def _composition_error(error: BaseException) -> str:
    """One line for a composition error, with the keys that exist where a key was unknown (not
    those the user never sets); inside the caller's Hydra context."""
    from hydra import compose

    from runner.help_text import set_for_the_user

    text, cause = _first_line(error), error.__cause__
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown and cause is not None and "not in" in str(cause):
        key = unknown.group(1)
        parent = key.rpartition(".")[0]
        base = compose("config", overrides=[])
        node = OmegaConf.select(base, parent) if parent else base
        opened = parent  # the deepest part of the key that exists
        while opened and OmegaConf.select(base, opened) is None:
            opened = opened.rpartition(".")[0]
        mapping = OmegaConf.select(base, opened) if opened else base
        if isinstance(mapping, DictConfig) and OmegaConf.get_type(mapping) is dict:
            return f"{key}: not set in the config; add it with a leading +: +{key}=..."
        keys = []
        if isinstance(node, DictConfig):
            hidden = set_for_the_user()
            keys = sorted(k for k in node if ".".join(filter(None, [parent, k])) not in hidden)
        return f"{key}: no such key; keys{f' of {parent}' if parent else ''}: {', '.join(keys)}"
    return f"{text}: {_first_line(cause)}" if cause is not None else text
