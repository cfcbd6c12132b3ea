"""Train a seed architecture from the project's random init on a COCO-format set (the generated
shapes: runner.accuracy.shapes), with detectron2's own trainer and AMP, and write a checkpoint
that `model.weights=` loads into the unchanged model-zoo architecture.

    python scripts/train.py --model mask_rcnn_fpn --data data/shapes --out checkpoints \\
        [--minutes 4.5 | --iters N] [--batch 16] [--lr 0.02] [--workers 12] [--seed 0]

Takes conf/model/<model>.yaml (the architecture the benchmark builds, its thresholds) and
<data>/train.json + train/ (and val.json + val/ for the AP at the end); writes
<out>/<model>.pth (a state dict with the zoo's names and shapes, plus `d2bench_training`: the
settings, seconds and val AP, which rows show as `weights=trained(...)`) and <out>/<model>.json
(the same settings and figures, and the loss curve's summary).

Training from scratch needs what the zoo's fine-tuning settings leave out, and nothing here
changes the architecture the benchmark measures:
- norms that learn: batch norm (BN) in the ResNet (the zoo's is frozen: FrozenBatchNorm, meant
  for ImageNet statistics that random init lacks), in the FPN and in the FPN mask head's convs
  (none in the zoo; without them deep random convs train slowly), no frozen stages (FREEZE_AT 0);
- at the end each norm goes back into the zoo's layout: a ResNet BN's learnt scale, shift and
  running statistics are a FrozenBatchNorm's four tensors (the same arithmetic at inference); a
  BN after an FPN or mask-head conv is folded into that conv's weight and bias (the zoo's convs
  there have a bias and no norm). `check_fold` compares every folded conv and the backbone's
  outputs with the trained model's before the file is written (max difference in the log);
- the input at the data's own size (480x640 for the generated set: no upscaling to the zoo's
  800), masks as bitmasks (cropped on the GPU; polygons are rasterised per ROI on the CPU),
  fewer ROI samples per image (the shapes set has ~7 objects an image, not COCO's crowds),
  images decoded by `--workers` loader processes;
- SGD with a linear warm-up and a cosine decay to zero, and the whole-model gradient norm
  clipped, so that an LR that is fast for a normed network does not diverge in its first
  iterations (a run without these diverged at LR 0.04).
`--minutes` sets the training loop's budget (loader start, folding and the val AP come on top):
after PROBE_ITERS iterations (inside the warm-up) the seconds per iteration fix the iteration
count, and with it the schedule; `--iters` fixes it instead. On a CPU (tests) there is no AMP.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("train")

MODELS = ("retinanet", "mask_rcnn_c4", "mask_rcnn_fpn", "cascade_rcnn")  # the seed's
PROBE_ITERS = 30  # iterations timed before --minutes fixes the iteration count
PROBE_SKIP = 10  # of which the first are not timed (cuDNN autotuning, loader start)
WARMUP_FRACTION = 0.1  # of the iterations, at least WARMUP_LEAST
WARMUP_LEAST = 100
WARMUP_FACTOR = 1e-3  # LR at iteration 0, of the base LR
ROI_SAMPLES = 128  # ROI head samples per training image (the zoo's 512 are for COCO's crowds)
GRAD_CLIP = 10.0  # largest L2 norm of the whole model's gradient
PROGRESS_S = 20.0


def model_config(name: str):
    """conf/model/<name>.yaml as the benchmark's ModelConfig."""
    from runner.config import ModelConfig

    return ModelConfig(**yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text()))


def register(data: Path, split: str) -> str:
    """The split as a detectron2 dataset (train.json + train/); returns its name."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    name = f"d2bench_{data.resolve()}_{split}".replace("/", "_")
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(data / f"{split}.json"), str(data / split))
    return name


def image_size(data: Path, split: str) -> tuple[int, int]:
    """(height, width) of the split's images (the generator makes them all one size)."""
    images = json.loads((data / f"{split}.json").read_text())["images"]
    sizes = {(image["height"], image["width"]) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"{data / split}.json: images of {len(sizes)} sizes; one is expected")
    return sizes.pop()


def train_config(model_cfg, data: Path, args):
    """The zoo's config of the model (as the benchmark builds it) with the training changes of
    the module docstring."""
    from runner.families.detectron2 import config

    cfg = config(model_cfg, args.device)
    cfg.defrost()
    height, width = image_size(data, "train")
    cfg.INPUT.MIN_SIZE_TRAIN = (min(height, width),)
    cfg.INPUT.MAX_SIZE_TRAIN = max(height, width)
    cfg.INPUT.MIN_SIZE_TEST = min(height, width)
    cfg.INPUT.MAX_SIZE_TEST = max(height, width)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.DATASETS.TRAIN = (register(data, "train"),)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = args.workers
    for key, value in learnt_norms(cfg).items():
        cfg.merge_from_list([key, value])
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = ROI_SAMPLES
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    cfg.SOLVER.BASE_LR = args.lr
    cfg.SOLVER.AMP.ENABLED = args.device.startswith("cuda")
    cfg.SEED = args.seed
    cfg.freeze()
    return cfg


def learnt_norms(cfg) -> dict[str, str]:
    """The config keys that give the model norms that learn (module docstring): the ResNet's
    always, the FPN's and the mask head's convs' where the model has them."""
    norms = {"MODEL.RESNETS.NORM": "BN"}
    if "fpn" in cfg.MODEL.BACKBONE.NAME.lower():
        norms["MODEL.FPN.NORM"] = "BN"
    if cfg.MODEL.MASK_ON and cfg.MODEL.ROI_MASK_HEAD.NUM_CONV > 0:
        norms["MODEL.ROI_MASK_HEAD.NORM"] = "BN"
    return norms


class Schedule:
    """The LR factor of iteration i: linear warm-up from WARMUP_FACTOR, then a cosine to 0 at
    `total` (None until --minutes has fixed it: the factor is the warm-up's alone)."""

    def __init__(self, total: int | None):
        self.total = total

    @property
    def warmup(self) -> int:
        if self.total is None:
            return max(WARMUP_LEAST, PROBE_ITERS)
        return min(max(WARMUP_LEAST, round(WARMUP_FRACTION * self.total)), self.total)

    def factor(self, i: int) -> float:
        ramp = WARMUP_FACTOR + (1 - WARMUP_FACTOR) * min(1.0, i / max(self.warmup, 1))
        if self.total is None:
            return ramp
        return ramp * 0.5 * (1 + math.cos(math.pi * min(i, self.total) / self.total))


def clip_whole_model(optimizer, max_norm: float):
    """The optimizer, its step first clipping the L2 norm of all gradients together to
    `max_norm` (detectron2's config clips each parameter alone). Under AMP the grad scaler
    unscales the gradients before it calls step, so the clip sees true gradients."""
    step = optimizer.step
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clipped_step(*args, **kwargs):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return step(*args, **kwargs)

    optimizer.step = clipped_step
    return optimizer


def train(cfg, args) -> tuple[torch.nn.Module, dict]:
    """detectron2's trainer (AMPTrainer on CUDA, SimpleTrainer on the CPU) over the training
    loader for --iters iterations or as many as --minutes allows; returns the model (eval
    mode) and what the loop did."""
    from detectron2.data import DatasetMapper, build_detection_train_loader
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    torch.manual_seed(args.seed)  # the project's random init: the family's own initialisers
    model = build_model(cfg)
    loader = build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True))
    optimizer = clip_whole_model(build_optimizer(cfg, model), GRAD_CLIP)
    for group in optimizer.param_groups:
        group["base"] = group["lr"]
    amp = cfg.SOLVER.AMP.ENABLED
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, loader, optimizer)
    schedule = Schedule(args.iters)
    budget = args.minutes * 60 if args.iters is None else math.inf
    losses: list[float] = []
    started = last = time.monotonic()
    probe_start = None
    with EventStorage(0) as storage:
        i = 0
        while schedule.total is None or i < schedule.total:
            trainer.iter = storage.iter = i
            for group in optimizer.param_groups:
                group["lr"] = group["base"] * schedule.factor(i)
            trainer.run_step()
            losses.append(float(storage.history("total_loss").latest()))
            i += 1
            if i == PROBE_SKIP:
                probe_start = time.monotonic()
            if schedule.total is None and i == PROBE_ITERS:
                per_iter = (time.monotonic() - probe_start) / (PROBE_ITERS - PROBE_SKIP)
                left = budget - (time.monotonic() - started)
                schedule.total = max(PROBE_ITERS + 1, i + int(left / per_iter))
                log.info(
                    "%.3f s per iteration: %d iterations in %.1f minutes (warm-up %d)",
                    per_iter,
                    schedule.total,
                    args.minutes,
                    schedule.warmup,
                )
            if time.monotonic() - last > PROGRESS_S or i == schedule.total:
                last = time.monotonic()
                log.info(
                    "iteration %d/%s: loss %.3f (mean of the last 20), lr %.4g, %.0f s",
                    i,
                    schedule.total or "?",
                    sum(losses[-20:]) / len(losses[-20:]),
                    optimizer.param_groups[0]["lr"],
                    last - started,
                )
    seconds = time.monotonic() - started
    model.eval()
    return model, {
        "iters": i,
        "seconds": round(seconds, 1),
        "s_per_iter": round(seconds / max(i, 1), 4),
        "warmup": schedule.warmup,
        "amp": "fp16" if amp else "no",
        "loss_first20": round(sum(losses[:20]) / max(len(losses[:20]), 1), 4),
        "loss_last20": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 4),
    }


# ---- the trained model in the zoo's layout ---------------------------------------------------


def fold_into_zoo(trained: torch.nn.Module, zoo: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained model's weights under the zoo model's names and shapes (see the module
    docstring): ResNet BNs become FrozenBatchNorm statistics, BNs after convs that have none in
    the zoo are folded into the conv. Raises ValueError for any zoo tensor left unfilled."""
    from detectron2.layers import FrozenBatchNorm2d

    mine = {k: v.detach().float().cpu() for k, v in trained.state_dict().items()}
    zoo_modules = dict(zoo.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, module in trained.named_modules():
        norm = getattr(module, "norm", None)
        if not isinstance(norm, torch.nn.BatchNorm2d) or not hasattr(module, "weight"):
            continue
        there = zoo_modules.get(name)
        if there is None:
            raise ValueError(f"{name}: in the trained model, not in the zoo's")
        if isinstance(getattr(there, "norm", None), FrozenBatchNorm2d):
            continue  # same names: copied below
        if getattr(there, "norm", None) is not None or there.bias is None:
            raise ValueError(f"{name}: the zoo's conv has a norm or no bias; cannot fold into it")
        scale = mine[f"{name}.norm.weight"] / torch.sqrt(
            mine[f"{name}.norm.running_var"] + norm.eps
        )
        bias = mine.get(f"{name}.bias", torch.zeros_like(scale))
        state[f"{name}.weight"] = mine[f"{name}.weight"] * scale.reshape(-1, 1, 1, 1)
        state[f"{name}.bias"] = (bias - mine[f"{name}.norm.running_mean"]) * scale + mine[
            f"{name}.norm.bias"
        ]
    wanted = zoo.state_dict()
    for key, tensor in wanted.items():
        if key not in state and key in mine and mine[key].shape == tensor.shape:
            state[key] = mine[key]
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"{len(missing)} zoo tensors have no trained value, e.g. {missing[:3]}")
    return {key: state[key].to(wanted[key].dtype) for key in wanted}


@torch.no_grad()
def check_fold(trained: torch.nn.Module, zoo: torch.nn.Module, height: int, width: int) -> float:
    """The largest relative difference between the trained model and the zoo model with the
    folded weights: the backbone's outputs on a random image, and each folded conv's output on
    a random input. Both models in eval mode, on the CPU, in fp32."""
    from runner.precision import strict_fp32

    torch.manual_seed(0)
    worst = 0.0

    def differ(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))

    with strict_fp32():
        image = torch.rand(1, 3, height, width) * 255
        x = (image - trained.pixel_mean.cpu()) / trained.pixel_std.cpu()
        ours, theirs = trained.backbone(x), zoo.backbone(x)
        for key in ours:
            worst = max(worst, differ(theirs[key], ours[key]))
        zoo_modules = dict(zoo.named_modules())
        for name, module in trained.named_modules():
            if isinstance(getattr(module, "norm", None), torch.nn.BatchNorm2d) and isinstance(
                module, torch.nn.Conv2d
            ):
                probe = torch.randn(2, module.in_channels, 16, 16)
                worst = max(worst, differ(zoo_modules[name](probe), module(probe)))
    return worst


def zoo_model(model_cfg, state: dict | None = None) -> torch.nn.Module:
    """The benchmark's architecture of the model (eval, CPU), with `state` loaded strictly."""
    from detectron2.modeling import build_model

    from runner.families.detectron2 import config

    model = build_model(config(model_cfg, "cpu")).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def val_ap(model: torch.nn.Module, model_cfg, data: Path, device: str, batch: int) -> dict:
    """Box (and mask) AP of the model on <data>/val.json through the accuracy pass the
    benchmark runs (runner.accuracy), eager fp32 with TF32 off."""
    from runner.accuracy import dataset, evaluate
    from runner.config import DatasetConfig
    from runner.precision import strict_fp32
    from runner.run import export, inputs

    height, width = image_size(data, "val")
    target = torch.device(device)
    model = model.to(target).eval()
    example = tuple(torch.zeros(3, height, width, device=target) for _ in range(batch))
    exported = export.wrap(model, model_cfg, "trace", True, example)
    val = dataset.open_dataset(
        DatasetConfig(name="generated", root=str(data), annotations="val.json", images="val")
    )

    def predict(images):
        with torch.no_grad(), strict_fp32():
            return exported.decode(exported.module(*images), len(images))

    results = evaluate.predictions(
        val, predict, "detectron2", (height, width), batch, inputs.to_tensor, target, "val"
    )
    scores = evaluate.scores(val, results)
    return {
        "val_images": len(val.image_ids),
        **{f"val_{kind}_ap": round(s.ap, 4) for kind, s in scores.items()},
        **{f"val_{kind}_ap50": round(s.ap50, 4) for kind, s in scores.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python scripts/train.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--data", type=Path, required=True, help="made by runner.accuracy.shapes")
    parser.add_argument("--out", type=Path, required=True, help="folder for <model>.pth/.json")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=4.5, help="the training loop's budget")
    budget.add_argument("--iters", type=int, default=None, help="a fixed iteration count")
    parser.add_argument("--batch", type=int, default=16, help="images per iteration")
    parser.add_argument("--lr", type=float, default=0.02, help="base LR of SGD")
    parser.add_argument("--workers", type=int, default=8, help="data loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--eval-batch", type=int, default=8, help="images per call for the AP")
    parser.add_argument("--save-unfolded", type=Path, help="also the trained model's own state")
    args = parser.parse_args(argv)
    problems = [
        f"--{name}={value}; must be > 0"
        for name, value in (
            ("minutes", args.minutes),
            ("iters", args.iters),
            ("batch", args.batch),
            ("lr", args.lr),
            ("eval-batch", args.eval_batch),
        )
        if value is not None and value <= 0
    ]
    if args.workers < 0:
        problems.append(f"--workers={args.workers}; must be >= 0")
    for split in ("train", "val"):
        if not (args.data / f"{split}.json").is_file():
            problems.append(
                f"--data={args.data}: no {split}.json (python -m runner.accuracy.shapes)"
            )
    if problems:
        parser.error("; ".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    from runner.accuracy.dataset import sha256
    from runner.library_noise import quiet_library_warnings
    from runner.run.models import TRAINING_KEY

    quiet_library_warnings()
    # cuDNN's autotuner stays off (detectron2's default): the heads see a new number of ROIs at
    # almost every iteration, and the autotuner would time its algorithms again for each
    model_cfg = model_config(args.model)
    cfg = train_config(model_cfg, args.data, args)
    trained, loop = train(cfg, args)
    trained = trained.cpu()
    zoo = zoo_model(model_cfg)
    state = fold_into_zoo(trained, zoo)
    zoo.load_state_dict(state, strict=True)
    height, width = image_size(args.data, "train")
    difference = check_fold(trained, zoo, height, width)
    log.info("folded into the zoo's layout: largest relative difference %.2e", difference)
    ap = val_ap(zoo, model_cfg, args.data, args.device, args.eval_batch)
    log.info("val: %s", ap)
    settings = {
        "model": args.model,
        "arch": model_cfg.arch,
        "batch": args.batch,
        "lr": args.lr,
        "schedule": "warmup+cosine",
        "norm": "BN in " + "+".join(k.split(".")[1].lower() for k in learnt_norms(cfg)),
        "seed": args.seed,
        "data": f"{args.data.name}:train.json@sha256:{sha256(args.data / 'train.json')[:12]}",
        **loop,
        "fold_max_rel_diff": float(f"{difference:.3g}"),
        **ap,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{args.model}.pth"
    torch.save({"model": state, TRAINING_KEY: settings}, checkpoint)
    if args.save_unfolded:
        torch.save({"model": trained.state_dict()}, args.save_unfolded)
    summary = {**settings, "checkpoint": str(checkpoint), "sha256": sha256(checkpoint)}
    (args.out / f"{args.model}.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("wrote %s (sha256 %s): %s", checkpoint, summary["sha256"][:12], settings)
    return summary


if __name__ == "__main__":
    main()
