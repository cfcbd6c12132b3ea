"""Zoo coverage: every config of the installed detectron2's model zoo, YAML and LazyConfig, built
at a small input on the CPU and run once by `eager` and by `static_graph` against the reference
(eager fp32, TF32 off), through the runner's own session (runner.run.bench.run_group: build,
calibrate, reference, optimize, parity, one timed call). Writes the rows, one per config and
backend: ok (with parity) | parity_fail | unsupported (with the part) | error; then the coverage
table of docs/zoo.md (runner.report.zoo).

    python scripts/zoo_coverage.py --out results/cpu_zoo.csv --doc docs/zoo.md
        [--height 128 --width 160] [--proposals 100] [--only REGEX] [--limit N]
        [--shard K/N] [--folder outputs/zoo] [--isolate]

Which configs: every .yaml and .py under detectron2/model_zoo/configs/ except the templates
(Base-*.yaml) and common/ (the LazyConfig parts the zoo's .py files import, not models).
Size knobs, because a CPU is slow: the input is --height x --width (the photo, covered and
cropped), post-processed to that size; R-CNNs keep --proposals RPN proposals per image after NMS
(MODEL.RPN.POST_NMS_TOPK_TEST, or a LazyConfig's model.proposal_generator.post_nms_topk) instead
of the zoo's 1000, which leaves every exported graph the same. Each config's rows land in
--folder/<config>/<backend>/result.csv; a folder that already holds them is kept (the runner's
resume), so an interrupted walk goes on where it stopped, and shards (--shard 1/2 and 2/2 in
two processes, each with its own --out) can be gathered by one more walk without --shard, which
keeps every row the shards measured and writes them together.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("zoo_coverage")

BACKENDS = ("eager", "static_graph")
# logits of every head the zoo's models have (calibrated where present: runner.run.models)
LOGIT_LAYERS = (
    "objectness_logits",
    "cls_score",
    "mask_head.predictor",
    "sem_seg_head.predictor",
)


def zoo_folder() -> Path:
    """detectron2/model_zoo/configs/ of the installed detectron2, found without importing it."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        raise SystemExit("detectron2 is not installed: there is no model zoo to walk")
    for location in spec.submodule_search_locations or ():
        folder = Path(location) / "model_zoo" / "configs"
        if folder.is_dir():
            return folder
    raise SystemExit("the installed detectron2 has no model_zoo/configs/ folder")


def zoo_configs(folder: Path) -> list[str]:
    """Every model config of the zoo, relative to its folder, sorted."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.suffix not in (".yaml", ".py") or not path.is_file():
            continue
        if relative.parts[0] == "common" or path.name.startswith("Base-"):
            continue
        if path.name == "__init__.py":
            continue
        found.append(relative.as_posix())
    return sorted(found)


def fewer_proposals(arch: str, proposals: int) -> list[str]:
    """The override that keeps `proposals` RPN proposals per image at test time, or none where
    the model has no RPN (dense detectors, FCOS)."""
    if proposals <= 0:
        return []
    if not arch.endswith(".py"):
        return [f"+model.arch_options.MODEL.RPN.POST_NMS_TOPK_TEST={proposals}"]
    from detectron2 import model_zoo

    lazy = model_zoo.get_config(arch)
    rpn = lazy.model.get("proposal_generator") if "model" in lazy else None
    if rpn is None or "post_nms_topk" not in rpn:
        return []
    train = list(rpn.post_nms_topk)[0]
    return [f"+model.arch_options.model.proposal_generator.post_nms_topk=[{train},{proposals}]"]


def overrides(arch: str, args) -> list[str]:
    """The run's overrides for one config (and any backend)."""
    layers = ",".join(LOGIT_LAYERS)
    return [
        "model=mask_rcnn_fpn",  # a detectron2 model file; every key that differs is set here
        f"model.name={arch}",
        f"model.arch={arch}",
        f"model.logit_layers=[{layers}]",
        "model.postprocess=true",  # output size = input size: what a user of the model gets
        "device=cpu",
        f"inputs.height={args.height}",
        f"inputs.width={args.width}",
        "bench.warmup=0",
        "bench.iters=1",
        "bench.rewarm=0",
        "bench.repeats=1",
        f"bench.isolate={'true' if args.isolate else 'false'}",
        *fewer_proposals(arch, args.proposals),
    ]


def compose(arch: str, backend: str, args, command: str):
    """The validated (Config, Job) of one config and backend, composed as `python -m runner`
    composes it, in --folder/<config>/<backend>."""
    import hydra
    from omegaconf import open_dict

    from runner.config import CONF_DIR, register_schema, split

    register_schema()
    out = Path(args.folder) / arch / backend
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = hydra.compose("config", overrides=[*overrides(arch, args), f"backend={backend}"])
    with open_dict(composed):
        composed.output_dir = str(out)
        composed.command = command
    return split(composed)


def walk_one(arch: str, args, command: str) -> list:
    """One config's rows, one per backend, measured as one session; a config the runner
    refuses, or a session that raises, gives error rows saying so (the walk goes on)."""
    from runner import preflight
    from runner.run import record
    from runner.run.bench import run_group

    runs = []
    for backend in BACKENDS:
        try:
            cfg, job = compose(arch, backend, args, command)
            preflight.check(cfg)
            runs.append((cfg, job))
        except (ValueError, SystemExit) as error:  # ConfigError is a ValueError
            runs.append(record.Row(model=arch, backend=backend, status="error", error=str(error)))
    measured = [run for run in runs if isinstance(run, tuple)]
    try:
        rows = iter(run_group(measured)) if measured else iter(())
    except Exception as error:  # noqa: BLE001 - the row says why; the walk goes on
        log.exception("%s: the session failed", arch)
        failed = f"session: {type(error).__name__}: {error}"
        rows = iter(record.Row(model=arch, status="error", error=failed) for _ in measured)
    found = []
    for backend, run in zip(BACKENDS, runs, strict=True):
        row = run if isinstance(run, record.Row) else next(rows)
        if row is None:
            row = record.Row(model=arch, status="error", error="refused by the session")
        found.append(record.replace(row, model=arch, backend=backend))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the coverage CSV to write")
    parser.add_argument("--doc", type=Path, help="the page whose coverage table to rewrite")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument(
        "--proposals", type=int, default=100, help="RPN proposals per image (0: the zoo's)"
    )
    parser.add_argument("--shard", default="1/1", help="K/N: every Nth config from the Kth")
    parser.add_argument("--only", default="", help="only configs matching this regex")
    parser.add_argument("--limit", type=int, default=0, help="at most this many configs (0: all)")
    parser.add_argument("--folder", default="outputs/zoo", help="the runs' folders")
    parser.add_argument(
        "--isolate", action="store_true", help="each run in a spawned child (slower; crash-proof)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")

    from runner.report import zoo
    from runner.run import record

    command = "python scripts/zoo_coverage.py " + shlex.join(argv if argv else sys.argv[1:])
    configs = [a for a in zoo_configs(zoo_folder()) if re.search(args.only, a)]
    if args.limit:
        configs = configs[: args.limit]
    shard, shards = (int(part) for part in args.shard.split("/"))
    configs = configs[shard - 1 :: shards]
    log.info("%d configs, backends %s", len(configs), ", ".join(BACKENDS))
    rows = []
    started = time.monotonic()
    for index, arch in enumerate(configs, 1):
        begun = time.monotonic()
        found = walk_one(arch, args, command)
        rows += found
        record.write_rows(args.out, rows)  # after every config: a stopped walk keeps its rows
        log.info(
            "[%d/%d] %s: %s in %.0f s (%.0f s in all)",
            index,
            len(configs),
            arch,
            ", ".join(f"{r.backend} {r.status}" for r in found),
            time.monotonic() - begun,
            time.monotonic() - started,
        )
    counts = zoo.counts(rows)
    log.info("wrote %s: %s", args.out, ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.doc:
        zoo.write_doc(args.doc, rows, command, args.out)
        log.info("rewrote the coverage table of %s", args.doc)
    return 1 if counts.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
