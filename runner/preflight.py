"""Preflight: takes a validated Config and raises ConfigError for what this machine cannot run,
before any child is started or any output written: a device torch cannot see, detectron2
absent, an unreadable image or checkpoint, backend options the backend rejects."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runner.config import Config, ConfigError


def check(cfg: Config) -> None:
    _check_device(cfg.device)
    if cfg.model.family == "detectron2" and importlib.util.find_spec("detectron2") is None:
        from runner.models import DETECTRON2_INSTALL

        raise ConfigError(f"model={cfg.model.name} needs detectron2. {DETECTRON2_INSTALL}")
    if cfg.inputs.image is not None:
        _check_image(Path(cfg.inputs.image))
    if cfg.model.weights is not None:
        from runner.models import load_checkpoint

        try:
            load_checkpoint(Path(cfg.model.weights), cfg.model.allow_pickle)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    _check_backend(cfg)


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
        raise ConfigError(
            f"device={device} but torch {torch.__version__} ({built}) sees no CUDA device; "
            "use device=cpu"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
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
