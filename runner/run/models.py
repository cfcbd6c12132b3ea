"""Models: takes a ModelConfig, returns the model in eval mode on the device and a label saying
where its weights came from.

Without a checkpoint the weights are the family's own initialisers under torch.manual_seed(seed),
then `calibrate` adapts them to the input photo once, so that random weights behave like trained
ones where it matters for a benchmark: activations stay near unit scale (fp16 cannot overflow)
and scores spread out (top-k and NMS are not decided by rounding noise, and the number of
detections, which sets the post-processing cost, is realistic).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from runner import families
from runner.config import ModelConfig
from runner.library_noise import quiet_library_warnings

log = logging.getLogger(__name__)


def build(cfg: ModelConfig, device: torch.device, seed: int) -> tuple[nn.Module, str]:
    """Build the model, load weights or seed its init; return (eval-mode model, weights label)."""
    quiet_library_warnings()
    torch.manual_seed(seed)
    family = families.get(cfg.family)
    model = family.build(cfg, device)
    model.to(device).eval()
    if cfg.weights is None:
        return model, f"random(seed={seed})"
    data = read_checkpoint(Path(cfg.weights), cfg.allow_pickle)
    _load_state(model, family.load_state(model, as_tensors(state_of(data, cfg.weights)), cfg), cfg)
    label = f"file:{Path(cfg.weights).name}@sha256:{_sha256(cfg.weights)[:12]}"
    training = data.get(TRAINING_KEY) if isinstance(data, dict) else None
    if isinstance(training, dict):  # written by scripts/train.py: say how it was trained
        label = f"trained({training_text(training)}) {label}"
    return model, label


# scripts/train.py stores its settings and val AP under this key, next to "model"
TRAINING_KEY = "d2bench_training"
# the settings a row's weights label shows, in this order (the checkpoint's .json has them all)
TRAINING_SHOWN = ("model", "iters", "batch", "lr", "schedule", "amp", "seconds", "seed", "data")


def training_text(training: dict) -> str:
    """'model=mask_rcnn_fpn iters=2400 ... val_box_ap=0.41': the settings of TRAINING_SHOWN
    and every val figure the checkpoint carries."""
    shown = [k for k in TRAINING_SHOWN if k in training]
    shown += sorted(k for k in training if k.startswith("val_") and k.endswith("ap"))
    return " ".join(f"{key}={training[key]}" for key in shown)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Refused(pickle.UnpicklingError):
    """The file is a readable pickle that names a global beyond arrays: unsafe, not corrupt."""

    def __init__(self, name: str):
        super().__init__(f"refusing to load {name}")
        self.name = name


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays; refuses every other global, so no code runs."""

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol <= 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


UNSAFE = (
    "model.weights={path}: the file holds {name}, more than tensors and arrays; loading it "
    "means unpickling, which can run code from the file. If you trust the file, set "
    "model.allow_pickle=true (it applies to .pth/.pt and .pkl checkpoints alike)"
)
# torch.load(weights_only=True) refusing a global of a sound pickle, in its two wordings: a
# global not on its allow-list ("Unsupported global: GLOBAL argparse.Namespace was not an allowed
# global by default"), and one of a module it never loads (torch 2.14: "Trying to load
# unsupported GLOBAL posix.system whose module posix is blocked", as os.system in __reduce__)
UNSAFE_GLOBAL = r"(?:Unsupported global: GLOBAL|load unsupported GLOBAL) ([\w.]+)"
CORRUPT = (
    "model.weights={path}: not a readable {kind} checkpoint, the file is damaged or of another "
    "format ({reason}); model.allow_pickle does not change that"
)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def load_checkpoint(path: Path, allow_pickle: bool) -> dict:
    """A state dict from a local checkpoint, loaded without running code from the file
    (read_checkpoint, then its state dict)."""
    return state_of(read_checkpoint(path, allow_pickle), path)


def state_of(data, path) -> dict:
    """The state dict of what read_checkpoint returned: the file's "model" entry where it has
    one (detectron2's and scripts/train.py's layout), else the whole of it."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"model.weights={path}: holds no state dict")
    return data


def read_checkpoint(path: Path, allow_pickle: bool):
    """What a local checkpoint holds, loaded without running code from the file.

    .pth/.pt go through torch.load(weights_only=True); detectron2's .pkl files through an
    unpickler that accepts only arrays and containers. A file that is a sound pickle but holds
    more (objects whose unpickling could run code) is refused as unsafe unless `allow_pickle`,
    which then unpickles it in full (trust the file first); a file that cannot be read at all is
    refused as corrupt, whatever `allow_pickle` says.
    """
    if not path.is_file():
        raise ValueError(f"model.weights={path}: no such file")
    kind = "detectron2 .pkl" if path.suffix == ".pkl" else "torch"
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                unpickler = pickle.Unpickler if allow_pickle else _ArraysOnlyUnpickler
                data = unpickler(f, encoding="latin1").load()
        else:
            data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except _Refused as error:
        raise ValueError(UNSAFE.format(path=path, name=error.name)) from error
    except Exception as error:  # torch and pickle raise many kinds for a corrupt file
        unsafe = re.search(UNSAFE_GLOBAL, str(error))
        if unsafe and not allow_pickle:  # torch's weights-only unpickler met an object
            raise ValueError(UNSAFE.format(path=path, name=unsafe.group(1))) from error
        raise ValueError(CORRUPT.format(path=path, kind=kind, reason=_reason(error))) from error
    return data


def as_tensors(state: dict) -> dict:
    return {k: torch.as_tensor(v) for k, v in state.items()}


def _load_state(model: nn.Module, state: dict, cfg: ModelConfig) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        log.warning(
            "checkpoint lacks %d tensors, e.g. %s",
            len(result.missing_keys),
            result.missing_keys[:3],
        )
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(f"model.weights={cfg.weights}: no tensor matches model {cfg.name}")


NORMS = ("FrozenBatchNorm2d", "BatchNorm2d", "SyncBatchNorm", "NaiveSyncBatchNorm")
# Residual blocks of detectron2 and torchvision backbones: their branch's last norm is scaled down.
RESIDUAL_BLOCKS = (
    "BottleneckBlock",
    "BasicBlock",
    "DeformBottleneckBlock",
    "Bottleneck",
    "InvertedResidual",
)


def _residual_branch_ends(model: nn.Module) -> set[int]:
    """ids of the last norm layer inside each residual block's branch (shortcuts excluded)."""
    ends = set()
    for block in model.modules():
        if type(block).__name__ not in RESIDUAL_BLOCKS or not getattr(block, "use_res_connect", 1):
            continue
        norms = [
            m
            for name, m in block.named_modules()
            if type(m).__name__ in NORMS and not name.startswith(("shortcut", "downsample"))
        ]
        if norms:
            ends.add(id(norms[-1]))
    return ends


@torch.no_grad()
def calibrate(
    model: nn.Module,
    run_once: Callable[[], object],
    logit_layers: list[str],
    logit_std: float,
    residual_scale: float,
) -> dict[str, int]:
    """Adapt random weights to the input once, in fp32, then leave them fixed.

    1. Every (frozen) batch norm takes its input's per-channel mean and its overall variance as
       statistics, in forward order, so activations stay near unit scale. (Per-channel variances
       would amplify near-constant channels and make the random network chaotic: fp16 rounding
       would then grow from layer to layer instead of staying at the rounding level.)
    2. The last norm of each residual branch is scaled by `residual_scale`, so each block adds a
       small update to its input, as in trained ResNets; deep random networks stay stable.
    3. Each Conv/Linear named in `logit_layers` (matched on the trailing parts of its name) has
       its weight scaled so its outputs have standard deviation `logit_std`; biases are kept.
    Returns how many layers of each kind were calibrated.
    """
    branch_ends = _residual_branch_ends(model)
    logit_modules = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and _matches(name, logit_layers)
    }
    norms = [m for m in model.modules() if type(m).__name__ in NORMS]

    calibrated: set[int] = set()

    def set_stats(module, args):  # once per norm, at its first call with data
        x = args[0].float()
        if x.numel() == 0 or id(module) in calibrated:
            return
        calibrated.add(id(module))
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.fill_(float(x.var(dim=(0, 2, 3), unbiased=False).mean()))
        if id(module) in branch_ends:
            module.weight.mul_(residual_scale)
            module.bias.mul_(residual_scale)

    # Pass 1 sets the norms and measures the logit layers that see data. Heads behind a score
    # threshold (mask heads) may see none until the box logits are spread: pass 2 measures them.
    scaled: set[str] = set()
    for calibrating_norms in (True, False):
        moments = _run_with_moments(
            run_once,
            {n: m for n, m in logit_modules.items() if n not in scaled},
            [(m, set_stats) for m in norms] if calibrating_norms else [],
        )
        for name, (count, total, squares) in moments.items():
            mean = total / count
            std = max(squares / count - mean * mean, 0.0) ** 0.5
            if std > 0:
                logit_modules[name].weight.mul_(logit_std / std)
                scaled.add(name)
        if len(scaled) == len(logit_modules):
            break
    for name in sorted(set(logit_modules) - scaled):
        log.warning("calibrate: %s saw no data or constant data; left as initialised", name)
    return {"norms": len(norms), "residual_branches": len(branch_ends), "logit_layers": len(scaled)}


def _run_with_moments(run_once, modules: dict[str, nn.Module], pre_hooks: list) -> dict:
    """Run once with `pre_hooks` installed; return name -> (count, sum, sum of squares) of the
    outputs of each of `modules` that produced any (a head shared by FPN levels adds up)."""
    moments: dict[str, list] = {}

    def record(name):
        def hook(module, args, output):
            if output.numel():
                y = output.double()
                entry = moments.setdefault(name, [0, 0.0, 0.0])
                entry[0] += y.numel()
                entry[1] += float(y.sum())
                entry[2] += float((y * y).sum())

        return hook

    handles = [m.register_forward_pre_hook(h) for m, h in pre_hooks]
    handles += [m.register_forward_hook(record(n)) for n, m in modules.items()]
    try:
        run_once()
    finally:
        for handle in handles:
            handle.remove()
    return {name: tuple(v) for name, v in moments.items()}


def _matches(name: str, suffixes: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)
