"""Preflight: takes a validated Config and raises ConfigError for what this machine cannot run,
before any child is started or any output written: a device torch cannot see, detectron2
absent, a model-zoo config it does not have, a detectron2 config key it does not have or a
torchvision keyword its builder does not use (the family's check), an unreadable image or
checkpoint, backend options the backend rejects, a dataset the accuracy pass cannot read.
`refusal` asks the same of a sweep's job before the sweep starts."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, open_dict

from runner import families
from runner.config import Config, ConfigError, parse_device, to_config

REFUSAL = "invalid configuration: "  # how every refusal of input begins


def refuse(message: str) -> NoReturn:
    """Input no run can use: one line on stderr, `invalid configuration: <message>`, and exit
    code 2. Every refusal goes through here (the command line's, a single run's, a sweep's), so
    all read alike: no timestamp, logger name or traceback in front of the reason."""
    sys.stderr.write(f"{REFUSAL}{message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def check(cfg: Config) -> None:
    _check_device(cfg.device)
    try:
        families.get(cfg.model.family).check(cfg.model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.inputs.image is not None:
        _check_image(Path(cfg.inputs.image))
    if cfg.model.weights is not None:
        path = Path(cfg.model.weights)
        version = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
        error = _checkpoint_error(cfg.model.weights, cfg.model.allow_pickle, version)
        if error:
            raise ConfigError(error)
    _check_backend(cfg)
    _check_dataset(cfg)


def _check_dataset(cfg: Config) -> None:
    from runner.accuracy import dataset

    try:
        dataset.check(cfg.dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@functools.lru_cache(maxsize=16)
def _checkpoint_error(path: str, allow_pickle: bool, version: tuple) -> str:
    """Why the checkpoint cannot be loaded, or ''; once per file and version in this process
    (a sweep asks for every job, its jobs ask again: the file is read once, here, and then
    only by the child that uses it)."""
    from runner.run.models import load_checkpoint

    try:
        load_checkpoint(Path(path), allow_pickle)
    except ValueError as error:
        return str(error)
    return ""


def _check_device(device: str) -> None:
    kind, index = parse_device(device)
    if kind != "cuda":
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
        raise ConfigError(
            f"device={device} but torch {torch.__version__} ({built}) sees no CUDA device; "
            "use device=cpu"
        )
    if (index or 0) >= count:
        raise ConfigError(f"device={device} but torch sees {count} CUDA device(s)")


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ConfigError(f"inputs.image={path}: not a readable image ({error})") from None


def _check_backend(cfg: Config) -> None:
    from runner import backends

    try:
        backends.validate_options(cfg.backend.name, cfg.backend.options)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None
    except ValueError as error:
        raise ConfigError(str(error)) from None


def refusal(job: DictConfig) -> str | None:
    """Why the sweep's job `job` (its composed config, Hydra's node included) cannot run, in one
    line; None when it can. The sweep asks before it writes anything, so that a sweep whose
    every job is refused is one message and exit code 2, not one failure per job."""
    cfg = job.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    cfg.output_dir = ""  # Hydra's runtime fills it per job; not needed to judge the input
    try:
        check(to_config(cfg))
    except ConfigError as error:
        return str(error)
    return None


def refused_sweep(invalid: list[tuple[str, str]]) -> str:
    """One line for a sweep whose every job was refused: each distinct reason once, with the
    jobs it applies to counted ("... (all 28 jobs)") or, for a reason of one job, named."""
    by_reason: dict[str, list[str]] = {}
    for overrides, reason in invalid:
        by_reason.setdefault(reason, []).append(overrides)
    if len(by_reason) == 1:
        (reason,) = by_reason
        return f"{reason} (all {len(invalid)} jobs of the sweep)"
    parts = [
        f"{reason} ({len(jobs)} jobs)" if len(jobs) > 1 else f"{jobs[0]}: {reason}"
        for reason, jobs in by_reason.items()
    ]
    return "; ".join(parts)
